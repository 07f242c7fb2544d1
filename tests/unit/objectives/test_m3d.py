"""M3D: FPS partitions, uniformity weights, zero on identical sets, invariance to point order."""
import pytest
import torch

from openpoints_dd.models import DistillPointNet
from openpoints_dd.objectives import M3D, fps_partitions, uniformity
from openpoints_dd.registry import build_objective


def test_partitions_are_disjoint_subsets_of_each_cloud_the_first_is_furthest_point_sampled():
    torch.manual_seed(0)
    clouds = torch.randn(3, 50, 3)
    parts = fps_partitions(clouds, 4, 12)
    assert parts.shape == (4, 3, 12, 3)
    for b in range(3):
        taken = parts[:, b].reshape(-1, 3)
        matches = (taken.unsqueeze(1) == clouds[b].unsqueeze(0)).all(-1)          # (48, 50)
        assert (matches.sum(1) == 1).all() and (matches.sum(0) <= 1).all()       # every point once, from the cloud
    from openpoints_dd.compat.point_ops import furthest_point_sample
    first = clouds.gather(1, furthest_point_sample(clouds, 12).long().unsqueeze(-1).expand(-1, -1, 3))
    torch.testing.assert_close(parts[0], first)
    with pytest.raises(ValueError, match='need clouds of at least 48 points'):
        fps_partitions(torch.randn(2, 40, 3), 4, 12)


def test_uniformity_is_lower_for_a_grid_than_for_clustered_points():
    grid = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, 5)] * 3, indexing='ij'), -1).reshape(1, -1, 3)
    clustered = torch.cat([0.01 * torch.randn(1, 100, 3), 1 + 0.01 * torch.randn(1, 25, 3)], dim=1)
    assert uniformity(grid).item() < uniformity(clustered).item()


def test_partition_weights_sum_to_the_weight():
    torch.manual_seed(0)
    objective = M3D(partitions=3, points_per_partition=16, neighbours=8)
    real = torch.randn(5, 60, 3)
    weights = objective.partition_weights(real, fps_partitions(real, 3, 16))
    assert weights.shape == (3,) and weights.sum().item() == pytest.approx(0.8) and (weights > 0).all()


def test_m3d_is_zero_for_identical_sets_and_invariant_to_point_order():
    torch.manual_seed(0)
    backbone = DistillPointNet(num_classes=3, widths=(8, 16, 32)).requires_grad_(False)
    objective = build_objective({'NAME': 'M3D', 'partitions': 1, 'points_per_partition': 40, 'neighbours': 8})
    real = torch.randn(4, 40, 3)
    assert objective(backbone, real.clone(), real, 0).item() == pytest.approx(0.0, abs=1e-6)
    syn = torch.randn(2, 40, 3)
    loss = objective(backbone, syn, real, 0)
    shuffled = objective(backbone, syn[:, torch.randperm(40)], real[:, torch.randperm(40)], 0)
    assert loss.item() > 0 and shuffled.item() == pytest.approx(loss.item(), rel=1e-5)


def test_one_partition_of_every_point_is_the_whole_cloud_weighted_by_the_weight():
    """partitions 1 with points_per_partition = the real clouds' points skips the furthest point sampling and the
    uniformity: the loss is weight · MMD(real clouds, synthetic clouds) on sorted features, as written out here."""
    from openpoints_dd.objectives.m3d import sorted_features
    from openpoints_dd.objectives.sadm import rbf_mmd
    torch.manual_seed(0)
    backbone = DistillPointNet(num_classes=3, widths=(8, 16, 32)).double().requires_grad_(False)
    objective = M3D(partitions=1, points_per_partition=40, neighbours=8, weight=0.7)
    real = torch.randn(4, 40, 3, dtype=torch.float64)
    syn = torch.randn(2, 40, 3, dtype=torch.float64)
    expected = objective.scale * 0.7 * rbf_mmd(sorted_features(backbone, real), sorted_features(backbone, syn),
                                               objective.bandwidth_multipliers)
    torch.testing.assert_close(objective(backbone, syn, real, 0), expected, rtol=1e-10, atol=1e-12)


