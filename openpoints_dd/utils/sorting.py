"""Sorting along the last dimension, largest first, by numpy's vectorised sort on CPU.

SADM and M3D sort every channel of a feature map over its points (tens of thousands of rows of a few hundred values
per class and step). numpy sorts float32/float64 rows with a SIMD quicksort (x86-simd-sort, AVX-512 or AVX2), which
on this project's CPUs ran about 20x faster than `torch.sort` for the values alone and about 4x faster for values
with their permutation (numpy's argsort, then a differentiable gather): `benchmarks/bm_sort.py` measures both.
The sorted values are the same numbers either way; only the order of exact ties (and so which tied element a
gradient reaches) may differ from `torch.sort`'s.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: dtypes numpy sorts; others (bf16, fp16) and non-CPU tensors go through torch.sort
_NUMPY_DTYPES = (torch.float32, torch.float64)


def sort_descending(values: Tensor, largest: int | None = None) -> Tensor:
    """`torch.sort(values, dim=-1, descending=True).values`, differentiable, faster on CPU; with `largest`, only
    the first `largest` of each row (`torch.topk(values, largest).values`).

    Without gradient, numpy sorts the values themselves; with gradient, numpy's argsort gives the permutation and
    `torch.gather` applies its first `largest` entries, so the backward scatters the gradient along it as
    `torch.sort`'s does (and only to the values kept).
    """
    if values.device.type != 'cpu' or values.dtype not in _NUMPY_DTYPES or values.dim() == 0:
        ordered = torch.sort(values, dim=-1, descending=True).values
        return ordered if largest is None else ordered[..., :largest]
    negated = np.negative(values.detach().numpy())        # ascending order of -x is descending order of x
    if not values.requires_grad:
        return torch.from_numpy(np.negative(np.sort(negated, axis=-1)[..., :largest]))
    order = torch.from_numpy(np.argsort(negated, axis=-1)[..., :largest])
    return torch.gather(values, -1, order)
