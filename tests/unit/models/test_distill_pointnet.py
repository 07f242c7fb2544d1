"""The pooled last layer of DistillPointNet equals the plain network, to second order; its bf16 search option."""
import pytest
import torch
import torch.nn.functional as F

from openpoints_dd.models import DistillPointNet
from openpoints_dd.models.pointnet import ProductsAtMaxPoints, centred_moments, max_point_search, projected_variance


def _naive_logits(model: DistillPointNet, pos: torch.Tensor) -> torch.Tensor:
    return model.head(model.point_features(pos).amax(dim=1))


def _matching_penalty(logits_fn, model, pos, target):
    """A function of the parameter gradients, differentiated w.r.t. the points: what gradient matching does."""
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(logits_fn(pos), target), params, create_graph=True, allow_unused=True,
                                materialize_grads=True)
    penalty = sum((g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).view_as(g)).sum() ** 2 for g in grads)
    return grads, torch.autograd.grad(penalty, pos)[0]


@pytest.mark.parametrize('clouds', [4, 40])   # variances row by row (4 < 16, 32 channels in) or by outer products
def test_pooled_layer_matches_the_plain_network_to_second_order(clouds):
    torch.manual_seed(0)
    model = DistillPointNet(num_classes=5, widths=(16, 32, 64)).double()
    pos = torch.randn(clouds, 64, 3, dtype=torch.float64, requires_grad=True)   # 64 points: the two-level search runs
    target = torch.arange(clouds) % 5
    torch.testing.assert_close(model(pos), _naive_logits(model, pos))
    fast_grads, fast_second = _matching_penalty(model, model, pos, target)
    naive_grads, naive_second = _matching_penalty(lambda p: _naive_logits(model, p), model, pos, target)
    for fast, naive in zip(fast_grads, naive_grads):
        torch.testing.assert_close(fast, naive)
    torch.testing.assert_close(fast_second, naive_second)
    assert fast_second.abs().sum() > 0


def test_projected_variance_equals_the_plain_quadratic_form_to_second_order():
    """The outer-product route (clouds >= input channels) against diag(W Cov Wᵀ) by einsum, through covariances of
    point maps, in float64."""
    torch.manual_seed(0)
    weight = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    h = torch.randn(5, 9, 4, dtype=torch.float64, requires_grad=True)          # 5 clouds, 4 channels

    def ours(weight, h):
        return projected_variance(weight, centred_moments(h)[2])

    def plain(weight, h):
        return torch.einsum('oc,bcd,od->bo', weight, centred_moments(h)[2], weight)

    torch.testing.assert_close(ours(weight, h), plain(weight, h))
    for a, b in zip(torch.autograd.grad(ours(weight, h).square().sum(), (weight, h)),
                    torch.autograd.grad(plain(weight, h).square().sum(), (weight, h))):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(ours, (weight, h)) and torch.autograd.gradgradcheck(ours, (weight, h))


def test_products_at_max_points_equal_the_gathered_rows_to_second_order():
    """The bagged backward (no (B, C_out, C_in) rows) against index_select-multiply-sum, in float64."""
    torch.manual_seed(0)
    rows = torch.randint(50, (4, 7))
    rows[0, :3] = 5                                   # one row the max of several channels: its gradient sums them
    h = torch.randn(50, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)

    def bagged(h, weight):
        return ProductsAtMaxPoints.apply(h, weight, rows, (h.detach()[rows] * weight.detach()).sum(-1))

    def gathered(h, weight):
        return (h[rows] * weight).sum(-1)
    torch.testing.assert_close(bagged(h, weight), gathered(h, weight))
    assert torch.autograd.gradcheck(bagged, (h, weight)) and torch.autograd.gradgradcheck(bagged, (h, weight))
    probe = torch.randn(4, 7, dtype=torch.float64)
    first = [torch.autograd.grad((fn(h, weight) * probe).sum(), (h, weight), create_graph=True)
             for fn in (bagged, gathered)]
    for a, b in zip(*first):
        torch.testing.assert_close(a, b)
    second = [torch.autograd.grad(sum((g ** 2).sum() for g in grads), (h, weight)) for grads in first]
    for a, b in zip(*second):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('widths', [(16, 32, 64), (64,)])
def test_fp32_embedding_is_translation_invariant_as_instance_norm_is(widths):
    """The pooled layer's covariance is E[h h^T] - mean mean^T: far-off clouds must not lose digits to it."""
    torch.manual_seed(0)
    model = DistillPointNet(num_classes=5, widths=widths)
    pos = torch.randn(4, 64, 3)
    reference = model.double()(pos.double())
    model.float()
    torch.testing.assert_close(model(pos + 1000.0).double(), reference, rtol=1e-4, atol=1e-4)


