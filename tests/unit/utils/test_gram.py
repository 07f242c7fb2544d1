import pytest
import torch

from openpoints_dd.utils.gram import Gram


@pytest.mark.parametrize('over_rows', [True, False])
def test_gram_equals_the_plain_product_to_second_order(over_rows):
    """Its one-product backward is the gradient autograd takes through the product of x with itself, in both
    layouts, and is differentiable again."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 4, dtype=torch.float64, requires_grad=True)
    plain = x @ x.transpose(-1, -2) if over_rows else x.transpose(-1, -2) @ x
    assert torch.equal(Gram.apply(x, over_rows), plain)
    assert torch.autograd.gradcheck(lambda x: Gram.apply(x, over_rows), (x,))
    assert torch.autograd.gradgradcheck(lambda x: Gram.apply(x, over_rows), (x,))
