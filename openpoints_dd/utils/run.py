"""Run directories and logging for the command-line tools."""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from . import distributed
from .config import config_hash, load_yaml, save_config, to_plain

from .memory import keep_freed_memory


def make_run_dir(cfg: Mapping[str, Any], cfg_path: str) -> Path:
    """Where a run of tools/distill.py or tools/train.py lands, one rule: `run_dir` from the cfg, else
    `<root_dir>/<cfg stem>/<date-time>-<short cfg hash>/` with `root_dir` from the cfg (default `runs`; PointNeXt's
    cfgs/default.yaml sets `log/`). Relative paths are relative to the current directory."""
    if cfg.get('run_dir'):
        return Path(cfg['run_dir'])
    stem = Path(cfg_path).stem
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    return Path(cfg.get('root_dir') or 'runs') / stem / f'{stamp}-{config_hash(cfg)[:8]}'


def setup_logging(run_dir: Path, verbose: bool = False) -> None:
    """Console and `<run_dir>/log.txt`, replacing handlers of earlier runs in this process."""
    run_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, '_openpoints_dd', False):
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter('%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S')
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(run_dir / 'log.txt')):
        handler.setFormatter(fmt)
        handler._openpoints_dd = True
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


@contextlib.contextmanager
def start_run(cfg, cfg_path: str, overrides: list[str], *, checkpoint: str | None = None) -> Iterator[Path]:
    """The run directory of one tool invocation, for the duration of the block: created, locked against a second
    process, checked for a compatible resume, logging to its log.txt, the resolved cfg saved.

    Args:
        checkpoint: the file name of the run's checkpoint (tools/distill.py: checkpoint.pt). When it exists and
            `cfg.resume` is not 'never', the stored cfg.yaml must equal this config except for keys that cannot
            change the result (`RESUME_HARMLESS`): another config is an error naming the changed keys, unless
            `resume=force`, which continues and records the changes in cfg.yaml (`resumed_with_changes`).

    Under torchrun every rank gets rank 0's run dir; only rank 0 locks, writes there and logs below warnings.

    Raises:
        RuntimeError: another process holds the run directory.
        ValueError: a resume with a changed config (without resume=force), or an unknown `resume` value.
    """
    kept = keep_freed_memory()
    run_dir = Path(distributed.object_of_main(str(make_run_dir(cfg, cfg_path))))
    if not distributed.is_main():
        logging.basicConfig(level=logging.WARNING, format=f'rank {distributed.rank()} %(levelname)s %(message)s')
        yield run_dir
        return
    with exclusive_dir(run_dir):
        changes = _resume_changes(cfg, run_dir, checkpoint)
        setup_logging(run_dir)
        save_config(cfg, run_dir / 'cfg.yaml')
        logger = logging.getLogger('openpoints_dd')
        logger.info('run dir %s | cfg %s | device %s | seed %s | torch %s, %d threads | %d process(es)',
                    run_dir.absolute(), cfg_path, cfg.get('device', 'cpu'), cfg.get('seed'), torch.__version__,
                    torch.get_num_threads(), distributed.world_size())
        if overrides:
            logger.info('overrides: %s', ' '.join(overrides))
        if changes:
            logger.warning('resume=force: continuing the checkpoint of another config; changed: %s', changes)
        if not kept:
            logger.info('allocator: the glibc setting that keeps freed memory was not applied (slower steps, same '
                        'results)')
        yield run_dir


#: keys whose change cannot change a resumed distillation's result: where and how it runs and logs, and the
#: evaluation that follows it
RESUME_HARMLESS = ('run_dir', 'resume', 'resumed_with_changes', 'device', 'distill.progress', 'distill.log_every',
                   'distill.checkpoint_every', 'evaluation')
RESUME_MODES = ('auto', 'force', 'never')


def resume_mode(value: Any) -> str:
    """`resume`: 'auto' (continue a checkpoint of the same config), 'force' (continue one of a changed config,
    recorded) or 'never' (start over). YAML's true and false mean 'auto' and 'never'."""
    mode = {True: 'auto', False: 'never', None: 'auto'}.get(value, value) if not isinstance(value, str) else value
    if mode not in RESUME_MODES:
        raise ValueError(f'resume must be one of {", ".join(RESUME_MODES)} (or true/false), got {value!r}')
    return mode


def _resume_changes(cfg, run_dir: Path, checkpoint: str | None) -> list[str]:
    """The keys a resume would change, [] when nothing resumes. Records a forced resume's changes in `cfg`."""
    mode = resume_mode(cfg.get('resume'))
    stored_path = run_dir / 'cfg.yaml'
    if checkpoint is None or mode == 'never' or not (run_dir / checkpoint).is_file() or not stored_path.is_file():
        return []
    stored = load_yaml(stored_path.read_text()) or {}
    changes = config_changes(stored, json.loads(json.dumps(to_plain(cfg), default=str)), RESUME_HARMLESS)
    if changes and mode != 'force':
        raise ValueError(f'run_dir {run_dir} holds a checkpoint of another config; this one changes '
                         f'{", ".join(changes)}. Use a new run_dir, resume=never to start over, or resume=force to '
                         f'continue the checkpoint with this config (the changes are recorded in cfg.yaml).')
    if changes:
        cfg['resumed_with_changes'] = list(stored.get('resumed_with_changes') or []) + changes
    return changes


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose value differs between two plain configs (added and removed keys too), minus those under
    an `ignore` prefix: 'distill.syn_optimizer.lr: 0.001 -> 0.5'."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    changes = []
    for key in sorted(set(flat_old) | set(flat_new)):
        if any(key == p or key.startswith(p + '.') for p in ignore):
            continue
        if flat_old.get(key, '<absent>') != flat_new.get(key, '<absent>'):
            changes.append(f'{key}: {flat_old.get(key, "<absent>")!r} -> {flat_new.get(key, "<absent>")!r}')
    return changes


def _flatten(cfg: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f'{prefix}{key}.'))
        else:
            out[f'{prefix}{key}'] = value
    return out


@contextlib.contextmanager
def exclusive_dir(folder: Path, name: str = 'run_dir') -> Iterator[None]:
    """An exclusive lock on `<folder>/.lock` for the block: a second process on the same run folder is refused at
    once (it would interleave log.txt and race the checkpoint), naming the holder's pid. `name` is how the error
    calls the folder (the key or option that chose it)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / '.lock', 'a+') as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            handle.seek(0)
            holder = handle.read().strip() or '?'
            raise RuntimeError(f'{name} {folder} is in use by another process (pid {holder}); wait for it to '
                               f'finish or choose another {name}') from e
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def run_log_file(path: Path) -> Iterator[None]:
    """Copy this package's INFO records to `path`, unless a handler already writes there (tools/train.py)."""
    package_logger = logging.getLogger('openpoints_dd')
    target = os.path.abspath(path)
    for holder in (package_logger, logging.getLogger()):
        if any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in holder.handlers):
            yield
            return
    handler = logging.FileHandler(target)
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S'))
    handler.setLevel(logging.INFO)
    previous_level = package_logger.level
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
        handler.close()
