import pytest
import torch

from openpoints_dd.objectives import GradientMatching, Objective, gradient_distance
from openpoints_dd.registry import OBJECTIVES, build_objective


def test_layerwise_cosine_hand_computed():
    # weight rows: [1,0] vs [0,1] -> cos 0 -> 1; [1,1] vs [2,2] -> cos 1 -> 0; bias ignored
    syn = [torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([5.0, -5.0])]
    real = [torch.tensor([[0.0, 1.0], [2.0, 2.0]]), torch.tensor([1.0, 1.0])]
    assert gradient_distance(syn, real).item() == pytest.approx(1.0, abs=1e-5)
    # opposite rows -> 2 each
    assert gradient_distance([-real[0], real[1]], real).item() == pytest.approx(4.0, abs=1e-5)


def test_mse_and_global_cosine_hand_computed():
    syn = [torch.tensor([[1.0, 2.0]]), torch.tensor([1.0])]
    real = [torch.tensor([[0.0, 2.0]]), torch.tensor([3.0])]
    assert gradient_distance(syn, real, 'mse').item() == pytest.approx(1 + 0 + 4)
    expected = 1 - (0 + 4 + 3) / ((1 + 4 + 1) ** 0.5 * (4 + 9) ** 0.5 + 1e-6)
    assert gradient_distance(syn, real, 'cos').item() == pytest.approx(expected, abs=1e-6)


# per-class classification objectives (trajectory matching compares all classes at once; part matching needs parts)
PER_CLASS = sorted(name for name, cls in OBJECTIVES.module_dict.items()
                   if issubclass(cls, Objective) and cls.task == 'classification')


# settings that fit the tests' tiny clouds (64 points), where an objective's defaults need more
TINY_SETTINGS = {'M3D': {'partitions': 2, 'points_per_partition': 16, 'neighbours': 8}}


def _tiny(name: str) -> dict:
    return {'NAME': name, **TINY_SETTINGS.get(name, {})}


def test_every_objective_is_covered_by_a_generic_test():
    assert {'GradientMatching', 'DistributionMatching', 'SADM', 'M3D'} <= set(PER_CLASS)
    assert set(OBJECTIVES.module_dict) - set(PER_CLASS) == {'TrajectoryMatching', 'PartGradientMatching'}


@pytest.mark.parametrize('name', PER_CLASS)
def test_objective_basic_properties(name, tiny_clouds, tiny_backbone):
    objective = build_objective(_tiny(name))
    real = tiny_clouds.pos[tiny_clouds.y == 1]
    syn = (real[:2] + 0.05 * torch.randn_like(real[:2])).requires_grad_(True)
    loss = objective(tiny_backbone, syn, real, 1)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0, f'{name}: no gradient reached the points'


@pytest.mark.parametrize('distance', ['layerwise_cosine', 'mse', 'cos'])
def test_gradient_matching_zero_for_identical_batches(distance, tiny_clouds, tiny_backbone):
    objective = build_objective({'NAME': 'GradientMatching', 'distance': distance})
    real = tiny_clouds.pos[tiny_clouds.y == 0]
    # not exactly 0: DC's eps (1e-6 on the product of row norms) weighs on rows with tiny gradients
    assert objective(tiny_backbone, real.clone().requires_grad_(True), real, 0).item() == pytest.approx(0, abs=5e-3)


def test_bad_distance_is_a_clear_error():
    with pytest.raises(ValueError, match='distance must be one of'):
        build_objective({'NAME': 'GradientMatching', 'distance': 'l1'})
    with pytest.raises(KeyError, match='Registered objectives'):
        build_objective({'NAME': 'gradient_matching'})


@pytest.mark.parametrize('autocast, expected', [(None, [False, False]), ('real', [True, False]), ('all', [True, True])])
def test_autocast_covers_the_passes_it_names(autocast, expected, tiny_clouds, tiny_backbone):
    seen = []
    tiny_backbone.register_forward_pre_hook(lambda module, args: seen.append(torch.is_autocast_enabled('cpu')))
    real = tiny_clouds.pos[tiny_clouds.y == 1]
    syn = real[:2].clone().requires_grad_(True)
    loss = build_objective({'NAME': 'GradientMatching', 'autocast': autocast})(tiny_backbone, syn, real, 1)
    loss.backward()
    assert seen == expected                        # the real pass first, then the synthetic one
    assert loss.dtype == syn.grad.dtype == torch.float32 and not torch.is_autocast_enabled('cpu')


@pytest.mark.parametrize('autocast', ['real', 'all'])
def test_bf16_autocast_stays_close_to_fp32(autocast, tiny_clouds):
    from openpoints_dd.models import DistillPointNet
    torch.manual_seed(0)
    backbone = DistillPointNet(num_classes=3)
    real = torch.stack([tiny_clouds.pos[tiny_clouds.y == c][:6] for c in range(3)])
    syn = (real[:, :2] + 0.05 * torch.randn_like(real[:, :2])).requires_grad_(True)
    fp32 = build_objective({'NAME': 'GradientMatching'})
    reference = torch.stack([fp32(backbone, syn[c], real[c], c) for c in range(3)])
    (reference_grad,) = torch.autograd.grad(reference.sum(), syn)
    objective = build_objective({'NAME': 'GradientMatching', 'autocast': autocast})
    per_class = torch.stack([objective(backbone, syn[c], real[c], c) for c in range(3)])
    batched = objective.match_classes(backbone, syn, real, torch.arange(3))   # all classes in one pass
    for losses in (per_class, batched):
        (grad,) = torch.autograd.grad(losses.sum(), syn)
        assert losses.dtype == grad.dtype == torch.float32
        assert torch.allclose(losses, reference, rtol=0.05)
        assert torch.nn.functional.cosine_similarity(grad.flatten(), reference_grad.flatten(), dim=0) > 0.9


