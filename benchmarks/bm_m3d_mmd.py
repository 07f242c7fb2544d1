"""M3D's partition MMDs: one `rbf_mmd` per partition against `m3d.partition_mmds` (one Gram matrix per class).

    OMP_NUM_THREADS=1 python benchmarks/bm_m3d_mmd.py

At the shapes of one class in the 3DDP configs (4 partitions of 8 real clouds; 8 synthetic clouds per slot, 1
and 10 slots; 1024 channels x 255 points of sorted features) and of M3D on one explicit 1024-point cloud (one
partition): the best of `--repeats` timings of the weighted sum and its backward to the synthetic features, both
ways, measured alternately in one run; prints the ratios and the CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from distill_step import _cpu_name  # noqa: E402
from openpoints_dd.objectives.m3d import partition_mmds  # noqa: E402
from openpoints_dd.objectives.sadm import rbf_mmd  # noqa: E402

MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)
#: (what, partitions, real clouds, synthetic clouds, feature length)
SHAPES = (('3DDP, 1 slot per class', 4, 8, 8, 1024 * 255), ('3DDP, 10 slots per class', 4, 8, 80, 1024 * 255),
          ('M3D, 1 explicit 1024-point cloud', 1, 8, 1, 1024 * 1024))


def per_partition(real: torch.Tensor, syn: torch.Tensor, multipliers) -> torch.Tensor:
    """What M3D computed before `partition_mmds`: one `rbf_mmd` per partition."""
    return torch.stack([rbf_mmd(real[s], syn, multipliers) for s in range(real.shape[0])], dim=1)


def best_seconds(mmds, real: torch.Tensor, syn: torch.Tensor, repeats: int) -> float:
    best = float('inf')
    for _ in range(repeats):
        x = syn.clone().requires_grad_(True)
        start = time.perf_counter()
        mmds(real, x, MULTIPLIERS).sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f'CPU: {_cpu_name()} | torch {torch.__version__} | threads {torch.get_num_threads()}')
    print(f'{"shape (one class)":34s} {"per partition ms":>17s} {"one Gram ms":>12s} {"ratio":>7s}')
    for what, partitions, real_clouds, syn_clouds, length in SHAPES:
        real = torch.rand(partitions, 1, real_clouds, length)
        syn = torch.rand(1, syn_clouds, length)
        old = best_seconds(per_partition, real, syn, args.repeats)
        new = best_seconds(partition_mmds, real, syn, args.repeats)
        print(f'{what:34s} {old * 1e3:17.1f} {new * 1e3:12.1f} {old / new:6.2f}x')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