def test_every_layer_m3d_is_the_mmd_of_every_layers_sorted_features():
    """layers: every describes a cloud by the sorted |values| of every point-wise map, concatenated; written out
    with torch.sort here. Identical sets still give zero and the point order still does not matter."""
    from openpoints_dd.objectives.sadm import rbf_mmd
    torch.manual_seed(0)
    backbone = DistillPointNet(num_classes=3, widths=(8, 16, 32)).double().requires_grad_(False)
    objective = M3D(partitions=1, points_per_partition=40, neighbours=8, layers='every')
    real = torch.randn(4, 40, 3, dtype=torch.float64)
    syn = torch.randn(2, 40, 3, dtype=torch.float64)

    def described(clouds):
        maps = backbone.point_features(clouds, every_layer=True).abs()                      # (B, N, 56)
        return torch.sort(maps, dim=1, descending=True).values.transpose(1, 2).flatten(1)

    expected = objective.scale * objective.weight * rbf_mmd(described(real), described(syn),
                                                            objective.bandwidth_multipliers)
    loss = objective(backbone, syn, real, 0)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    last_only = M3D(partitions=1, points_per_partition=40, neighbours=8)(backbone, syn, real, 0)
    assert abs(loss.item() - last_only.item()) > 1e-6                                  # the hidden maps count
    assert objective(backbone, real.clone(), real, 0).item() == pytest.approx(0.0, abs=1e-10)
    shuffled = objective(backbone, syn[:, torch.randperm(40)], real[:, torch.randperm(40)], 0)
    assert shuffled.item() == pytest.approx(loss.item(), rel=1e-9)


def test_partition_mmds_from_one_gram_equal_one_mmd_per_partition():
    """The synthetic clouds' distances computed once for all partitions: each partition's MMD and its gradient
    are those of `rbf_mmd` on that partition alone, in float64."""
    from openpoints_dd.objectives.m3d import partition_mmds
    from openpoints_dd.objectives.sadm import rbf_mmd
    torch.manual_seed(0)
    real = torch.randn(3, 2, 4, 50, dtype=torch.float64) + 5     # far from the origin, as sorted feature maps are
    syn = (torch.randn(2, 6, 50, dtype=torch.float64) + 5).requires_grad_(True)
    multipliers = (0.5, 1.0, 2.0)
    ours = partition_mmds(real, syn, multipliers)
    reference = torch.stack([rbf_mmd(real[s], syn, multipliers) for s in range(3)], dim=1)
    assert ours.shape == (2, 3)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    weights = torch.rand(2, 3, dtype=torch.float64)
    (grad,) = torch.autograd.grad((weights * ours).sum(), syn)
    (expected,) = torch.autograd.grad((weights * reference).sum(), syn)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


