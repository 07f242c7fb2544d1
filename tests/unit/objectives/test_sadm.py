"""SADM: sorted per-channel feature maps, L_alpha (Gaussian or linear) + L_beta (top-1 RBF MMD)."""
from __future__ import annotations

import pytest
import torch

from openpoints_dd.objectives import SADM, rbf_mmd, sadm_loss, sort_point_features
from openpoints_dd.registry import build_objective

KERNELS = ['gaussian', 'linear']


@pytest.mark.parametrize('alpha_kernel', KERNELS)
def test_invariant_to_the_order_of_a_clouds_points(alpha_kernel, tiny_backbone, tiny_clouds):
    objective = build_objective({'NAME': 'SADM', 'alpha_kernel': alpha_kernel, 'alpha_weight': 1.0, 'beta_weight': 1.0})
    real = tiny_clouds.pos[tiny_clouds.y == 0]
    syn = tiny_clouds.pos[tiny_clouds.y == 1][:2]
    loss = objective(tiny_backbone, syn, real, 0)
    generator = torch.Generator().manual_seed(3)
    shuffled_syn = torch.stack([cloud[torch.randperm(cloud.shape[0], generator=generator)] for cloud in syn])
    shuffled_real = torch.stack([cloud[torch.randperm(cloud.shape[0], generator=generator)] for cloud in real])
    assert loss.item() > 0
    torch.testing.assert_close(objective(tiny_backbone, shuffled_syn, shuffled_real, 0), loss, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('alpha_kernel', KERNELS)
def test_invariant_to_which_point_holds_which_value(alpha_kernel):
    syn, real = torch.randn(2, 16, 6), torch.randn(5, 16, 6)
    loss = sadm_loss(syn, real, alpha_kernel=alpha_kernel, alpha_weight=1.0, beta_weight=1.0)
    # every channel of every cloud permuted independently over the points: not a point permutation
    order = torch.rand(2, 16, 6).argsort(dim=1)
    scrambled = syn.gather(1, order)
    assert not torch.equal(scrambled, syn)
    torch.testing.assert_close(sadm_loss(scrambled, real, alpha_kernel=alpha_kernel, alpha_weight=1.0, beta_weight=1.0), loss)


@pytest.mark.parametrize('alpha_kernel', KERNELS)
def test_zero_for_identical_sets_and_gradient_reaches_points(alpha_kernel, tiny_backbone, tiny_clouds):
    objective = SADM(alpha_kernel=alpha_kernel)
    real = tiny_clouds.pos[tiny_clouds.y == 2]
    assert objective(tiny_backbone, real.clone(), real, 2).item() == pytest.approx(0.0, abs=1e-7)
    assert objective.trains_backbone is False
    syn = (real[:1] + 0.05 * torch.randn_like(real[:1])).requires_grad_(True)
    objective(tiny_backbone, syn, real, 2).backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0


def test_sorting_and_linear_alpha_hand_computed():
    features = torch.tensor([[[1.0, 5.0], [3.0, 4.0], [2.0, 6.0]]])          # (1, N=3, C=2)
    assert sort_point_features(features).tolist() == [[[3.0, 6.0], [2.0, 5.0], [1.0, 4.0]]]
    syn = torch.zeros(1, 3, 2)
    # sorted real means (3, 6), (2, 5), (1, 4) vs 0: per rank 45, 29, 17 -> mean 91 / 3; beta off
    loss = sadm_loss(syn, features, alpha_kernel='linear', alpha_weight=1.0, beta_weight=0.0)
    assert loss.item() == pytest.approx(91 / 3)
    assert sadm_loss(syn, features, alpha_kernel='linear', alpha_weight=0.5, beta_weight=0.0).item() == pytest.approx(91 / 6)


def test_rbf_mmd_hand_computed():
    # x = {0}, y = {1} in 1-D, one kernel: bandwidth = mean off-diagonal squared distance = 1;
    # MMD = 1 + 1 - 2 exp(-1)
    x, y = torch.zeros(1, 1), torch.ones(1, 1)
    assert rbf_mmd(x, y, [1.0]).item() == pytest.approx(2 - 2 * torch.exp(torch.tensor(-1.0)).item())
    assert rbf_mmd(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_gaussian_alpha_is_the_mmd_of_sorted_maps_and_beta_of_top_values():
    syn, real = torch.randn(2, 8, 4), torch.randn(3, 8, 4)
    sorted_syn, sorted_real = sort_point_features(syn), sort_point_features(real)
    expected = 0.3 * rbf_mmd(sorted_real.flatten(1), sorted_syn.flatten(1)) + 0.7 * rbf_mmd(real.amax(1), syn.amax(1))
    torch.testing.assert_close(sadm_loss(syn, real, alpha_weight=0.3, beta_weight=0.7), expected)


def test_bad_settings_and_shapes_are_clear_errors():
    with pytest.raises(ValueError, match='alpha_kernel must be one of'):
        build_objective({'NAME': 'SADM', 'alpha_kernel': 'cosine'})
    with pytest.raises(ValueError, match='weights must be >= 0'):
        SADM(alpha_weight=-1)
    with pytest.raises(TypeError, match='SADM'):
        build_objective({'NAME': 'SADM', 'alpha': 1.0})
    with pytest.raises(ValueError, match='same N and C'):
        sadm_loss(torch.randn(1, 8, 4), torch.randn(2, 16, 4))
    text = repr(SADM(alpha_kernel='linear', alpha_weight=0.2))
    assert "alpha_kernel='linear'" in text and 'alpha_weight=0.2' in text and 'beta_weight=0.001' in text


def test_pairwise_squared_distances_of_long_offset_vectors_match_float64():
    """Sorted feature maps are long vectors far from the origin: the centred Gram form stays accurate there."""
    from openpoints_dd.objectives.sadm import pairwise_squared_distances
    torch.manual_seed(0)
    points = 50 + torch.rand(3, 12, 200_000)                                       # (G, n, D)
    exact = torch.cdist(points.double(), points.double()).square()
    ours = pairwise_squared_distances(points)
    assert ours.shape == (3, 12, 12)
    assert ((ours.double() - exact).abs().max() / exact.max()).item() < 1e-5   # the diagonal (0) included
