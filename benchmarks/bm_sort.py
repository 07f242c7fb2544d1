"""torch.sort against `utils.sorting.sort_descending` (numpy's SIMD sort) at the shapes SADM and M3D sort.

    OMP_NUM_THREADS=1 python benchmarks/bm_sort.py

Per shape: the best of `--repeats` timings of the values alone (the real side, no gradient) and of values,
backward included (the synthetic side), both ways, measured alternately in one run; prints the ratios and the CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from distill_step import _cpu_name  # noqa: E402
from openpoints_dd.utils.sorting import sort_descending  # noqa: E402

#: (what, shape): M3D at 1 slot per class (8 real clouds x 4 partitions, 8 synthetic clouds; 1024 channels x 255
#: points) and SADM at 10 per class and 256 points (32 real clouds, channel-major)
SHAPES = (('M3D real partitions', (32, 1024, 255)), ('M3D synthetic clouds', (8, 1024, 255)),
          ('SADM real clouds', (32, 1024, 256)))


def torch_sort(values: torch.Tensor) -> torch.Tensor:
    return torch.sort(values, dim=-1, descending=True).values


def best_seconds(sort, values: torch.Tensor, backward: bool, repeats: int) -> float:
    best = float('inf')
    for _ in range(repeats):
        x = values.clone().requires_grad_(backward)
        start = time.perf_counter()
        out = sort(x)
        if backward:
            out.sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f'CPU: {_cpu_name()} | torch {torch.__version__} | threads {torch.get_num_threads()}')
    print(f'{"shape":34s} {"grad":>5s} {"torch.sort ms":>14s} {"numpy ms":>10s} {"ratio":>7s}')
    for what, shape in SHAPES:
        values = torch.randn(shape).abs()
        for backward in (False, True):
            times = {name: best_seconds(sort, values, backward, args.repeats)
                     for name, sort in (('torch', torch_sort), ('numpy', sort_descending))}
            print(f'{what + " " + str(shape):34s} {str(backward):>5s} {times["torch"] * 1e3:14.1f} '
                  f'{times["numpy"] * 1e3:10.1f} {times["torch"] / times["numpy"]:6.1f}x')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
