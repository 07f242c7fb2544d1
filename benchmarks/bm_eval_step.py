"""One training step of the CPU protocol's evaluation PointNet at the 10-per-class shape, fp32 against bf16.

    OMP_NUM_THREADS=1 python benchmarks/bm_eval_step.py

`DistillPointNet` (64/128/1024), Adam, cross-entropy on 256 clouds of 1024 points (a 400-cloud set is 2 steps per
epoch, 400 per 200-epoch seed); per variant the best of `--repeats` steps after one warm-up step: fp32, the bf16
max-point search alone, bf16 autocast (`amp: bf16`), and both. Prints the CPU, seconds per step and the projected
minutes of one evaluation seed. It runs with the allocator of tools/evaluate.py (`keep_freed_memory`): without it
every step's maps are faulted in afresh, which the evaluation does not pay.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from distill_step import _cpu_name  # noqa: E402
from openpoints_dd.models import DistillPointNet  # noqa: E402
from openpoints_dd.utils.memory import keep_freed_memory  # noqa: E402
from openpoints_dd.utils.precision import autocast  # noqa: E402

VARIANTS = (('fp32', None, 'float32'), ('bf16 search', None, 'bfloat16'), ('bf16 autocast', 'bf16', 'float32'),
            ('bf16 autocast + bf16 search', 'bf16', 'bfloat16'))


def step_seconds(amp: str | None, argmax_dtype: str, clouds: torch.Tensor, labels: torch.Tensor, repeats: int) -> float:
    torch.manual_seed(0)
    model = DistillPointNet(num_classes=40, argmax_dtype=argmax_dtype)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with autocast(amp, 'cpu'):
            loss = F.cross_entropy(model(clouds).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()   # the allocator tools/evaluate.py runs with
    clouds, labels = torch.randn(256, 1024, 3), torch.randint(0, 40, (256,))
    print(f'CPU: {_cpu_name()} | torch {torch.__version__} | threads {torch.get_num_threads()}')
    base = None
    for name, amp, argmax_dtype in VARIANTS:
        seconds = step_seconds(amp, argmax_dtype, clouds, labels, args.repeats)
        base = base or seconds
        print(f'{name:30s} {seconds:6.3f} s/step  {base / seconds:4.2f}x  one seed (400 steps) {400 * seconds / 60:5.1f} min')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
