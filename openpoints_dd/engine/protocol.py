"""The evaluation protocol behind tools/evaluate.py: sets × models × seeds, reported honestly.

A *set* is a distilled artifact (or a coreset saved as one) or a random real selection at the same clouds per
class. A *model* is either the fast CPU protocol (`engine.evaluate.train_and_test`, DD3D's PointNet with the
settings of the config's `evaluation` section) or any classification YAML (cfgs/train/*.yaml), trained by
`train_cls.train_classifier` on `DistilledDataset` and tested on the real test set. Every (set, model) row
reports the task's final-epoch test figures (OA and mAcc; the part mIoUs), mean ± std over seeds, and,
separately, the best tested epoch: the papers' (optimistic) protocol. Generator artifacts get two rows: fresh
clouds every epoch, and one fixed draw. `evaluate_set` and `random_baseline` are also what a distillation's own
evaluation runs (`pipeline.run_distillation`).
"""
from __future__ import annotations

import concurrent.futures
import copy
import csv
import json
import logging
import math
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..data.artifact import save_artifact
from ..data.real_pool import RANDOM_SEED_OFFSET, RealPool, random_selection_generator
from ..data.synthetic_set import SyntheticSet
from ..labels import teacher_line
from ..registry import build_rotator
from ..utils.config import resolve_path, to_plain
from ..utils.memory import keep_freed_memory
from ..utils.run import exclusive_dir
from .evaluate import (GENERATOR_MODES, evaluation_settings, format_mean_std, generator_modes, prepared_labeler,
                       train_and_test)
from .tasks import TASKS, Task
from .train_cls import load_train_config, train_classifier, with_defaults

logger = logging.getLogger(__name__)

CLASSIFICATION = TASKS['classification']

FAST_MODEL = 'PointNet (CPU protocol)'
BEST_LABEL = "papers' protocol (best test epoch)"
RESAMPLED, FIXED = 'resampled each epoch', 'fixed set'
FULL_TRAIN_LABEL = 'full train set'


@dataclass
class EvalSet:
    """One row's training set: an artifact path, or a random real selection (`selection` >= 0)."""
    label: str
    path: Path | None
    cpc: int
    resample: bool | None = None     # generator artifacts only
    selection: int | None = None     # random sets only

    @property
    def mode(self) -> str:
        if self.selection is not None:
            return 'random selection'
        return '-' if self.resample is None else (RESAMPLED if self.resample else FIXED)


def parse_set_args(items: Sequence[str]) -> dict[str, Path]:
    """`label=path` pairs from the command line, checked: unique labels, files that exist."""
    sets: dict[str, Path] = {}
    for item in items:
        label, sep, path = item.partition('=')
        if not sep or not label or not path:
            raise ValueError(f'--set expects label=path/to/artifact.safetensors, got {item!r}')
        if label in sets:
            raise ValueError(f'--set label {label!r} is given twice; labels name the table rows and must be unique')
        resolved = Path(resolve_path(path))
        if not resolved.is_file():
            raise FileNotFoundError(f'--set {label}: no artifact at {path} (resolved to {resolved}). Give the '
                                    f'artifact.safetensors written by tools/distill.py.')
        sets[label] = resolved
    return sets


def expand_sets(sets: Mapping[str, Path], modes: Sequence[str] = GENERATOR_MODES
                ) -> tuple[list[EvalSet], dict[str, SyntheticSet]]:
    """One EvalSet per artifact (per mode for a generator: resampled, fixed); the artifacts are read and validated here."""
    flags = generator_modes(modes)
    loaded = {label: SyntheticSet(path) for label, path in sets.items()}
    out = []
    for label, synthetic in loaded.items():
        modes = flags if synthetic.is_generator else [None]
        out += [EvalSet(label, Path(synthetic.path), synthetic.cpc, resample=mode) for mode in modes]
    return out, loaded


