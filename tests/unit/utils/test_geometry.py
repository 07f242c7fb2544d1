"""Tests for openpoints_dd.utils.geometry: normalisation, subsampling, rotations and augmentations."""
from __future__ import annotations

import math

import pytest
import torch

from openpoints_dd.utils import (UP_AXIS, euler_to_matrix, jitter, normalize_to_unit_sphere,
                                 random_rotation_matrices, random_scale, random_z_rotation_matrices,
                                 rotate_perturbation, subsample_points)
from openpoints_dd.utils.geometry import _euler_to_matrix_naive

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def _assert_proper_rotations(matrices: torch.Tensor, atol: float = 1e-5) -> None:
    eye = torch.eye(3, dtype=matrices.dtype, device=matrices.device).expand_as(matrices)
    torch.testing.assert_close(matrices.transpose(-1, -2) @ matrices, eye, atol=atol, rtol=0)
    torch.testing.assert_close(torch.linalg.det(matrices), torch.ones(matrices.shape[:-2], dtype=matrices.dtype,
                                                                      device=matrices.device), atol=atol, rtol=0)


def _euler_angles(matrices: torch.Tensor) -> torch.Tensor:
    """Inverse of euler_to_matrix for |β| < π/2: (x, y, z) angles."""
    beta = -torch.asin(matrices[..., 2, 0])
    alpha = torch.atan2(matrices[..., 2, 1], matrices[..., 2, 2])
    gamma = torch.atan2(matrices[..., 1, 0], matrices[..., 0, 0])
    return torch.stack([alpha, beta, gamma], dim=-1)


# -- normalize_to_unit_sphere / subsample_points ------------------------------------------------------------

@pytest.mark.parametrize('device', DEVICES)
def test_normalize_centres_and_scales_to_unit_radius(device):
    pos = torch.randn(4, 100, 3, device=device) * torch.tensor([5.0, 1.0, 0.2], device=device) + 3.0
    out = normalize_to_unit_sphere(pos)
    assert out.shape == pos.shape and out.device == pos.device and out.dtype == pos.dtype
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(4, 3, device=device), atol=1e-6, rtol=0)
    radius = (pos - pos.mean(dim=1, keepdim=True)).norm(dim=-1).amax(dim=1)
    torch.testing.assert_close(out.norm(dim=-1).amax(dim=1), radius / (radius + 1e-4))
    assert out.norm(dim=-1).amax() < 1.0


