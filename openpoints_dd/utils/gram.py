"""The Gram matrix of a batch of vectors with a one-product backward (PointNet's covariances, SADM/M3D distances)."""
from __future__ import annotations

import torch
from torch import Tensor


class Gram(torch.autograd.Function):
    """`Gram.apply(x, over_rows)`: x (..., n, d) -> x xᵀ (..., n, n) with over_rows, xᵀx (..., d, d) without.

    Autograd sees x twice in a product of x with itself: its backward forms both operands' gradients (two products
    the size of x) and adds one, transposed, to the other (a strided pass). The sum is (g + gᵀ) applied to x once:
    one product. The backward is made of differentiable ops, so second order works.
    """

    @staticmethod
    def forward(ctx, x: Tensor, over_rows: bool) -> Tensor:
        ctx.save_for_backward(x)
        ctx.over_rows = over_rows
        return torch.matmul(x, x.transpose(-1, -2)) if over_rows else torch.matmul(x.transpose(-1, -2), x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        x, = ctx.saved_tensors
        symmetric = grad + grad.transpose(-1, -2)
        return (torch.matmul(symmetric, x) if ctx.over_rows else torch.matmul(x, symmetric)), None
