"""Distill a dataset described by a YAML config, export the artifact and evaluate it.

    python tools/distill.py --cfg cfgs/distill/demo.yaml [key=value ...]
    python tools/distill.py --cfg cfgs/distill/demo.yaml run_dir=runs/x   # re-running resumes runs/x
    python tools/distill.py --settings [classification|segmentation]     # every key, its kind and default
    torchrun --nproc_per_node=2 tools/distill.py --cfg ...               # classes sharded over 2 processes
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import openpoints_dd  # noqa: E402,F401  (registers everything, fixes openpoints on this machine)
from openpoints_dd.utils import distributed  # noqa: E402
from openpoints_dd.engine.distill import CHECKPOINT_NAME  # noqa: E402
from openpoints_dd.engine.pipeline import run_distillation  # noqa: E402
from openpoints_dd.settings import describe_schema, load_distill_config  # noqa: E402
from openpoints_dd.utils.run import start_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cfg', help='experiment YAML')
    parser.add_argument('--settings', nargs='?', const='classification', choices=('classification', 'segmentation'),
                        help='print every key of a distillation config (its kind, default and meaning) and exit')
    args, overrides = parser.parse_known_args(argv)
    if args.settings:
        print(describe_schema(args.settings))
        return 0
    if not args.cfg:
        parser.error('--cfg is required')
    cfg = load_distill_config(args.cfg, overrides)   # every key checked, every registry name resolved
    distributed.init_from_env(cfg['device'])
    finished = False
    try:
        with start_run(cfg, args.cfg, overrides, checkpoint=CHECKPOINT_NAME) as run_dir:
            run_distillation(cfg, run_dir)
        finished = True
    finally:
        distributed.shutdown(finished)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