def test_normalize_known_answer_and_collapsed_cloud():
    pos = torch.tensor([[[1.0, 0.0, 0.0], [3.0, 0.0, 0.0]]])   # centroid (2, 0, 0), radius 1
    expected = torch.tensor([[[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]]) / (1 + 1e-4)
    torch.testing.assert_close(normalize_to_unit_sphere(pos), expected)
    collapsed = torch.ones(1, 5, 3)
    assert torch.equal(normalize_to_unit_sphere(collapsed), torch.zeros(1, 5, 3))


def test_normalize_is_differentiable():
    pos = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(normalize_to_unit_sphere, (pos,))


def test_normalize_rejects_channels_first():
    with pytest.raises(ValueError, match=r'\(B, N, 3\), got \(2, 3, 50\)\. Did you pass features'):
        normalize_to_unit_sphere(torch.randn(2, 3, 50))


@pytest.mark.parametrize('device', DEVICES)
def test_subsample_shares_one_index_set_across_the_batch(device):
    base = torch.randn(1, 200, 3, device=device)
    pos = torch.cat([base, 3.0 * base + 1.0, base @ random_rotation_matrices(1, device=device)])
    out = subsample_points(pos, 50, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 50, 3) and out.device.type == torch.device(device).type
    # Cloud 1 is a scaled, shifted copy of cloud 0: equal after renormalisation only with the same indices.
    torch.testing.assert_close(out[1], out[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[2].norm(dim=-1), out[0].norm(dim=-1), atol=1e-4, rtol=0)
    assert out.norm(dim=-1).amax(dim=1).sub(1).abs().max() < 1e-3
    again = subsample_points(pos, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_subsample_rejects_more_points_than_the_clouds_hold():
    with pytest.raises(ValueError, match=r'num_points must be an int in \[1, 10\]'):
        subsample_points(torch.randn(2, 10, 3), 11)
    with pytest.raises(ValueError, match='num_points'):
        subsample_points(torch.randn(2, 10, 3), 0)


# -- rotations ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_random_rotations_are_proper_and_on_request_device(device, dtype):
    rotations = random_rotation_matrices(64, dtype=dtype, device=device)
    assert rotations.shape == (64, 3, 3) and rotations.dtype == dtype
    assert rotations.device.type == torch.device(device).type
    _assert_proper_rotations(rotations)


def test_random_rotations_are_uniform_ish():
    rotations = random_rotation_matrices(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # Haar measure on SO(3): E[R] = 0, every column is uniform on the sphere (E[v vᵀ] = I/3), and the
    # rotation angle θ has density (1 - cos θ)/π, so E[cos θ] = -1/2, i.e. E[trace] = 1 + 2 E[cos θ] = 0.
    assert rotations.mean(dim=0).abs().max() < 0.03
    column = rotations[:, :, 0]
    torch.testing.assert_close(column.T @ column / len(column), torch.eye(3, dtype=torch.float64) / 3,
                               atol=0.01, rtol=0)
    trace = torch.diagonal(rotations, dim1=-2, dim2=-1).sum(-1)
    assert abs(trace.mean().item()) < 0.03
    angle = torch.arccos(((trace - 1) / 2).clamp(-1, 1))
    assert abs(angle.mean().item() - (math.pi / 2 + 2 / math.pi)) < 0.02   # E[θ] = π/2 + 2/π


def test_random_rotations_follow_the_generator():
    first = random_rotation_matrices(5, generator=torch.Generator().manual_seed(3))
    second = random_rotation_matrices(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)


def test_up_axis_is_z():
    assert UP_AXIS == 2


@pytest.mark.parametrize('axis', [0, 1, 2])
def test_axis_rotations_keep_the_chosen_axis(axis):
    rotations = random_z_rotation_matrices(1000, generator=torch.Generator().manual_seed(0), axis=axis,
                                           dtype=torch.float64)
    _assert_proper_rotations(rotations)
    pos = torch.randn(1000, 20, 3, dtype=torch.float64)
    rotated = pos @ rotations
    torch.testing.assert_close(rotated[..., axis], pos[..., axis], atol=1e-12, rtol=0)
    torch.testing.assert_close(rotated.norm(dim=-1), pos.norm(dim=-1))
    trace = torch.diagonal(rotations, dim1=-2, dim2=-1).sum(-1)   # 1 + 2 cos θ, θ uniform: E[cos θ] = 0
    assert abs((trace - 1).mean().item() / 2) < 0.06


def test_default_axis_rotation_keeps_z():
    rotations = random_z_rotation_matrices(8)
    pos = torch.randn(8, 10, 3)
    torch.testing.assert_close((pos @ rotations)[..., 2], pos[..., 2])


def test_axis_rotation_rejects_bad_axis():
    with pytest.raises(ValueError, match=r'axis must be 0 \(x\), 1 \(y\) or 2 \(z\), got 3'):
        random_z_rotation_matrices(2, axis=3)


def test_euler_known_answers_pin_the_composition_order():
    half = math.pi / 2
    rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])          # Rz(90°)
    torch.testing.assert_close(euler_to_matrix(torch.tensor([0.0, 0.0, half])), rz, atol=1e-7, rtol=0)
    rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])          # Rx(90°)
    ry = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])          # Ry(90°)
    expected = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])   # Ry @ Rx, worked by hand
    torch.testing.assert_close(ry @ rx, expected)
    got = euler_to_matrix(torch.tensor([[half, half, 0.0]]))[0]
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=0)
    assert not torch.allclose(got, rx @ ry, atol=1e-3)


