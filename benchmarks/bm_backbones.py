"""One training step of the openpoints backbones on CPU: an older tree against this one, fp32 and bf16, in one run.

    git worktree add --detach /tmp/old_main de8213d       # the old code, once
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bm_backbones.py --old-tree /tmp/old_main \
        --out docs/results/backbones_cpu.json

A step is what a training loop does per batch, minus the optimizer: `zero_grad`, the train-mode forward and
the loss from `model.get_logits_loss`, `backward`, on (batch, points, 3) uniform points with labels 0..39,
each model built from its cfgs/models YAML (this tree's file for both trees). Every measurement runs in its own
subprocess with `--threads` intra-op threads and glibc's allocator set as the trainer sets it
(`keep_freed_memory` of the tree under test, where it has one): `--warmup` steps, then the mean of `--repeats`
timed steps. The old tree is imported by putting it first on PYTHONPATH; each subprocess reports the
`openpoints_dd.__file__` it imported, and a mismatch is an error.

Reported per backbone: old and new step seconds and the speed-up; the step's matmul/conv GFLOP counted by
torch's FlopCounterMode on the old code (the model's work; the new code skips some of it: DGCNN's and PCT's
first convolutions run per point, not per edge) and on the new code (what it executes); GFLOP/s of both
counts over the new step time, and those as shares of this CPU's fp32 matmul peak (`distill_step._matmul_peak`,
measured in this run, its own subprocess); the bf16 step (the new code as `amp: bf16` in a train YAML runs it:
bf16 autocast of the forward, the loss in fp32) and its ratio to the fp32 step. JSON gets the CPU model, torch version,
threads and every raw figure.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from old_tree import imported_from, require_old_tree, run_in_tree  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = ['pointnext-s', 'pointnet++', 'dgcnn', 'pct', 'pointmlp']


# ------------------------------------------------------------------------------------------ one measurement
def _rss_mib(field: str) -> float:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1]) / 1024
    return float('nan')


def _measure(spec: dict) -> dict:
    """In a subprocess: build one backbone from the tree on PYTHONPATH, time `repeats` steps after `warmup`."""
    import torch
    torch.set_num_threads(spec['threads'])
    imported = imported_from(spec['tree'])
    try:
        from openpoints_dd.utils.memory import keep_freed_memory
        allocator = keep_freed_memory()
    except ImportError:
        allocator = False
    from openpoints.models import build_model_from_cfg
    from openpoints.utils import EasyConfig

    cfg = EasyConfig()
    cfg.load(str(REPO / 'cfgs' / 'models' / f"{spec['model']}.yaml"), recursive=False)
    if 'points' in cfg.model:                 # PointMLP sizes its stages by the input's point count
        cfg.model.points = spec['points']
    if cfg.model.get('criterion_args') is None:
        cfg.model.criterion_args = cfg.criterion_args
    torch.manual_seed(0)
    model = build_model_from_cfg(cfg.model).train()
    pos = torch.rand(spec['batch'], spec['points'], 3)
    target = torch.arange(spec['batch']) % 40
    data = {'pos': pos, 'x': pos.transpose(1, 2).contiguous()}

    def precision() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if spec['precision'] == 'bf16':            # as the trainer runs `amp: bf16` (this tree only)
            from openpoints_dd.utils.precision import autocast, fp32_criteria
            stack.enter_context(autocast('bf16', 'cpu'))
            stack.enter_context(fp32_criteria(getattr(model, 'criterion', None)))
        return stack

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with precision():
            _, loss = model.get_logits_loss(data, target)
        loss.backward()

    for _ in range(spec['warmup']):
        step()
    times = []
    for _ in range(spec['repeats']):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result = {'seconds': statistics.mean(times), 'times': times, 'imported': str(imported),
              'allocator_kept': allocator, 'peak_rss_mib': _rss_mib('VmHWM')}
    if spec.get('count_flops'):
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        result['gflop'] = counter.get_total_flops() / 1e9
    return result


def _peaks(spec: dict) -> dict:
    """In a subprocess: this CPU's fp32 and bf16 matmul peak on `threads` threads."""
    import torch
    torch.set_num_threads(spec['threads'])
    from distill_step import _matmul_peak
    return {'fp32': _matmul_peak('float32'), 'bf16': _matmul_peak('bfloat16')}


def _in_subprocess(spec: dict, tree: Path) -> dict:
    out = run_in_tree(__file__, spec, tree, spec['threads'])
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or ['no output']
        return {'error': f'exit {out.returncode}: {tail[0][:300]}'}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ the table
def _row(name: str, old: dict, new: dict, bf16: dict, peak: dict) -> dict:
    row = {'model': name, 'old': old, 'new': new, 'bf16': bf16}
    if 'seconds' in old and 'seconds' in new:
        row['speedup'] = old['seconds'] / new['seconds']
    if 'seconds' in new:
        for key, flops in (('model', old.get('gflop')), ('executed', new.get('gflop'))):
            if flops is not None:
                row[f'{key}_gflops_per_s'] = flops / new['seconds']
                row[f'{key}_of_fp32_peak'] = row[f'{key}_gflops_per_s'] / peak['fp32']
    if 'seconds' in bf16 and 'seconds' in new:
        row['bf16_speedup_over_fp32'] = new['seconds'] / bf16['seconds']
    return row