def random_selection(pool: RealPool, cpc: int, selection: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Selection `selection` of `cpc` random real clouds per class: (clouds, labels, pool indices)."""
    clouds, index = pool.random_per_class(cpc, random_selection_generator(selection))
    return clouds, torch.arange(pool.num_classes).repeat_interleave(cpc), index


def save_random_artifact(pool: RealPool, cpc: int, selection: int, path: Path) -> Path:
    """A random real selection as a points artifact, so any trainer reads it through DistilledDataset."""
    clouds, labels, index = random_selection(pool, cpc, selection)
    metadata = {'kind': 'points', 'cpc': int(cpc), 'num_points': int(clouds.shape[1]),
                'synthesizer': {'NAME': 'RandomRealSelection', 'selection': int(selection),
                                'seed': RANDOM_SEED_OFFSET + int(selection), 'indices': index.tolist()},
                'objective': {'NAME': 'none'}, 'rotator': {'NAME': 'IdentityRotator'},
                'dataset': {'name': pool.name, 'num_classes': pool.num_classes, 'class_names': pool.class_names}}
    return save_artifact(path, {'pos': clouds.contiguous(), 'y': labels.contiguous()}, metadata)


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
        runs[-1].update(labeler.run_record())
        runs[-1]['seed'] = int(seed)   # a table split over processes (--first-seed) says which run is which
        logger.info('seed %d: %s in %.0f s', int(seed), task.describe_run(runs[-1]), runs[-1]['seconds'])
    return runs


def random_baseline(train, test, cpc: int, settings, selections, rotator, device,
                    task: Task = CLASSIFICATION) -> list[dict]:
    """Random real subsets: each selection trained once, with its own number as the seed (cpu_protocol); every
    run records its `selection`."""
    results = []
    for selection in selections:
        sampler = task.random_sampler(train, cpc, selection, int(settings['num_points']))
        results += evaluate_set(sampler, test, settings, [selection], rotator, device, task=task)
        results[-1]['selection'] = int(selection)
    return results


def run_protocol(*, out_dir: str | Path, sets: Mapping[str, Path] | None = None, random_k: int = 0,
                 cpc: int | None = None, models: Sequence[str] = (), data_cfg: Mapping[str, Any] | None = None,
                 seeds: int = 3, overrides: Sequence[str] = (), device: str = 'cpu', full_train: bool = False,
                 full_epochs: int | None = None, generator_modes: Sequence[str] = GENERATOR_MODES,
                 workers: int = 1, first_seed: int = 0) -> dict:
    """Train every (set, model) pair for `seeds` seeds and write results.{json,csv,md} into `out_dir`.

    Args:
        out_dir: output folder (created).
        sets: label → artifact path.
        random_k: number of random real selections per clouds-per-class value of the sets (or `cpc`): selections
            first_seed..first_seed+random_k-1, so a table split with `first_seed` draws each selection once.
        cpc: clouds per class of the random selections when no set gives it. Default None.
        models: classification YAMLs (cfgs/train/*.yaml); empty: the fast CPU protocol PointNet.
        data_cfg: a distill or train config whose `dataset` section gives the real data (train split for random
            selections, test split for testing) and, for the fast protocol, whose `evaluation` section gives its
            settings. Required without models; with models it replaces their real dataset.
        seeds: seeds first_seed..first_seed+seeds-1 per artifact set; random selection i is trained once, with
            seed i.
        overrides: `key=value` for the model YAMLs (with models) or for `data_cfg` (without).
        device: 'cpu' | 'cuda' | 'auto' for the fast protocol and the trainer.
        full_train: also train every model on the whole real train set (`seeds` seeds): the upper bound row.
        full_epochs: epochs of that row (default: the model YAML's); the budget column states it.
        generator_modes: which rows a generator artifact gets: fresh clouds every epoch, one fixed draw, or both.
        workers: trainings of the YAML models run this many at a time, each in its own process with an even
            share of the threads. Default 1 (in this process).
        first_seed: the first seed, so one table's seeds can be split over processes or machines. Default 0.

    Returns:
        {'rows': [...], 'table': markdown text, 'settings': {...}}; rows hold per-seed runs and summaries.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if int(seeds) < 1:
        raise ValueError(f'--seeds must be >= 1, got {seeds}')
    if int(first_seed) < 0:
        raise ValueError(f'--first-seed must be >= 0, got {first_seed}')
    seed_list = list(range(int(first_seed), int(first_seed) + int(seeds)))
    eval_sets, loaded = expand_sets(sets or {}, generator_modes)
    cpcs = sorted({s.cpc for s in eval_sets}) or ([int(cpc)] if cpc else [])
    if random_k and not cpcs:
        raise ValueError('--random needs the clouds per class: give a --set or --cpc')
    if not eval_sets and not random_k and not full_train:
        raise ValueError('nothing to evaluate: give at least one --set label=artifact.safetensors, --random K or '
                         '--full-train')
    if int(workers) < 1:
        raise ValueError(f'--workers must be >= 1, got {workers}')
    if int(workers) > 1 and not models:
        raise ValueError('--workers runs the --model trainings in parallel; the fast CPU protocol runs in one process')
    if full_train and not models:
        raise ValueError('--full-train trains the --model YAMLs on the real train set; give at least one --model')
    for c in cpcs:
        eval_sets += [EvalSet(f'random cpc{c}', None, c, selection=i)
                      for i in range(int(first_seed), int(first_seed) + int(random_k))]
    if not models and data_cfg is None:
        raise ValueError('the fast CPU protocol needs --cfg (a distill config with dataset and evaluation sections)')
    if models and data_cfg is not None and data_cfg.get('task') == 'segmentation':
        raise ValueError('--model trains classification YAMLs; a part-segmentation set is evaluated by the CPU '
                         'protocol of its --cfg (no --model), or trained with tools/train.py and a '
                         'cfgs/train/partseg/*.yaml')
    with exclusive_dir(out_dir, '--out folder'):   # a second table on the folder would train into the same runs
        t0 = time.perf_counter()
        if models:
            rows = _run_models(models, eval_sets, loaded, data_cfg, seed_list, list(overrides), device, out_dir,
                               full_epochs=full_epochs if full_train else 0, workers=int(workers))
        else:
            rows = _run_fast(eval_sets, data_cfg, seed_list, device)
        settings = {'seeds': seed_list, 'random_selections': int(random_k), 'models': list(models) or [FAST_MODEL],
                    'overrides': list(overrides), 'full_train': bool(full_train), 'full_epochs': full_epochs,
                    'workers': int(workers), 'threads': torch.get_num_threads(),
                    'seconds': round(time.perf_counter() - t0, 1)}
        return _write_results(out_dir, settings, rows)


def merge_results(parts: Sequence[str | Path], out_dir: str | Path) -> dict:
    """One table from several tools/evaluate.py outputs: a table split over processes or machines (by model,
    set or `--first-seed`). Rows of the same model, set, mode, clouds per class and budget pool their runs; a run
    found twice (the same seed and selection) is refused, since it would count one training as two.

    Raises:
        FileNotFoundError: a part without results.json.
        ValueError: a run in two parts, or parts of different tasks.
    """
    pooled: dict[tuple, dict] = {}
    seconds = 0.0
    for part in map(Path, parts):
        if not (part / 'results.json').is_file():
            raise FileNotFoundError(f'{part} holds no results.json (a tools/evaluate.py --out folder)')
        result = json.loads((part / 'results.json').read_text())
        seconds += float(result['settings'].get('seconds', 0.0))
        for row in result['rows']:
            key = (row['model'], row['set'], row['mode'], row['cpc'], row['budget'])
            entry = pooled.setdefault(key, {'task': row.get('task', 'classification'), 'runs': []})
            known = {(run['seed'], run.get('selection')) for run in entry['runs']}
            for run in row['runs']:
                if (run['seed'], run.get('selection')) in known:
                    raise ValueError(f"{part}: {key[0]} on {key[1]} ({key[2]}), seed {run['seed']}, is already in "
                                     'another part; each training may be merged once')
                entry['runs'].append(run)
    if len({entry['task'] for entry in pooled.values()}) > 1:
        raise ValueError('the parts hold tables of different tasks; merge each task on its own')
    rows = [_row(key[1], key[2], key[3], key[0], key[4], entry['runs'], TASKS[entry['task']])
            for key, entry in pooled.items()]
    settings = {'merged_from': [str(part) for part in parts], 'seconds': round(seconds, 1)}
    with exclusive_dir(Path(out_dir), '--out folder'):
        return _write_results(Path(out_dir), settings, rows)


def _write_results(out_dir: Path, settings: Mapping[str, Any], rows: list[dict]) -> dict:
    table = markdown_table(rows)
    curves = loss_curve_table(rows)
    result = {'settings': dict(settings), 'rows': rows, 'table': table}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / 'results.json').write_text(json.dumps(result, indent=1, default=str))
    write_csv(rows, out_dir / 'results.csv')
    (out_dir / 'results.md').write_text(table + '\n' + (f'\n{curves}\n' if curves else ''))
    return result


# ---------------------------------------------------------------------------------------------- fast path
def _run_fast(eval_sets: list[EvalSet], cfg: Mapping[str, Any], seeds: list[int], device: str) -> list[dict]:
    """The protocol of the config's task (`task:` classification or segmentation) and evaluation section."""
    task = TASKS[cfg.get('task') or 'classification']
    settings = evaluation_settings(cfg.get('evaluation'), task.name)
    model = FAST_MODEL if task.name == 'classification' else f"{settings['model']['NAME']} (CPU protocol)"
    num_points = int(settings['num_points'])
    dataset = _real_section(cfg['dataset'])   # a train YAML on DistilledDataset names its real dataset
    test = test_pool(dataset, num_points, task, int(cfg.get('seed') or 0))
    rotator = build_rotator((cfg.get('distill') or {}).get('rotator')).to(device)   # Random's; a set brings its own
    train = None
    grouped: dict[tuple, list[dict]] = {}
    budget = (f"{settings['epochs']} epochs, {num_points} points, batch {settings['batch_size']}"
              f"{_precision(settings.get('amp'))}, tested every {settings['test_every'] or settings['epochs']} epochs")
    for item in eval_sets:
        logger.info('protocol | %s | %s (%s)', model, item.label, item.mode)
        if item.selection is None:   # a set of another dataset, class count or task than the test set is refused
            synthetic = SyntheticSet(item.path, expect_dataset=test.name, expect_num_classes=test.num_classes)
            _check_task(synthetic, task, test)
            sampler = task.set_sampler(synthetic, num_points, bool(item.resample), settings)
            runs = evaluate_set(sampler, test, settings, seeds, synthetic.build_rotator().to(device), device, task=task)
        else:
            train = train or task.pool(dataset, 'train', num_points, int(cfg.get('seed') or 0))
            runs = random_baseline(train, test, item.cpc, settings, [item.selection], rotator, device, task=task)
        grouped.setdefault((item.label, item.mode, item.cpc), []).extend(runs)
    return [_row(label, mode, cpc, model, budget, runs, task) for (label, mode, cpc), runs in grouped.items()]


def _check_task(synthetic: SyntheticSet, task: Task, test) -> None:
    """A part-segmentation set is evaluated only by a segmentation config of its parts, and the reverse."""
    if synthetic.is_segmentation != (task.name == 'segmentation'):
        made_for = 'segmentation' if synthetic.is_segmentation else 'classification'
        raise ValueError(f'{synthetic.path} is a {made_for} set but --cfg evaluates {task.name}: give --cfg a '
                         f'config with task: {made_for} (e.g. the one the set was distilled with)')
    if synthetic.is_segmentation and synthetic.cls2parts != [list(ids) for ids in test.cls2parts]:
        raise ValueError(f'{synthetic.path} has other parts per category than the test data of --cfg: it was '
                         f'distilled from another part dataset')


# ---------------------------------------------------------------------------------------------- YAML models
@dataclass
class _Job:
    """One training of the table: a (model, set row) pair at one seed, with its full config (run_dir included)."""
    model: str
    row: tuple           # (set label, mode, cpc) or the full-train-set key
    budget: str
    seed: int
    selection: int | None
    cfg: dict


FULL_TRAIN_ROW = (FULL_TRAIN_LABEL, 'real train set', 'all')


def _run_models(models: Sequence[str], eval_sets: list[EvalSet], loaded: Mapping[str, SyntheticSet],
                data_cfg: Mapping[str, Any] | None, seeds: list[int], overrides: list[str], device: str,
                out_dir: Path, full_epochs: int | None = 0, workers: int = 1) -> list[dict]:
    """`full_epochs` 0: no full-train-set row; None: that row with the YAML's epochs; N: with N epochs."""
    # bad keys fail before any training; the trainer's own keys are known to any model YAML (PointNeXt's)
    model_cfgs = {Path(m).stem: load_train_config(m, overrides) for m in models}
    if len(model_cfgs) != len(models):
        raise ValueError(f'--model files must have distinct names (they label the rows): {list(models)}')
    pool = None
    jobs: list[_Job] = []
    for name, base in model_cfgs.items():
        base = _with_real_data(base, data_cfg)
        budget = _budget(base)
        for item in eval_sets:
            path, run_seeds = item.path, seeds
            if item.selection is not None:
                path = out_dir / 'random' / f'cpc{item.cpc}-selection{item.selection}.safetensors'
                if not path.is_file():
                    pool = pool or RealPool.from_dataset_cfg(_real_section((data_cfg or base)['dataset']), split='train')
                    save_random_artifact(pool, item.cpc, item.selection, path)
                run_seeds = [item.selection]
            for seed in run_seeds:
                cfg = _fit_classes(copy.deepcopy(base), (loaded.get(item.label) or SyntheticSet(path)).num_classes)
                cfg.artifact = str(path)
                cfg.dataset.train.resample = bool(item.resample) if item.resample is not None else True
                run_dir = out_dir / 'runs' / name / _safe(item.label) / item.mode.replace(' ', '-') / f'seed{seed}'
                jobs.append(_Job(name, (item.label, item.mode, item.cpc), budget, seed, item.selection,
                                 _finish(cfg, seed, device, run_dir)))
        if full_epochs != 0:
            pool = pool or RealPool.from_dataset_cfg(_real_section((data_cfg or base)['dataset']), split='train')
            jobs += _full_train_jobs(name, base, data_cfg, pool.num_classes, seeds, full_epochs, device, out_dir)
    results = _execute(jobs, workers)
    grouped: dict[tuple, list[dict]] = {}
    for job, run in zip(jobs, results):
        grouped.setdefault((job.model, job.row, job.budget), []).append(run)
    return [_row(*row, model, budget, runs) for (model, row, budget), runs in grouped.items()]


def _full_train_jobs(name: str, base, data_cfg: Mapping[str, Any] | None, num_classes: int, seeds: list[int],
                     epochs: int | None, device: str, out_dir: Path) -> list[_Job]:
    """The model trained on the whole real train set: what a distilled set is measured against."""
    dataset = _real_section((data_cfg or base)['dataset'])
    dataset['val'] = dict(base.dataset.get('val') or dataset.get('val') or {'split': 'test'})
    cfg = _fit_classes(copy.deepcopy(base), num_classes)
    cfg.dataset = dataset
    cfg = with_defaults(cfg)
    if epochs is not None:
        cfg.epochs = int(epochs)
        if 't_max' in cfg:
            cfg.t_max = int(epochs)
    budget, run_dirs = _budget(cfg), out_dir / 'runs' / name / 'full-train-set'
    return [_Job(name, FULL_TRAIN_ROW, budget, seed, None,
                 _finish(copy.deepcopy(cfg), seed, device, run_dirs / f'seed{seed}')) for seed in seeds]


def _finish(cfg, seed: int, device: str, run_dir: Path) -> dict:
    """The job's config as plain dicts (it may cross a process boundary), with its seed, device and folder."""
    cfg.seed, cfg.device, cfg.progress, cfg.run_dir = seed, device, False, str(run_dir)
    return to_plain(cfg)


def _train_job(job: _Job) -> dict:
    logger.info('protocol | %s | %s (%s) | seed %d', job.model, job.row[0], job.row[1], job.seed)
    return _metrics_run(train_classifier(job.cfg, job.cfg['run_dir']), job.seed, job.selection)


def _init_worker(threads: int) -> None:
    """A pool worker: its share of the cores, and the parent's log format (spawned processes start bare)."""
    torch.set_num_threads(threads)
    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s [worker] %(message)s',
                        datefmt='%H:%M:%S')


def _execute(jobs: list[_Job], workers: int) -> list[dict]:
    """Run the trainings in order, or `workers` at a time in spawned processes that split the cores evenly.

    Independent single-threaded trainings use a many-core CPU better than one training on all cores (small
    point-cloud batches do not scale across threads). Results come back in job order either way; the first
    failure stops the table and is raised.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [_train_job(job) for job in jobs]
    threads = max(1, torch.get_num_threads() // workers)
    logger.info('protocol | %d trainings on %d worker processes, %d thread(s) each', len(jobs), workers, threads)
    context = multiprocessing.get_context('spawn')   # fork after torch's thread pools start is unsafe
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                initargs=(threads,)) as executor:
        futures = [executor.submit(_train_job, job) for job in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            executor.shutdown(wait=True, cancel_futures=True)
            raise


def _budget(cfg) -> str:
    """A trainer config's budget, as the table states it (with every cut that makes it smaller)."""
    budget = f"{cfg.epochs} epochs, {cfg.num_points} points, batch {cfg.batch_size}{_precision(cfg.get('amp'))}"
    if cfg.get('max_train_batches'):
        budget += f", at most {cfg.max_train_batches} batches per epoch"
    budget += f", tested every {min(int(cfg.val_freq), int(cfg.epochs))} epochs"
    if cfg.get('val_per_class'):
        budget += f" on the first {cfg.val_per_class} test clouds of every class"
    if cfg.get('max_val_batches'):
        budget += f" (smoke run: evaluations cut to {cfg.max_val_batches} batches)"
    return budget


def _precision(amp: str | None) -> str:
    """The budget's precision clause: bf16 runs are a row of their own, never pooled with fp32 ones by --merge."""
    return ', bf16 autocast' if amp == 'bf16' else ''


def _real_section(dataset: Mapping[str, Any]) -> dict:
    """A DistilledDataset section turned back into its real dataset's (for the random selections' train split)."""
    dataset = copy.deepcopy(dict(dataset))
    common = dict(dataset['common'])
    if common.get('NAME') == 'DistilledDataset':
        common['NAME'] = common.pop('real_dataset')
        dataset['train'] = {'split': 'train'}
    common.pop('distilled_path', None)
    if isinstance(common.get('data_dir'), str):
        common['data_dir'] = resolve_path(common['data_dir'])
    dataset['common'] = common
    return dataset


def _with_real_data(cfg, data_cfg: Mapping[str, Any] | None):
    """The model YAML with its train split on DistilledDataset and, when `data_cfg` is given, its real data."""
    common = cfg.dataset.common
    if data_cfg is None:
        if common.get('NAME') != 'DistilledDataset':
            raise ValueError(f'{cfg.model.get("NAME")}: the model config trains on {common.get("NAME")}, not on '
                             f'DistilledDataset; use a cfgs/train/distilled-*.yaml config or give --cfg for the data')
        return cfg
    real = data_cfg['dataset']
    real_common = dict(real['common'])
    real_name = real_common.pop('NAME')
    if real_name == 'DistilledDataset':
        real_name = real_common.pop('real_dataset')
    train = dict(cfg.dataset.get('train') or {})
    train['split'] = 'train'
    val = dict(real.get('val') or real.get('test') or {'split': 'test'})
    val.setdefault('num_points', cfg.num_points)
    train.setdefault('num_points', cfg.num_points)
    cfg.dataset = {'common': {'NAME': 'DistilledDataset', 'real_dataset': real_name, **real_common},
                   'train': train, 'val': val}
    return with_defaults(cfg)   # plain dicts back to EasyConfig sections


def _fit_classes(cfg, k: int):
    """Size num_classes and the model head to the data's k classes (e.g. 10 for the embedded dataset)."""
    cfg.num_classes = k
    model = cfg.model
    if 'num_classes' in model:
        model.num_classes = k
    if isinstance(model.get('cls_args'), Mapping) and 'num_classes' in model.cls_args:
        model.cls_args.num_classes = k
    return cfg


def _metrics_run(metrics: Mapping[str, Any], seed: int, selection: int | None) -> dict:
    """Final-epoch and best-epoch test figures of one train_classifier run (separate test split if configured)."""
    run = {'seed': seed,
           'oa': float(metrics.get('test_last_oa', metrics['last_oa'])),
           'macc': float(metrics.get('test_last_macc', metrics['last_macc'])),
           'best_oa': float(metrics.get('test_best_oa', metrics['best_oa'])),
           'best_epoch': int(metrics['best_epoch']), 'epochs': int(metrics['epochs']),
           'seconds': float(metrics['seconds']), 'run_dir': metrics['run_dir'],
           'train_loss': [round(float(h['train_loss']), 4) for h in metrics.get('history', [])]}
    # what it trained against (a teacher's figures are printed under the table); none recorded: `_row`'s hard labels
    run.update({key: metrics[key] for key in ('labels', 'labels_report') if key in metrics})
    if selection is not None:
        run['selection'] = selection
    return run


# ---------------------------------------------------------------------------------------------- reporting
def _row(label: str, mode: str, cpc: int, model: str, budget: str, runs: list[dict],
         task: Task = CLASSIFICATION) -> dict:
    """One table row: what the set is and how it was trained, and its figures over the runs (`Task.summaries`)."""
    # every row says what its clouds were trained against: 'hard labels' or 'teacher labels'
    labels = sorted({run.get('labels', 'hard labels') for run in runs})
    return {'set': label, 'mode': mode, 'cpc': cpc, 'model': model, 'labels': ', '.join(labels), 'budget': budget,
            'task': task.name, **task.summaries(runs), 'runs': runs}


def _task_of(rows: Sequence[Mapping[str, Any]]) -> Task:
    return TASKS[rows[0].get('task', 'classification') if rows else 'classification']


def _teacher_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    teachers = {json.dumps(run['labels_report'], sort_keys=True): run['labels_report'] for r in rows
                for run in r.get('runs', []) if 'teacher' in run.get('labels_report', {})}
    return [teacher_line(report) for report in teachers.values()]


def random_bar(cpc: int) -> float:
    """The test OA (%) a model must reach on Random at `cpc` clouds per class for its rows at that cpc to be
    measurements (20 below 10 per class, 50 from 10 on): under it the budget has not trained the model, and its
    rows say nothing about the sets."""
    return 50.0 if int(cpc) >= 10 else 20.0


def undertrained(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], float]:
    """(model, cpc) -> Random's mean OA, for every model whose Random rows at that cpc stay under `random_bar`."""
    return {(r['model'], r['cpc']): r['final_oa']['mean'] for r in rows
            if r['mode'] == 'random selection' and r['final_oa']['mean'] < random_bar(r['cpc'])}


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The protocol's table, in the rows' task's figures. The classification rows of a model whose Random rows stay
    under `random_bar` at that cpc are not printed as figures: the table says that model's budget is too small."""
    task = _task_of(rows)
    headline = dict(task.figures)[task.headline]
    best = f'best_{task.headline}_papers_protocol'
    lines = ['| model | set | mode | cpc | labels | ' + ' | '.join(f'final-epoch {h} %' for _, h in task.figures)
             + f' | {BEST_LABEL} {headline} % | runs | budget |',
             '|---|---|---|---|---|' + '---|' * len(task.figures) + '---|---|---|']
    untrained = undertrained(rows) if task.name == 'classification' else {}
    for r in rows:
        if (r['model'], r['cpc']) in untrained:
            figures = 'not a measurement: Random under the bar (below)' + ' |' * len(task.figures)
        else:
            figures = ' | '.join(format_mean_std(r[key]) for key in [*(f'final_{k}' for k, _ in task.figures), best])
        lines.append(f"| {r['model']} | {r['set']} | {r['mode']} | {r['cpc']} | {r.get('labels', 'hard labels')} | "
                     f"{figures} | {r[best]['n']} | {r['budget']} |")
    lines.append('')
    lines.append(f"Final-epoch figures are this project's protocol (mean ± std over runs). The best-epoch column "
                 f"picks, per run, the tested epoch with the highest test {headline}, as the papers' code does: "
                 f"optimistic. {task.figures_note}".rstrip())
    lines += [f'{model} at {cpc} per class: Random reaches {oa:.2f} % OA, under the {random_bar(cpc):.0f} % a '
              f'trained model reaches at that size; this budget does not train {model}, so its rows at {cpc} per '
              f'class are not measurements (raise its epochs). Their figures are in results.json.'
              for (model, cpc), oa in untrained.items()]
    return '\n'.join(lines + _teacher_lines(rows))


def loss_curve_table(rows: Sequence[Mapping[str, Any]], parts: int = 5) -> str:
    """The training loss of every row trained through a model YAML, as the mean over its runs of each `parts`-th
    of the epochs: whether the budget let the loss settle (the last two columns close) or stopped it while falling.
    Empty when no row has a loss curve (the fast protocol keeps none)."""
    lines = []
    for r in rows:
        curves = [curve for curve in map(_train_loss, r.get('runs', [])) if len(curve) >= parts]
        if not curves:
            continue
        means = [statistics.mean(statistics.mean(c[i * len(c) // parts:(i + 1) * len(c) // parts]) for c in curves)
                 for i in range(parts)]
        lines.append(f"| {r['model']} | {r['set']} | {r['mode']} | {r['cpc']} | {len(curves[0])} | "
                     + ' | '.join(f'{m:.3f}' for m in means) + f' | {len(curves)} |')
    if not lines:
        return ''
    spans = [f'{100 * i // parts}–{100 * (i + 1) // parts} %' for i in range(parts)]
    header = '| model | set | mode | cpc | epochs | ' + ' | '.join(spans) + ' | runs |'
    return '\n'.join([f'Training loss, the mean over each of {parts} equal spans of the epochs (then over the runs): '
                       'a loss still falling in the last span means the budget stopped the model while it learned.',
                       '', header, '|---|---|---|---|---|' + '---|' * parts + '---|', *lines])


def _train_loss(run: Mapping[str, Any]) -> list[float]:
    """A run's per-epoch training loss: stored with the run, or (tables written before runs kept it) read from the
    run's own metrics.json where that folder still exists."""
    if run.get('train_loss'):
        return list(run['train_loss'])
    metrics = Path(run.get('run_dir', '')) / 'metrics.json'
    if run.get('run_dir') and metrics.is_file():
        return [float(h['train_loss']) for h in json.loads(metrics.read_text()).get('history', [])]
    return []


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One line per row: each figure's mean and std, the headline's best epoch, the headline's values."""
    task = _task_of(rows)
    columns = [(f'final_{key}', f'final_{key}') for key, _ in task.figures]   # (csv name, row key)
    columns.append((f'best_{task.headline}', f'best_{task.headline}_papers_protocol'))
    values = f'final_{task.headline}_values'
    fields = ['model', 'set', 'mode', 'cpc', 'labels', *(f'{name}_{s}' for name, _ in columns for s in ('mean', 'std')),
              'n', 'budget', values]
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            figures = {f'{name}_{s}': _round(r[key][s]) for name, key in columns for s in ('mean', 'std')}
            writer.writerow({'model': r['model'], 'set': r['set'], 'mode': r['mode'], 'cpc': r['cpc'],
                             'labels': r.get('labels', 'hard labels'), **figures, 'n': r[columns[0][1]]['n'],
                             'budget': r['budget'], values: ' '.join(map(str, r[f'final_{task.headline}']['values']))})


def _round(value: float) -> float | str:
    return 'nan' if math.isnan(value) else round(value, 2)


def _safe(label: str) -> str:
    return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in label)


__all__ = ['run_protocol', 'merge_results', 'evaluate_set', 'random_baseline', 'test_pool', 'parse_set_args',
           'expand_sets', 'save_random_artifact', 'random_selection', 'markdown_table', 'loss_curve_table', 'write_csv',
           'EvalSet', 'FAST_MODEL', 'BEST_LABEL']
