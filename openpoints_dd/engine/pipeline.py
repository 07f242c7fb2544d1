"""distill → artifact → evaluation against Random at the same clouds per class: what tools/distill.py runs."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from ..data.synthetic_set import SyntheticSet
from ..labels import teacher_line
from ..settings import resolve_distill_config
from ..utils.device import resolve_device
from ..utils.io import write_json
from ..utils.run import resume_mode
from ..utils import distributed
from .distill import Distiller
from .evaluate import evaluation_settings, format_mean_std, generator_modes, random_selections
from .protocol import evaluate_set, random_baseline, test_pool
from .tasks import TASKS, Task

logger = logging.getLogger(__name__)


def run_distillation(cfg: Mapping[str, Any], run_dir: Path) -> dict:
    """Distill, export the artifact, evaluate it (and Random at the same cpc) and write metrics.json, for the
    config's task (`task:` classification or segmentation): one path for both, so a part-segmentation run gets
    the same timed evaluations, rows and teacher line as a classification run."""
    task = TASKS[cfg.get('task') or 'classification']
    cfg = resolve_distill_config(cfg, task=task.name)
    settings = evaluation_settings(cfg['evaluation'], task.name)
    device, seed = resolve_device(cfg['device']), cfg['seed']
    eval_points = int(settings['num_points'])
    # the distiller draws its real batches from this pool: it holds enough points for both
    train = task.pool(cfg['dataset'], 'train', max(eval_points, int(cfg['distill']['num_points'])), seed)
    evaluates = cfg['evaluation'] is not None and distributed.is_main()   # rank 0 evaluates under torchrun
    test = test_pool(cfg['dataset'], eval_points, task, seed) if evaluates else None
    quick_epochs = settings['eval_epochs_during_distill']

    def evaluate_during(distiller: Distiller, iteration: int) -> dict:
        """Quick one-seed evaluation; the snapshot is kept so it can be evaluated fully later."""
        path = distiller.snapshot(run_dir / 'snapshots' / f'step{iteration:05d}.safetensors')
        sampler = task.set_sampler(SyntheticSet(path), eval_points, True, settings)
        result = evaluate_set(sampler, test, settings, [0], distiller.rotator, device, epochs=quick_epochs,
                              task=task)[0]
        return {task.headline: round(result[task.headline], 2), 'snapshot': str(path)}

    distiller = task.distiller(cfg, train, run_dir, evaluate_fn=evaluate_during if test is not None else None)
    result = distiller.run(resume=resume_mode(cfg['resume']) != 'never')
    if not distributed.is_main():
        return {}
    metrics: dict = {'task': task.name, 'headline': task.headline, 'artifact': str(result.artifact_path),
                     'iterations_done': result.iterations_done, 'distill_minutes': round(result.seconds / 60, 2), 'stopped_by_budget': result.stopped_by_budget,
                     'loss_history': result.loss_history, 'evaluations_during_distillation': result.evaluations,
                     'init': {k: v for k, v in distiller.init_report.items() if k != 'real_indices'}}
    if test is not None:
        start = result.start_path if settings['start_row'] else None
        metrics.update(evaluate_distilled(task, result.artifact_path, train, test, settings, device, start))
    write_json(run_dir / 'metrics.json', metrics)
    return metrics


def evaluate_distilled(task: Task, artifact: Path, train, test, settings: Mapping[str, Any], device,
                       start: Path | None = None) -> dict:
    """The distillation's own table: the set (both generator modes), its start if given (the set before matching,
    each mode, with the per-seed differences), and Random at its cpc, every seed of the settings; logged and
    returned as metrics.json's `evaluation`, `labels`, `table` and, with a start, `versus_start`."""
    seeds = list(settings['seeds'])
    synthetic = SyntheticSet(artifact)
    rotator = synthetic.build_rotator().to(device)   # the trained canonicaliser, for the set and for Random
    sets = [('synthetic', synthetic, rotator)]
    if start is not None:   # with its own rotator: a learned canonicaliser is trained by the run too
        start_set = SyntheticSet(start)
        sets.append(('start', start_set, start_set.build_rotator().to(device)))
    runs, pairs = {}, {}
    for label, dataset, dataset_rotator in sets:
        for resample in (generator_modes(settings['generator_modes']) if dataset.is_generator else [False]):
            mode = 'resampled each epoch' if resample else 'fixed set'
            sampler = task.set_sampler(dataset, int(settings['num_points']), resample, settings)
            runs[f'{label} ({mode})'] = evaluate_set(sampler, test, settings, seeds, dataset_rotator, device, task=task)
            if label == 'start':
                pairs[f'synthetic ({mode})'] = f'start ({mode})'
    selections = random_selections(settings, seeds)
    if selections:
        runs[f'random ({len(selections)} selections)'] = random_baseline(train, test, synthetic.cpc, settings,
                                                                         selections, rotator, device, task=task)
    rows = {name: {**task.summaries(r), 'runs': r} for name, r in runs.items()}
    report = next(iter(runs.values()))[0]['labels_report']
    headers = [f'final-epoch {header} %' for _, header in task.figures]
    widths = [max(len(header), 16) for header in headers]
    lines = [f'{"set":38s} ' + ' '.join(f'{h:>{w}s}' for h, w in zip(headers, widths))
             + f'  (cpc {synthetic.cpc}, {settings["epochs"]} epochs, seeds {seeds}, {report["labels"]})']
    lines += [f'{name:38s} ' + ' '.join(f'{format_mean_std(row[f"final_{key}"]):>{w}s}'
                                        for (key, _), w in zip(task.figures, widths)) for name, row in rows.items()]
    if 'teacher' in report:
        lines.append(teacher_line(report))
    versus_start = {}
    for after, before in pairs.items():
        differences = [round(a[task.headline] - b[task.headline], 2) for a, b in zip(runs[after], runs[before])]
        versus_start[after] = {'start': before, 'differences': differences,
                               'mean': round(sum(differences) / len(differences), 2)}
        lines.append(f'{after} − its start, paired by seed: ' + ', '.join(f'{d:+.2f}' for d in differences)
                     + f' (mean {versus_start[after]["mean"]:+.2f})')
    logger.info('results\n%s', '\n'.join(lines))
    return {'evaluation': rows, 'labels': report, 'table': lines, **({'versus_start': versus_start} if pairs else {})}