def test_m3d_reaches_the_synthetic_points_and_batches_classes_exactly():
    torch.manual_seed(0)
    backbone = DistillPointNet(num_classes=3, widths=(8, 16, 32)).double().requires_grad_(False)
    objective = M3D(partitions=2, points_per_partition=20, neighbours=8)
    real = torch.randn(3, 4, 48, 3, dtype=torch.float64)
    syn = torch.randn(3, 5, 20, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(3)
    one_at_a_time = torch.stack([objective(backbone, syn[g], real[g], g) for g in range(3)])
    batched = objective.match_classes(backbone, syn, real, labels)
    torch.testing.assert_close(batched, one_at_a_time, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(batched.sum(), syn)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bad_m3d_settings_are_clear_errors():
    with pytest.raises(ValueError, match='neighbours must be in'):
        M3D(points_per_partition=10, neighbours=16)
    with pytest.raises(ValueError, match='partitions must be >= 1'):
        M3D(partitions=0)
    with pytest.raises(ValueError, match="layers must be 'last' or 'every', got 'all'"):
        M3D(layers='all')


def test_the_cross_entropy_term_adds_each_class_mean_cross_entropy_from_the_sorted_pass(monkeypatch):
    """ce_weight adds weight · each class's mean cross-entropy of its synthetic clouds under the network, the
    logits of the max-pool of the map M3D sorts: the network's own forward (checked in float64), and no second
    pass over the points (the forward and `embed` are never called)."""
    torch.manual_seed(0)
    backbone = DistillPointNet(num_classes=3, widths=(8, 16, 32)).double().requires_grad_(False)
    plain = M3D(partitions=1, points_per_partition=40, neighbours=8)
    weighted = M3D(partitions=1, points_per_partition=40, neighbours=8, queue_size=1, ce_weight=0.5)
    real = torch.randn(2, 4, 40, 3, dtype=torch.float64)
    syn = torch.randn(2, 3, 40, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([2, 0])
    ce = torch.stack([torch.nn.functional.cross_entropy(backbone(syn[g]), labels[g].expand(3)) for g in range(2)])
    expected = plain.match_classes(backbone, syn, real, labels) + 0.5 * ce
    monkeypatch.setattr(backbone, 'forward', lambda *a: pytest.fail('a second pass over the points'))
    monkeypatch.setattr(backbone, 'embed', lambda *a: pytest.fail('a second pass over the points'))
    losses = weighted.match_classes(backbone, syn, real, labels)
    torch.testing.assert_close(losses, expected, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(losses.sum(), syn)
    (plain_grad,) = torch.autograd.grad(plain.match_classes(backbone, syn, real, labels).sum(), syn)
    assert not torch.allclose(grad, plain_grad)                                        # the term moves the points
    assert weighted.backbone_methods() == ('point_features', 'classify')
    assert plain.backbone_methods() == ('point_features',)


def test_bad_cross_entropy_settings_are_clear_errors():
    with pytest.raises(ValueError, match='ce_weight must be >= 0'):
        M3D(queue_size=1, ce_weight=-1.0)
    with pytest.raises(ValueError, match='needs queue_size > 0'):   # a random head's cross-entropy is noise
        M3D(ce_weight=0.5)
    with pytest.raises(ValueError, match='with layers: every'):
        M3D(queue_size=1, ce_weight=0.5, layers='every')


def assert_m3d_is_the_written_out_mmd(objective, backbone, described, real, syn):
    """The loss and its gradient equal weight · scale · rbf_mmd of the descriptors `described` gives (float64);
    zero on identical sets, blind to point order. Returns the loss."""
    from openpoints_dd.objectives.sadm import rbf_mmd
    expected = objective.scale * objective.weight * rbf_mmd(described(real), described(syn),
                                                            objective.bandwidth_multipliers)
    loss = objective(backbone, syn, real, 0)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(loss, syn)
    (expected_grad,) = torch.autograd.grad(expected, syn)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-12)
    assert objective(backbone, real.clone(), real, 0).item() == pytest.approx(0.0, abs=1e-10)
    points = real.shape[1]
    shuffled = objective(backbone, syn[:, torch.randperm(points)], real[:, torch.randperm(points)], 0)
    assert shuffled.item() == pytest.approx(loss.item(), rel=1e-9)
    return loss


def test_signed_m3d_sorts_each_channel_values_with_their_sign():
    """absolute: false describes a cloud by each channel's sorted signed values (written out with torch.sort here):
    still zero on identical sets and blind to point order, and unlike the absolute values it tells a map from its
    negation."""
    torch.manual_seed(0)
    backbone = DistillPointNet(num_classes=3, widths=(8, 16, 32)).double().requires_grad_(False)
    objective = M3D(partitions=1, points_per_partition=40, neighbours=8, absolute=False)
    real = torch.randn(4, 40, 3, dtype=torch.float64)
    syn = torch.randn(2, 40, 3, dtype=torch.float64, requires_grad=True)

    def described(clouds):
        maps = backbone.point_features(clouds)                                              # (B, N, 32)
        return torch.sort(maps, dim=1, descending=True).values.transpose(1, 2).flatten(1)

    assert_m3d_is_the_written_out_mmd(objective, backbone, described, real, syn)
    from openpoints_dd.objectives.m3d import sorted_channels
    feature_map = torch.randn(2, 5, 7, dtype=torch.float64)
    assert torch.equal(sorted_channels(feature_map), sorted_channels(-feature_map))
    assert not torch.equal(sorted_channels(feature_map, absolute=False), sorted_channels(-feature_map, absolute=False))
    with pytest.raises(ValueError, match='absolute must be true or false'):
        M3D(absolute='false')


def test_top_points_describes_each_channel_by_its_largest_values():
    """top_points: K keeps each channel's K largest sorted values (written out with torch.topk here): the same MMD
    on (B, C·K) descriptors, zero on identical sets, blind to point order; it ignores what lies below them."""
    torch.manual_seed(0)
    backbone = DistillPointNet(num_classes=3, widths=(8, 16, 32)).double().requires_grad_(False)
    objective = M3D(partitions=1, points_per_partition=40, neighbours=8, absolute=False, top_points=5)
    real = torch.randn(4, 40, 3, dtype=torch.float64)
    syn = torch.randn(2, 40, 3, dtype=torch.float64, requires_grad=True)

    def described(clouds):
        maps = backbone.point_features(clouds, channels_first=True)                         # (B, 32, N)
        return torch.topk(maps, 5, dim=-1).values.flatten(1)

    loss = assert_m3d_is_the_written_out_mmd(objective, backbone, described, real, syn)
    every = M3D(partitions=1, points_per_partition=40, neighbours=8, absolute=False)
    assert loss.item() != pytest.approx(every(backbone, syn, real, 0).item(), rel=1e-3)


@pytest.mark.parametrize('top_points, message', [
    (0, r'M3D: top_points must be >= 1, an integer; got 0'),
    (2.5, r'M3D: top_points must be >= 1, an integer; got 2.5'),
    (True, r'M3D: top_points must be >= 1, an integer; got True'),
    ('8', r"M3D: top_points must be >= 1, an integer; got '8'"),
    (41, r'M3D: top_points must be at most points_per_partition \(40\), the values each channel has; got 41'),
])
def test_top_points_outside_one_to_the_partition_points_are_refused(top_points, message):
    with pytest.raises(ValueError, match=message):
        M3D(partitions=1, points_per_partition=40, neighbours=8, top_points=top_points)
    M3D(partitions=1, points_per_partition=40, neighbours=8, top_points=40)


@pytest.mark.parametrize('settings, message', [
    ({'weight': -0.8}, 'weight must be > 0, a finite number; got -0.8'),
    ({'weight': 0.0}, 'weight must be > 0, a finite number; got 0.0'),
    ({'weight': float('nan')}, 'weight must be > 0, a finite number; got nan'),
    ({'scale': -0.1}, 'scale must be > 0, a finite number; got -0.1'),
    ({'scale': float('inf')}, 'scale must be > 0, a finite number; got inf'),
    ({'sharpness': -1000.0}, 'sharpness must be >= 0, a finite number; got -1000.0'),
    ({'sharpness': float('nan')}, 'sharpness must be >= 0, a finite number; got nan'),
    ({'bandwidth_multipliers': [1.0, float('inf')]}, 'bandwidth_multipliers must be finite positive numbers'),
    ({'bandwidth_multipliers': [float('nan')]}, 'bandwidth_multipliers must be finite positive numbers'),
], ids=['negative-weight', 'zero-weight', 'nan-weight', 'negative-scale', 'inf-scale', 'negative-sharpness',
        'nan-sharpness', 'inf-bandwidth', 'nan-bandwidth'])
def test_m3d_numbers_outside_their_ranges_are_refused(settings, message):
    """weight and scale multiply the loss (a negative one would make the run maximise the MMD, without an error);
    sharpness is the rate of the uniformity weighting exp(-sharpness · d²) (0: equal weights)."""
    import re
    with pytest.raises(ValueError, match='M3D: ' + re.escape(message)):
        M3D(**settings)
    M3D(sharpness=0.0)                                                   # every partition weighted alike


def test_clouds_too_small_for_the_partitions_are_refused_naming_the_keys():
    """The sizes were refused only at the first matching step (the real ones inside `fps_partitions`, after a
    coreset start's selection network had trained; synthetic clouds of fewer than P points as a size mismatch in
    torch.cat): `check_cloud_sizes`, which the engine calls at construction, refuses them with the keys to change."""
    with pytest.raises(ValueError, match='objective.partitions 4 x objective.points_per_partition 255 need real '
                                         'clouds of at least 1020 points; distill.num_points is 512'):
        M3D().check_cloud_sizes(512, 512)
    objective = M3D(partitions=2, points_per_partition=32, neighbours=8)
    with pytest.raises(ValueError, match=r'distill.synthesizer makes training clouds of 16 points, fewer than '
                                         r'objective.points_per_partition \(32\)'):
        objective.check_cloud_sizes(64, 16)
    objective.check_cloud_sizes(64, 32)
    objective.check_cloud_sizes(64, 64)