def test_bad_autocast_is_a_clear_error():
    with pytest.raises(ValueError, match='autocast must be one of'):
        build_objective({'NAME': 'GradientMatching', 'autocast': 'bf16'})


def test_bf16_autocast_keeps_degenerate_clouds_finite():
    # synthetic clouds of two tight clusters (what a young generator can emit): their features' variances are
    # differences of large, nearly equal terms, which bf16 rounded below zero (NaN under rsqrt, as a DD3D run
    # at 1 cloud per class did) before the statistics were kept fp32
    from openpoints_dd.models import DistillPointNet
    torch.manual_seed(0)
    backbone = DistillPointNet(num_classes=3)
    syn = torch.cat([1e-3 * torch.randn(2, 250, 3), 1 + 1e-3 * torch.randn(2, 6, 3)], dim=1).requires_grad_(True)
    real = torch.randn(8, 256, 3)
    loss = build_objective({'NAME': 'GradientMatching', 'autocast': 'all'})(backbone, syn, real, 0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(syn.grad).all()


def _float64_problem(widths=(16, 32, 64), classes=4, real_per_class=5, cpc=2, points=64):
    from openpoints_dd.models import DistillPointNet
    torch.manual_seed(0)
    backbone = DistillPointNet(num_classes=5, widths=widths).double()
    real = torch.randn(classes, real_per_class, points, 3, dtype=torch.float64)
    syn = torch.randn(classes, cpc, points, 3, dtype=torch.float64, requires_grad=True)
    return backbone, real, syn, torch.tensor([0, 3, 1, 4][:classes])


@pytest.mark.parametrize('distance', ['layerwise_cosine', 'mse', 'cos'])
@pytest.mark.parametrize('widths', [(16, 32, 64), (32,)])
def test_all_classes_in_one_pass_equal_the_per_class_loop(distance, widths):
    """First order (the distances) and second order (their gradient w.r.t. the synthetic points), in float64."""
    backbone, real, syn, labels = _float64_problem(widths)
    objective = build_objective({'NAME': 'GradientMatching', 'distance': distance})
    loop = torch.stack([objective(backbone, syn[g], real[g], int(labels[g])) for g in range(len(labels))])
    batched = objective.match_classes(backbone, syn, real, labels)
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-10)
    (loop_second,), (batched_second,) = (torch.autograd.grad(x.sum(), syn) for x in (loop, batched))
    torch.testing.assert_close(batched_second, loop_second, rtol=1e-9, atol=1e-10)
    assert loop_second.abs().sum() > 0


def test_explicit_class_gradients_equal_autograd_per_class():
    backbone, real, _, labels = _float64_problem()
    params = list(backbone.parameters())
    with torch.no_grad():
        batched = backbone.class_gradients(real, labels)
    for g, label in enumerate(labels):
        loss = torch.nn.functional.cross_entropy(backbone(real[g]), label.expand(real.shape[1]))
        expected = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
        for name, got, want in zip([n for n, _ in backbone.named_parameters()], batched, expected):
            torch.testing.assert_close(got[g], want, rtol=1e-10, atol=1e-12, msg=name)


def test_grouped_copies_equal_the_explicit_backward():
    """The generic route (per-class weight copies through `grouped_forward`) gives the explicit one's result."""
    backbone, real, syn, labels = _float64_problem()
    objective = build_objective({'NAME': 'GradientMatching'})
    for pos, synthetic in ((real, False), (syn, True)):
        explicit = objective.class_gradients(backbone, pos, labels, synthetic)
        generic = GradientMatching.class_gradients(objective, _WithoutExplicitBackward(backbone), pos, labels, synthetic)
        for a, b in zip(explicit, generic):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_synthetic_gradient_is_second_order():
    """The matching loss's gradient w.r.t. the points is the derivative of the distance, checked against central
    finite differences: a first-order stand-in (gradients detached from the points) would give zero."""
    backbone, real, syn, labels = _float64_problem(widths=(8, 16), classes=2, real_per_class=3, cpc=1, points=32)
    objective = build_objective({'NAME': 'GradientMatching'})
    (grad,) = torch.autograd.grad(objective.match_classes(backbone, syn, real, labels).sum(), syn)
    direction = torch.randn_like(syn)
    step = 1e-6
    with torch.no_grad():
        plus = objective.match_classes(backbone, syn + step * direction, real, labels).sum()
        minus = objective.match_classes(backbone, syn - step * direction, real, labels).sum()
    assert (grad * direction).sum().item() == pytest.approx(((plus - minus) / (2 * step)).item(), rel=1e-5)


class _WithoutExplicitBackward(torch.nn.Module):
    """The same network without `class_gradients`: gradient matching then takes its generic grouped route."""

    per_sample_separable = True

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def grouped_forward(self, points, params):
        return self.backbone.grouped_forward(points, {k.removeprefix('backbone.'): v for k, v in params.items()})


@pytest.mark.parametrize('name', PER_CLASS)
def test_every_objective_batches_classes_exactly(name):
    """match_classes over all classes at once equals one class at a time, values and gradients (float64)."""
    backbone, real, syn, labels = _float64_problem(widths=(16, 32, 64), classes=3)
    objective = build_objective(_tiny(name))
    one_at_a_time = torch.stack([objective(backbone, syn[g], real[g], int(labels[g])) for g in range(len(labels))])
    batched = objective.match_classes(backbone, syn, real, labels)
    torch.testing.assert_close(batched, one_at_a_time, rtol=1e-10, atol=1e-12)
    (expected,), (got,) = (torch.autograd.grad(x.sum(), syn) for x in (one_at_a_time, batched))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert expected.abs().sum() > 0
