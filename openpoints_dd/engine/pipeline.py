"""distill → artifact → evaluation against Random at the same clouds per class: what tools/distill.py runs."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from ..data.real_pool import RealPool
from ..data.synthetic_set import SyntheticSet
from ..settings import resolve_distill_config
from ..utils.device import resolve_device
from ..utils.io import write_json
from ..utils.run import resume_mode
from ..utils import distributed
from .distill import Distiller
from .evaluate import (evaluation_settings, format_mean_std, generator_modes, prepared_labeler, random_selections,
                       summarize, train_and_test)
from .tasks import TASKS, Task

logger = logging.getLogger(__name__)

CLASSIFICATION = TASKS['classification']


def test_pool(dataset_cfg: Mapping[str, Any], num_points: int, task: Task = CLASSIFICATION, seed: int = 0):
    """The split a set is tested on: `test` where the dataset section has one, else `val`."""
    split = 'test' if dataset_cfg.get('test') is not None else 'val'
    return task.pool(dataset_cfg, split, num_points, seed)


def evaluate_set(sampler, test, settings: Mapping[str, Any], seeds, rotator, device, epochs=None,
                 task: Task = CLASSIFICATION) -> list[dict]:
    """One protocol run per seed, with the settings' labels (a teacher is loaded once for all seeds); each run is
    logged as it ends (a long evaluation shows its progress)."""
    labeler = prepared_labeler(settings, task.identity(test), device)
    runs = []
    for seed in seeds:
        runs.append(train_and_test(task, sampler, test, settings=settings, seed=int(seed), rotator=rotator,
                                   device=device, epochs=epochs, labeler=labeler))
        runs[-1]['labels'], runs[-1]['labels_report'] = labeler.describe(), labeler.report()
        runs[-1]['seed'] = int(seed)   # a table split over processes (--first-seed) says which run is which
        logger.info('seed %d: %s in %.0f s', int(seed), task.describe_run(runs[-1]), runs[-1]['seconds'])
    return runs


def random_baseline(train, test, cpc: int, settings, selections, rotator, device,
                    task: Task = CLASSIFICATION) -> list[dict]:
    """Random real subsets: one selection per seed, each evaluated once (cpu_protocol)."""
    results = []
    for selection in selections:
        sampler = task.random_sampler(train, cpc, selection, int(settings['num_points']))
        results += evaluate_set(sampler, test, settings, [selection], rotator, device, task=task)
    return results


def run_distillation(cfg: Mapping[str, Any], run_dir: Path) -> dict:
    """Distill, export the artifact, evaluate it (and Random at the same cpc), write metrics.json."""
    cfg = resolve_distill_config(cfg, task='classification')
    settings = evaluation_settings(cfg['evaluation'])
    device = resolve_device(cfg['device'])
    train = RealPool.from_dataset_cfg(cfg['dataset'], split='train', num_points=int(settings['num_points']))
    evaluates = cfg['evaluation'] is not None and distributed.is_main()   # rank 0 evaluates under torchrun
    test = test_pool(cfg['dataset'], int(settings['num_points'])) if evaluates else None
    quick_epochs = settings['eval_epochs_during_distill']

    def evaluate_during(distiller: Distiller, iteration: int) -> dict:
        """Quick one-seed evaluation; the snapshot is kept so it can be evaluated fully later."""
        path = distiller.export(run_dir / 'snapshots' / f'step{iteration:05d}.safetensors')
        sampler = CLASSIFICATION.set_sampler(SyntheticSet(path), settings['num_points'], True, settings)
        result = evaluate_set(sampler, test, settings, [0], distiller.rotator, device, epochs=quick_epochs)[0]
        return {'oa': round(result['oa'], 2), 'snapshot': str(path)}

    distiller = Distiller(cfg, train, run_dir, evaluate_fn=evaluate_during if test is not None else None)
    result = distiller.run(resume=resume_mode(cfg['resume']) != 'never')
    if not distributed.is_main():
        return {}
    metrics: dict = {'artifact': str(result.artifact_path), 'iterations_done': result.iterations_done,
                     'distill_minutes': round(result.seconds / 60, 2), 'stopped_by_budget': result.stopped_by_budget,
                     'loss_history': result.loss_history, 'evaluations_during_distillation': result.evaluations,
                     'init': {k: v for k, v in getattr(distiller, 'init_report', {}).items() if k != 'real_indices'}}
    if test is not None:
        seeds = list(settings['seeds'])
        synthetic = SyntheticSet(result.artifact_path)
        cpc = synthetic.cpc
        rotator = synthetic.build_rotator().to(device)   # the trained canonicaliser, for the set and for Random
        rows = {}
        modes = generator_modes(settings['generator_modes']) if synthetic.is_generator else [False]
        for resample in modes:
            name = 'synthetic (resampled each epoch)' if resample else 'synthetic (fixed set)'
            sampler = CLASSIFICATION.set_sampler(synthetic, settings['num_points'], resample, settings)
            runs = evaluate_set(sampler, test, settings, seeds, rotator, device)
            rows[name] = {'final': summarize(runs), 'best_epoch_papers_protocol': summarize(runs, 'best_oa'), 'runs': runs}
        selections = random_selections(settings, seeds)
        if selections:
            runs = random_baseline(train, test, cpc, settings, selections, rotator, device)
            rows[f'random ({len(selections)} selections)'] = {'final': summarize(runs),
                                                              'best_epoch_papers_protocol': summarize(runs, 'best_oa'), 'runs': runs}
        metrics['evaluation'] = rows
        lines = [f'{"set":38s} {"final-epoch OA %":>18s}  (cpc {cpc}, {settings["epochs"]} epochs, seeds {seeds})']
        lines += [f'{name:38s} {format_mean_std(row["final"]):>18s}' for name, row in rows.items()]
        logger.info('results\n%s', '\n'.join(lines))
        metrics['table'] = lines
    write_json(run_dir / 'metrics.json', metrics)
    return metrics