def test_euler_matches_naive_twin_and_is_proper():
    angles = (torch.rand(4, 5, 3, dtype=torch.float64) - 0.5) * 4 * math.pi
    matrices = euler_to_matrix(angles)
    assert matrices.shape == (4, 5, 3, 3)
    torch.testing.assert_close(matrices, _euler_to_matrix_naive(angles))
    _assert_proper_rotations(matrices, atol=1e-10)


def test_euler_is_differentiable():
    angles = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(euler_to_matrix, (angles,))


def test_euler_rejects_wrong_last_dimension():
    with pytest.raises(ValueError, match=r'angles must be \(\.\.\., 3\)'):
        euler_to_matrix(torch.zeros(4, 2))


# -- augmentations ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('device', DEVICES)
def test_random_scale_uses_one_factor_per_cloud_in_range(device):
    pos = torch.rand(500, 16, 3, device=device) + 0.5
    out = random_scale(pos)
    ratio = out / pos
    assert out.device == pos.device
    torch.testing.assert_close(ratio, ratio[:, :1, :1].expand_as(ratio))
    factor = ratio[:, 0, 0]
    assert factor.min() >= 0.8 - 1e-6 and factor.max() <= 1.25 + 1e-6
    assert factor.min() < 0.85 and factor.max() > 1.2
    torch.testing.assert_close(random_scale(pos, 2.0, 2.0), 2.0 * pos)


@pytest.mark.parametrize('device', DEVICES)
def test_jitter_is_small_and_clipped(device):
    pos = torch.randn(8, 4000, 3, device=device)
    noise = jitter(pos) - pos
    assert noise.abs().max() <= 0.05 + 1e-6
    assert abs(noise.std().item() - 0.01) < 0.001
    wide = jitter(pos, sigma=1.0, clip=0.05) - pos
    assert wide.abs().max() <= 0.05 + 1e-6 and (wide.abs() > 0.0499).float().mean() > 0.9


@pytest.mark.parametrize('device', DEVICES)
def test_rotate_perturbation_is_a_small_proper_rotation_of_clipped_angles(device):
    pos = torch.randn(64, 50, 3, dtype=torch.float64, device=device)
    for sigma in (0.06, 10.0):
        out = rotate_perturbation(pos, sigma=sigma)
        matrices = torch.linalg.lstsq(pos, out).solution   # out = pos @ R
        _assert_proper_rotations(matrices, atol=1e-8)
        angles = _euler_angles(matrices)
        assert angles.abs().max() <= 0.18 + 1e-8
        if sigma == 10.0:   # nearly every angle is clipped to ±0.18
            assert (angles.abs() > 0.1799).float().mean() > 0.9


def test_augmentations_follow_the_generator():
    pos = torch.randn(4, 32, 3)
    for augment in (random_scale, jitter, rotate_perturbation):
        first = augment(pos, generator=torch.Generator().manual_seed(7))
        second = augment(pos, generator=torch.Generator().manual_seed(7))
        assert torch.equal(first, second), augment.__name__


def test_augmentations_reject_bad_arguments():
    pos = torch.randn(2, 8, 3)
    with pytest.raises(ValueError, match='0 < low <= high'):
        random_scale(pos, 1.5, 1.0)
    with pytest.raises(ValueError, match='sigma >= 0'):
        jitter(pos, sigma=-1.0)
    with pytest.raises(ValueError, match='sigma >= 0'):
        rotate_perturbation(pos, clip=-0.1)
    with pytest.raises(ValueError, match=r'\(B, N, 3\)'):
        jitter(torch.randn(8, 3))


def test_geometry_rejects_integer_points_and_bad_counts():
    with pytest.raises(ValueError, match='must be a floating tensor, got torch.int64'):
        normalize_to_unit_sphere(torch.zeros(1, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match='n must be a non-negative int, got -1'):
        random_rotation_matrices(-1)
    assert random_z_rotation_matrices(0).shape == (0, 3, 3)