def _cell(side: dict, key: str = 'seconds', fmt: str = '{:.2f}') -> str:
    return fmt.format(side[key]) if key in side else side.get('error', '-')[:40]


def print_table(report: dict) -> None:
    print(f"\n{report['cpu']} | torch {report['torch']} | {report['threads']} thread(s) | batch {report['batch']}, "
          f"{report['points']} points | mean of {report['repeats']} steps after {report['warmup']} | fp32 matmul peak "
          f"{report['matmul_peak_gflops']['fp32']:.0f} GFLOP/s, bf16 {report['matmul_peak_gflops']['bf16']:.0f}")
    print(f"old: {report['old_tree']} ({report['old_commit']}) | new: {report['new_tree']} ({report['new_commit']})\n")
    head = ('| backbone | old s | new s | speed-up | model GFLOP | executed GFLOP | model GFLOP/s | % of fp32 peak '
            '| executed GFLOP/s | % of peak | bf16 s | bf16 vs fp32 |')
    print(head)
    print('|' + '---|' * (head.count('|') - 1))
    for row in report['rows']:
        def ratio(key: str, fmt: str) -> str:
            return fmt.format(row[key]) if key in row else '-'
        print(f"| {row['model']} | {_cell(row['old'])} | {_cell(row['new'])} | {ratio('speedup', '{:.2f}x')} | "
              f"{_cell(row['old'], 'gflop', '{:.0f}')} | {_cell(row['new'], 'gflop', '{:.0f}')} | "
              f"{ratio('model_gflops_per_s', '{:.0f}')} | {ratio('model_of_fp32_peak', '{:.0%}')} | "
              f"{ratio('executed_gflops_per_s', '{:.0f}')} | {ratio('executed_of_fp32_peak', '{:.0%}')} | "
              f"{_cell(row['bf16'])} | {ratio('bf16_speedup_over_fp32', '{:.2f}x')} |")


def _commit(tree: Path) -> str:
    out = subprocess.run(['git', '-C', str(tree), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True)
    dirty = subprocess.run(['git', '-C', str(tree), 'status', '--porcelain', '--untracked-files=no'],
                           capture_output=True, text=True).stdout.strip()
    return (out.stdout.strip() or 'unknown') + (' + uncommitted changes' if dirty else '')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--one', help=argparse.SUPPRESS)
    parser.add_argument('--peaks', help=argparse.SUPPRESS)
    parser.add_argument('--old-tree', required=False, help='a checkout of the old code (git worktree of the old commit)')
    parser.add_argument('--models', nargs='+', default=MODELS, help=f'cfgs/models stems. Default {" ".join(MODELS)}')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--points', type=int, default=1024)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first (the heap settles). Default 2')
    parser.add_argument('--repeats', type=int, default=3, help='timed steps (mean). Default 3')
    parser.add_argument('--no-bf16', action='store_true', help='skip the bf16 step')
    parser.add_argument('--out', default=str(REPO / 'runs' / 'benchmarks' / 'bm_backbones.json'))
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_measure(json.loads(args.one))))
        return 0
    if args.peaks:
        print(json.dumps(_peaks(json.loads(args.peaks))))
        return 0
    old_tree, new_tree = require_old_tree(parser, args.old_tree), REPO

    import torch
    from distill_step import _cpu_name

    base = {'batch': args.batch, 'points': args.points, 'threads': args.threads, 'warmup': args.warmup,
            'repeats': args.repeats}
    peak_out = subprocess.run([sys.executable, __file__, '--peaks', json.dumps({'threads': args.threads})],
                              capture_output=True, text=True, check=True,
                              env=dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads)))
    peak = json.loads(peak_out.stdout.strip().splitlines()[-1])
    report = {'cpu': _cpu_name(), 'torch': torch.__version__, 'threads': args.threads, 'batch': args.batch,
              'points': args.points, 'warmup': args.warmup, 'repeats': args.repeats,
              'old_tree': str(old_tree), 'old_commit': _commit(old_tree), 'new_tree': str(new_tree),
              'new_commit': _commit(new_tree), 'matmul_peak_gflops': peak, 'rows': []}
    print(f"matmul peak on {args.threads} thread(s): fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s",
          flush=True)
    for name in args.models:
        spec = {**base, 'model': name}
        old = _in_subprocess({**spec, 'precision': 'fp32', 'count_flops': True}, old_tree)
        print(f"{name}: old {_cell(old)} s", flush=True)
        new = _in_subprocess({**spec, 'precision': 'fp32', 'count_flops': True}, new_tree)
        print(f"{name}: new {_cell(new)} s", flush=True)
        bf16 = ({'error': 'skipped (--no-bf16)'} if args.no_bf16
                else _in_subprocess({**spec, 'precision': 'bf16'}, new_tree))
        print(f"{name}: bf16 {_cell(bf16)} s", flush=True)
        report['rows'].append(_row(name, old, new, bf16, peak))
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f'\nwrote {out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
