"""Evaluate distilled sets (and random real selections) across models and seeds: final-epoch accuracy, honestly.

    # the fast CPU protocol (DD3D's PointNet, research/cpu_protocol.md; data and settings from the distill cfg)
    python tools/evaluate.py --cfg cfgs/distill/modelnet40/dd3d-cpc10-cpu30m.yaml \
        --set dd3d=runs/<run>/artifact.safetensors --random 5 --seeds 3
    # any classification YAMLs, trained on DistilledDataset by tools/train.py's trainer
    python tools/evaluate.py --cfg cfgs/distill/modelnet40/default.yaml --set dd3d=runs/<run>/artifact.safetensors \
        --random 3 --seeds 3 --model cfgs/train/distilled-pointnet-cpu.yaml --model cfgs/train/distilled-dgcnn-cpu.yaml
    # ... and the same models on the whole real train set (the upper bound), at a stated epoch budget
    python tools/evaluate.py --cfg cfgs/distill/modelnet40/default.yaml --set dd3d=runs/<run>/artifact.safetensors \
        --random 3 --seeds 3 --model cfgs/train/distilled-pointnet-cpu.yaml --full-train --full-epochs 5
    # ... two trainings at a time, one thread each (all cores busy, one table)
    python tools/evaluate.py ... --model cfgs/train/distilled-pointnet-cpu.yaml --workers 2
    # part-segmentation sets: the CPU protocol of a `task: segmentation` config (instance and class mIoU)
    python tools/evaluate.py --cfg cfgs/distill/embedded_part/dd3d-cpc1.yaml --set dd3d=runs/<run>/artifact.safetensors \
        --random 3 --seeds 3
    # one table from parts run in separate processes or machines (split by model, set or --first-seed)
    python tools/evaluate.py --merge runs/<part1> runs/<part2> --out runs/<table>

`key=value` overrides apply to every --model YAML (e.g. epochs=10), or to --cfg when no --model is given
(e.g. evaluation.epochs=50). Writes results.json, results.csv and results.md into --out and prints the table.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import openpoints_dd  # noqa: E402,F401  (registers everything, fixes openpoints on this machine)
from openpoints_dd.engine.protocol import merge_results, parse_set_args, run_protocol  # noqa: E402
from openpoints_dd.settings import load_distill_config  # noqa: E402
from openpoints_dd.utils.config import load_config  # noqa: E402
from openpoints_dd.utils.memory import keep_freed_memory  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--set', action='append', default=[], metavar='LABEL=PATH',
                        help='an artifact (.safetensors) to evaluate; repeatable')
    parser.add_argument('--random', type=int, default=0, metavar='K',
                        help='K random real selections at the sets\' clouds per class (each trained once): '
                             'selections S..S+K-1, S from --first-seed')
    parser.add_argument('--cpc', type=int, default=None, help='clouds per class for --random without --set')
    parser.add_argument('--model', action='append', default=[], metavar='YAML',
                        help='a classification config (cfgs/train/*.yaml); repeatable. None: the fast CPU protocol')
    parser.add_argument('--seeds', type=int, default=3,
                        help='seeds per artifact set (S..S+N-1, S from --first-seed). Default 3')
    parser.add_argument('--first-seed', type=int, default=0, metavar='S',
                        help='first seed (and first --random selection): one table\'s seeds split over processes '
                             'or machines. Default 0')
    parser.add_argument('--cfg', default=None,
                        help='distill or train YAML whose dataset section gives the real data (and, for the fast '
                             'protocol, whose evaluation section gives its settings)')
    parser.add_argument('--full-train', action='store_true',
                        help='also train every --model on the whole real train set (the upper-bound row)')
    parser.add_argument('--full-epochs', type=int, default=None,
                        help='epochs of the --full-train row (default: the model YAML\'s); stated in its budget')
    parser.add_argument('--generator-modes', nargs='+', default=['resampled', 'fixed'], choices=['resampled', 'fixed'],
                        help='rows of a generator artifact: fresh clouds every epoch and/or one fixed draw. Default both')
    parser.add_argument('--device', default='cpu', help='cpu | cuda | auto. Default cpu')
    parser.add_argument('--workers', type=int, default=1,
                        help='--model trainings run this many at a time, in separate processes that share the '
                             'threads evenly (e.g. 2 on 2 cores: two single-threaded trainings). Default 1')
    parser.add_argument('--merge', nargs='+', default=None, metavar='DIR',
                        help='train nothing: pool the results.json of these --out folders into one table in --out')
    parser.add_argument('--out', default=None, help='output folder. Default runs/evaluate/<date-time>')
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith('--') and '=' not in o]
    if unknown:
        parser.error(f'unknown options {unknown}; overrides are key=value')
    if args.merge is not None:
        trains = args.set or args.random or args.model or args.cfg or args.full_train or overrides
        if trains or not args.out:
            parser.error('--merge takes only the folders to pool and --out')
        result = merge_results(args.merge, args.out)
        print(result['table'])
        print(f'\nwrote {args.out}/results.json, results.csv, results.md')
        return 0
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S')
    keep_freed_memory()
    sets = parse_set_args(args.set)
    data_cfg = None
    if args.cfg and args.model:   # only its dataset section is read
        data_cfg = load_config(args.cfg)
    elif args.cfg:                # the fast protocol: the evaluation section too, checked, defaults filled in
        data_cfg = load_distill_config(args.cfg, overrides)
    elif not args.model:
        parser.error('give --cfg (data and evaluation settings) or at least one --model YAML')
    out = Path(args.out or Path('runs') / 'evaluate' / time.strftime('%Y%m%d-%H%M%S'))
    result = run_protocol(out_dir=out, sets=sets, random_k=args.random, cpc=args.cpc, models=args.model,
                          data_cfg=data_cfg, seeds=args.seeds, overrides=overrides if args.model else [],
                          device=args.device, full_train=args.full_train, full_epochs=args.full_epochs,
                          generator_modes=args.generator_modes, workers=args.workers,
                          first_seed=args.first_seed)
    print(result['table'])
    print(f'\nwrote {out}/results.json, results.csv, results.md')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
