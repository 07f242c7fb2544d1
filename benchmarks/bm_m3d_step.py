"""M3D's matching step for one class: an older tree against this one, in one run.

    git worktree add --detach /tmp/old_main <commit>       # the old code, once
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bm_m3d_step.py --old-tree /tmp/old_main
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bm_m3d_step.py --widths 1024 512 256 128

What a distillation iteration does per class with M3D (`M3D.match_classes` on a fresh frozen DistillPointNet,
then the backward to the synthetic points), at the shapes of the configs that use it: the explicit clouds of
`m3d-herding-cpc{1,10}-cpu30m.yaml` (one 1024-point partition; 1 and 10 clouds per class) and 3DDP's
`3ddp-herding-cpc{1,10}-cpu30m.yaml` (4 partitions of 255 points; 8 and 80 synthetic 255-point clouds per class);
8 real clouds per class throughout. Every measurement runs in its own subprocess, which imports the tree under test
(first on PYTHONPATH; the imported path is checked) and applies its allocator setting; the best of `--repeats`
steps after one warm-up. Prints the CPU and, per shape, both times and their ratio.

`--widths` times this tree alone at the 10-per-class explicit shape, once per width of the network's last
point-wise layer (the map M3D sorts): the step's cost against the number of random features it matches.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from old_tree import imported_from, require_old_tree, run_in_tree  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: (what, partitions, points per partition, synthetic clouds, synthetic points)
SHAPES = (('M3D, 1 explicit cloud per class', 1, 1024, 1, 1024),
          ('M3D, 10 explicit clouds per class', 1, 1024, 10, 1024),
          ('3DDP, 1 slot per class', 4, 255, 8, 255),
          ('3DDP, 10 slots per class', 4, 255, 80, 255))
REAL_CLOUDS, REAL_POINTS = 8, 1024


def _measure(spec: dict) -> dict:
    """In a subprocess: one class's M3D loss and its backward to the synthetic points, best of `repeats`."""
    import torch
    torch.set_num_threads(1)
    imported = imported_from(spec['tree'])
    from openpoints_dd.models import DistillPointNet
    from openpoints_dd.objectives import M3D
    from openpoints_dd.utils.memory import keep_freed_memory
    keep_freed_memory()
    torch.manual_seed(0)
    backbone = DistillPointNet(num_classes=40, widths=(64, 128, spec.get('last_width', 1024))).requires_grad_(False)
    objective = M3D(partitions=spec['partitions'], points_per_partition=spec['points_per_partition'])
    real = torch.rand(1, REAL_CLOUDS, REAL_POINTS, 3) * 2 - 1
    syn = (torch.rand(1, spec['syn_clouds'], spec['syn_points'], 3) * 2 - 1).requires_grad_(True)
    best = float('inf')
    for _ in range(spec['repeats'] + 1):
        start = time.perf_counter()
        objective.match_classes(backbone, syn, real, torch.tensor([0])).sum().backward()
        best = min(best, time.perf_counter() - start)
        syn.grad = None
    return {'seconds': best, 'imported': str(imported)}


def _in_subprocess(spec: dict, tree: Path) -> dict:
    out = run_in_tree(__file__, spec, tree, threads=1)
    if out.returncode != 0:
        raise RuntimeError(f'measurement in {tree} failed:\n{out.stderr[-2000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def _spec(shape: tuple, repeats: int, **extra) -> dict:
    """What `_measure` times: a SHAPES row, the repeats, and any extra keys (`last_width`)."""
    _, partitions, per_partition, syn_clouds, syn_points = shape
    return {'partitions': partitions, 'points_per_partition': per_partition, 'syn_clouds': syn_clouds,
            'syn_points': syn_points, 'repeats': repeats, **extra}


def _time_widths(parser: argparse.ArgumentParser, widths: list[int], repeats: int, cpu: str) -> int:
    """This tree's 10-per-class explicit step at each last-layer width, and its speed against the first."""
    if min(widths) < 1:
        parser.error(f'--widths must be positive, got {widths}')
    what = SHAPES[1][0]
    print(f'CPU: {cpu} | one thread | {REPO} | {what}, {REAL_CLOUDS} real clouds')
    print(f'{"last width":>10s} {"s":>7s} {"speed":>7s}')
    first = None
    for width in widths:
        seconds = _in_subprocess(_spec(SHAPES[1], repeats, last_width=width), REPO)['seconds']
        first = first or seconds
        print(f'{width:10d} {seconds:7.3f} {first / seconds:6.2f}x', flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--old-tree', help='a checkout of the old code (git worktree of the old commit)')
    parser.add_argument('--widths', type=int, nargs='+', help='time this tree at these last-layer widths instead')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--one', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_measure(json.loads(args.one))))
        return 0
    from distill_step import _cpu_name
    if args.widths and args.old_tree:
        parser.error('--widths times this tree alone; drop --old-tree (or --widths to compare the trees)')
    if args.widths:
        return _time_widths(parser, args.widths, args.repeats, _cpu_name())
    old_tree = require_old_tree(parser, args.old_tree)
    print(f'CPU: {_cpu_name()} | one thread | old: {old_tree} | new: {REPO}')
    print(f'{"shape (one class, 8 real clouds)":36s} {"old s":>7s} {"new s":>7s} {"ratio":>7s}')
    for shape in SHAPES:
        what, spec = shape[0], _spec(shape, args.repeats)
        old = _in_subprocess(spec, old_tree)['seconds']
        new = _in_subprocess(spec, REPO)['seconds']
        print(f'{what:36s} {old:7.3f} {new:7.3f} {old / new:6.2f}x', flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
