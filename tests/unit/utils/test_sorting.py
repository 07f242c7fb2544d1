"""sort_descending: torch.sort's values and gradient, through numpy's sort."""
from __future__ import annotations

import pytest
import torch

from openpoints_dd.utils.sorting import sort_descending


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_the_same_values_as_torch_sort_with_and_without_gradient(dtype):
    torch.manual_seed(0)
    values = torch.randn(3, 5, 257, dtype=dtype)
    values[0, 0, :10] = 0.5                                                          # ties
    expected = torch.sort(values, dim=-1, descending=True).values
    assert torch.equal(sort_descending(values), expected)
    assert torch.equal(sort_descending(values.requires_grad_()), expected)
    strided = values.detach().transpose(1, 2)                                        # a non-contiguous view
    assert torch.equal(sort_descending(strided), torch.sort(strided, dim=-1, descending=True).values)


def test_the_same_gradient_as_torch_sort():
    """Without ties the permutation is unique, so the backward is torch.sort's exactly, first and second order."""
    torch.manual_seed(1)
    values = torch.randn(4, 64, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 64, dtype=torch.float64)
    grads = []
    for sort in (sort_descending, lambda v: torch.sort(v, dim=-1, descending=True).values):
        first, = torch.autograd.grad((sort(values * values) * weights).sum(), values, create_graph=True)
        second, = torch.autograd.grad(first.square().sum(), values)
        grads.append((first.detach(), second))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=0)


def test_other_dtypes_go_through_torch_sort():
    values = torch.randn(2, 33).to(torch.bfloat16)
    assert torch.equal(sort_descending(values), torch.sort(values, dim=-1, descending=True).values)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
def test_largest_keeps_the_first_values_and_their_gradient_as_topk(dtype):
    """`largest` = K gives torch.topk's K values, largest first, and its backward reaches only the values kept."""
    torch.manual_seed(2)
    values = torch.randn(3, 4, 50, dtype=torch.float64).to(dtype).requires_grad_()
    weights = torch.randn(3, 4, 7, dtype=torch.float64).to(dtype)
    kept = sort_descending(values, largest=7)
    expected = torch.topk(values, 7, dim=-1).values
    assert kept.shape == (3, 4, 7) and torch.equal(kept, expected)
    assert torch.equal(sort_descending(values.detach(), largest=7), expected.detach())
    (grad,) = torch.autograd.grad((kept * weights).sum(), values)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), values)
    assert torch.equal(grad, expected_grad) and (grad != 0).sum() == 3 * 4 * 7
