"""Run directories and logging for the command-line tools."""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from .config import config_hash, save_config
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


def start_run(cfg, cfg_path: str, overrides: list[str]) -> Path:
    """Create the run dir, start logging, save the resolved cfg, log the run's identity.

    Under torchrun every rank gets rank 0's run dir; only rank 0 writes there and logs below warnings.
    """
    from ..engine import distributed
    kept = keep_freed_memory()
    run_dir = Path(distributed.object_of_main(str(make_run_dir(cfg, cfg_path))))
    if not distributed.is_main():
        logging.basicConfig(level=logging.WARNING, format=f'rank {distributed.rank()} %(levelname)s %(message)s')
        return run_dir
    setup_logging(run_dir)
    save_config(cfg, run_dir / 'cfg.yaml')
    logger = logging.getLogger('openpoints_dd')
    logger.info('run dir %s | cfg %s | device %s | seed %s | torch %s, %d threads | %d process(es)', run_dir.absolute(),
                cfg_path, cfg.get('device', 'cpu'), cfg.get('seed'), torch.__version__, torch.get_num_threads(),
                distributed.world_size())
    if overrides:
        logger.info('overrides: %s', ' '.join(overrides))
    if not kept:
        logger.info('allocator: the glibc setting that keeps freed memory was not applied (slower steps, same results)')
    return run_dir


def write_json(path: Path, payload: Any) -> None:
    tmp = Path(str(path) + '.tmp')
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)