def test_bf16_argmax_search_stays_close_to_the_exact_layer():
    torch.manual_seed(0)
    exact = DistillPointNet(num_classes=10)
    fast = DistillPointNet(num_classes=10, argmax_dtype='bfloat16')
    fast.load_state_dict(exact.state_dict())
    pos = torch.randn(8, 512, 3)
    a, b = exact.embed(pos), fast.embed(pos)
    assert b.dtype == torch.float32
    # a different point may win a near-tie, but its value is within bf16 rounding of the max
    assert (a - b).abs().max() < 0.05 and (a - b).abs().mean() < 1e-3
    assert (a >= b - 1e-5).all()   # the exact search finds the max: a bf16 choice is never above it


def test_unknown_argmax_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match='argmax_dtype'):
        DistillPointNet(argmax_dtype='float16')


def test_max_point_search_takes_the_first_max_point_on_ties():
    torch.manual_seed(0)
    h, weight = torch.randint(0, 3, (6, 96, 4)).float(), torch.randint(-2, 3, (40, 4)).float()   # many ties
    products = torch.matmul(h, weight.t())
    index, values = max_point_search(h, weight)
    torch.testing.assert_close(index, products.argmax(dim=1), rtol=0, atol=0)
    torch.testing.assert_close(values, products.amax(dim=1), rtol=0, atol=0)


def test_chunked_max_point_search_equals_one_full_search():
    torch.manual_seed(0)
    h, weight = torch.randn(5, 64, 8), torch.randn(16, 8)
    full = torch.matmul(h, weight.t()).argmax(dim=1)
    for chunk_rows in (64, 128, 4096):   # 1 cloud, 2 clouds (the last chunk holds one), all at once
        torch.testing.assert_close(max_point_search(h, weight, chunk_rows=chunk_rows)[0], full, rtol=0, atol=0)


def test_channels_first_point_features_are_the_transposed_map_with_the_same_gradient():
    torch.manual_seed(0)
    model = DistillPointNet(num_classes=5, widths=(8, 16, 32)).double()
    pos = torch.randn(3, 50, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 50, 32, dtype=torch.float64)
    points_last = model.point_features(pos)
    channels_first = model.point_features(pos, channels_first=True)
    assert channels_first.shape == (3, 32, 50) and channels_first.is_contiguous()
    torch.testing.assert_close(channels_first, points_last.transpose(1, 2), rtol=1e-12, atol=1e-12)
    expected, = torch.autograd.grad((points_last * weights).sum(), pos)
    ours, = torch.autograd.grad((channels_first * weights.transpose(1, 2)).sum(), pos)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_every_layer_point_features_are_each_layers_normalised_map_before_its_relu():
    """The plain network written out with torch's instance_norm: layer l's map is IN(W_l h + b_l), h the previous
    map after its ReLU; `every_layer` concatenates them over the channels, in either layout, the last one equal to
    `point_features`."""
    torch.manual_seed(0)
    model = DistillPointNet(num_classes=5, widths=(8, 16, 32)).double()
    pos = torch.randn(3, 50, 3, dtype=torch.float64)
    h, maps = pos, []
    for layer in model.layers:
        normalised = F.instance_norm(F.linear(h, layer.weight, layer.bias).transpose(1, 2)).transpose(1, 2)
        maps.append(normalised)
        h = F.relu(normalised)
    expected = torch.cat(maps, dim=-1)
    ours = model.point_features(pos, every_layer=True)
    assert ours.shape == (3, 50, 8 + 16 + 32)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.point_features(pos, channels_first=True, every_layer=True),
                               expected.transpose(1, 2), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours[..., 24:], model.point_features(pos), rtol=1e-12, atol=1e-12)


def test_the_first_map_is_each_random_direction_standardised_its_spread_divided_out():
    """The first layer is InstanceNorm (no affine) of W x + b: channel o is the points' projection on W[o], centred
    (the bias cancels) and divided by its own standard deviation over the cloud. Its sorted values are the
    standardised shape of the points' distribution along that direction, not their spread: stretching the cloud 3x
    along W[o] leaves channel o as it was (eps 0 here), while the other channels change."""
    torch.manual_seed(0)
    model = DistillPointNet(num_classes=5, widths=(8, 16, 32), eps=0.0).double()
    pos = torch.randn(2, 50, 3, dtype=torch.float64) * torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64)
    first = model.point_features(pos, every_layer=True)[..., :8]
    torch.testing.assert_close(first.mean(dim=1), torch.zeros(2, 8, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(first.var(dim=1, unbiased=False), torch.ones(2, 8, dtype=torch.float64))
    direction = F.normalize(model.layers[0].weight[0].detach(), dim=0)
    stretched = pos + 2 * (pos @ direction).unsqueeze(-1) * direction                 # 3x along W[0]
    assert (stretched @ direction).std(dim=1).div((pos @ direction).std(dim=1)).allclose(
        torch.tensor(3.0, dtype=torch.float64))
    after = model.point_features(stretched, every_layer=True)[..., :8]
    torch.testing.assert_close(after[..., 0], first[..., 0], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(after[..., 1:], first[..., 1:], atol=1e-3)
