"""Tests for the rotators: registry-wide basics, PCA frame conventions, and the sign rotators' invariance
to rotations and axis reflections of the input."""
from __future__ import annotations

import inspect

import pytest
import torch

from openpoints.models.build import MODELS
from openpoints_dd.registry import ROTATORS, build_rotator
from openpoints_dd.rotators import LearnedSignRotator, PCARotator, PCASignRotator, principal_axes
from openpoints_dd.rotators.pca_sign import hard_sign
from openpoints_dd.utils import normalize_to_unit_sphere, random_rotation_matrices

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
ROTATOR_NAMES = sorted(ROTATORS.module_dict)
SIGN_ROTATORS = ['PCASignRotator', 'LearnedSignRotator']

# diag(±1, ±1, ±1): the 8 axis reflections (the identity included).
AXIS_REFLECTIONS = torch.tensor([[a, b, c] for a in (1.0, -1.0) for b in (1.0, -1.0) for c in (1.0, -1.0)])


def _skewed_cloud(num_points: int = 512, seed: int = 0) -> torch.Tensor:
    """(1, N, 3) unit-sphere cloud with three well separated variances and skew along every principal axis."""
    generator = torch.Generator().manual_seed(seed)
    lognormal = torch.exp(0.5 * torch.randn(num_points, 3, generator=generator, dtype=torch.float64))
    cloud = lognormal * torch.tensor([1.0, 0.7, 0.45], dtype=torch.float64)
    cloud = cloud @ random_rotation_matrices(1, generator=generator, dtype=torch.float64)[0]
    return normalize_to_unit_sphere(cloud[None]).float()


def _transformed_copies(cloud: torch.Tensor, num_rotations: int = 100) -> torch.Tensor:
    """The 8 axis reflections of `cloud`, then `num_rotations` random rotations each composed with one of
    the reflections and a random shift: (8 + num_rotations, N, 3)."""
    generator = torch.Generator().manual_seed(1)
    rotations = random_rotation_matrices(num_rotations, generator=generator, dtype=torch.float64)
    reflections = AXIS_REFLECTIONS.double()[torch.arange(num_rotations) % 8]
    shifts = torch.randn(num_rotations, 1, 3, generator=generator, dtype=torch.float64)
    base = cloud.double()
    reflected = base * AXIS_REFLECTIONS.double()[:, None, :]
    moved = (base * reflections[:, None, :]) @ rotations + shifts
    return torch.cat([reflected, moved]).float()


# -- every registered rotator ----------------------------------------------------------------------------------

@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('name', ROTATOR_NAMES)
def test_rotator_basic_properties(name, device, tiny_clouds):
    rotator = build_rotator({'NAME': name}).to(device)
    pos = tiny_clouds.pos.to(device).requires_grad_(True)
    out = rotator(pos)
    assert out.shape == pos.shape and out.dtype == pos.dtype and out.device == pos.device
    assert torch.isfinite(out).all()
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    assert pos.grad is not None and torch.isfinite(pos.grad).all() and pos.grad.abs().sum() > 0, \
        f'{name}: no gradient reached the points'


@pytest.mark.parametrize('name', ROTATOR_NAMES)
def test_rotator_frame_is_orthogonal_and_matches_forward(name, tiny_clouds):
    rotator = build_rotator({'NAME': name})
    pos = tiny_clouds.pos.double()
    origin, basis = rotator.frame(pos)
    assert origin.shape == (len(pos), 1, 3) and basis.shape == (len(pos), 3, 3)
    eye = torch.eye(3, dtype=pos.dtype).expand_as(basis)
    torch.testing.assert_close(basis.transpose(1, 2) @ basis, eye)
    assert torch.allclose(torch.linalg.det(basis).abs(), torch.ones(len(pos), dtype=pos.dtype))
    torch.testing.assert_close(rotator(pos), (pos - origin) @ basis)


@pytest.mark.parametrize('name', ROTATOR_NAMES)
def test_rotator_repr_shows_its_arguments(name):
    cls = ROTATORS.module_dict[name]
    rotator = cls()
    text = repr(rotator)
    assert text.startswith(name)
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if parameter.name != 'self':
            assert f'{parameter.name}={parameter.default}' in text, f'{name}: repr lacks {parameter.name}'


@pytest.mark.parametrize('name', ROTATOR_NAMES)
def test_rotator_is_buildable_from_an_openpoints_model_cfg(name):
    assert isinstance(MODELS.build({'NAME': name}), ROTATORS.module_dict[name])


@pytest.mark.parametrize('name', ROTATOR_NAMES)
def test_rotator_rejects_channels_first_input(name):
    with pytest.raises(ValueError, match=rf'{name} expects pos \(B, N, 3\), got \(2, 3, 16\)'):
        build_rotator({'NAME': name})(torch.randn(2, 3, 16))


def test_misspelt_rotator_key_names_the_class():
    with pytest.raises(TypeError, match='PCASignRotator'):
        build_rotator({'NAME': 'PCASignRotator', 'wo': 2.0})


@pytest.mark.parametrize('kwargs', [{'w0': 0.0}, {'num_frequencies': 0}, {'temperature': -1.0}])
def test_learned_sign_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match='LearnedSignRotator: ' + next(iter(kwargs))):
        LearnedSignRotator(**kwargs)


def test_pca_sign_rejects_bad_w0():
    with pytest.raises(ValueError, match='w0 must be a positive number'):
        PCASignRotator(w0=-1.0)


def test_identity_returns_its_input():
    pos = torch.randn(2, 10, 3)
    assert build_rotator(None)(pos) is pos


# -- PCA frame conventions -------------------------------------------------------------------------------------

def test_pca_frame_is_right_handed_and_descending():
    pos = torch.cat([_skewed_cloud(seed=s) for s in range(6)])
    origin, basis = PCARotator().frame(pos)
    torch.testing.assert_close(torch.linalg.det(basis), torch.ones(6), atol=1e-5, rtol=0)
    out = PCARotator()(pos)
    variance = out.var(dim=1)
    assert (variance[:, 0] > variance[:, 1]).all() and (variance[:, 1] > variance[:, 2]).all()
    eigenvalues, axes = principal_axes(pos - origin)
    assert (eigenvalues[:, :-1] >= eigenvalues[:, 1:]).all()
    covariance = (pos - origin).transpose(1, 2) @ (pos - origin) / pos.shape[1]
    torch.testing.assert_close(covariance @ axes, axes * eigenvalues[:, None, :], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(6, 3), atol=1e-6, rtol=0)


def test_pca_is_rotation_and_reflection_invariant_up_to_axis_signs():
    copies = _transformed_copies(_skewed_cloud())
    out = PCARotator()(copies)
    torch.testing.assert_close(out.abs(), out[:1].abs().expand_as(out), atol=1e-4, rtol=0)


def test_pca_frame_gets_no_gradient_but_the_projection_does():
    pos = _skewed_cloud().requires_grad_(True)
    weight = torch.randn(1, pos.shape[1], 3)
    (PCARotator()(pos) * weight).sum().backward()
    _, axes = PCARotator().frame(pos.detach())
    centred_weight = weight - weight.mean(dim=1, keepdim=True)  # gradient of the centring
    torch.testing.assert_close(pos.grad, centred_weight @ axes.transpose(1, 2), atol=1e-5, rtol=0)


# -- sign rotators ---------------------------------------------------------------------------------------------

def test_hard_sign_sends_ties_to_plus_one():
    score = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3.0, -2.0])
    assert torch.equal(hard_sign(score), torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0, -1.0]))


def test_pca_sign_known_answer():
    # Already in its principal frame (diagonal covariance 6/9 > 2.16/9 > 0.24/9), centred, with the long
    # tail of every axis on the positive side: mean sin(p_a) < 0 on each axis, so all three signs are -1.
    cloud = torch.tensor([[2.0, 0, 0], [-1, 0, 0], [-1, 0, 0], [0, 1.2, 0], [0, -0.6, 0], [0, -0.6, 0],
                          [0, 0, 0.4], [0, 0, -0.2], [0, 0, -0.2]], dtype=torch.float64)[None]
    half_turn_about_z = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
    for pos in (cloud, cloud @ half_turn_about_z, cloud * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)):
        torch.testing.assert_close(PCASignRotator()(pos), -cloud, atol=1e-12, rtol=0)


@pytest.mark.parametrize('name', SIGN_ROTATORS)
def test_sign_rotator_is_invariant_to_rotations_and_axis_reflections(name):
    cloud = _skewed_cloud()
    rotator = build_rotator({'NAME': name})
    coords = PCARotator()(cloud)
    eigenvalues = coords.var(dim=1)[0]
    assert (eigenvalues[:-1] / eigenvalues[1:]).min() > 1.5, 'test cloud needs distinct variances'
    # At w0 = 1 a unit-sphere cloud's scores are about -E[p³]/6, i.e. small (here >= 1.2e-4), but far
    # above float32 rounding of a 512-point mean (~1e-8).
    assert torch.sin(coords).mean(dim=1).abs().min() > 1e-4, 'test cloud needs non-zero sign scores'

    copies = _transformed_copies(cloud)
    out = rotator(copies)
    torch.testing.assert_close(out, out[:1].expand_as(out), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:1], rotator(cloud), atol=1e-5, rtol=0)


def test_learned_sign_at_init_reproduces_the_fixed_rule(tiny_clouds):
    copies = _transformed_copies(_skewed_cloud(), num_rotations=8)
    for pos in (tiny_clouds.pos, copies):
        torch.testing.assert_close(LearnedSignRotator()(pos), PCASignRotator()(pos))
    torch.testing.assert_close(LearnedSignRotator(w0=3.0)(copies), PCASignRotator(w0=3.0)(copies))


def test_learned_sign_stays_invariant_for_other_weights():
    cloud = _skewed_cloud(seed=2)
    rotator = LearnedSignRotator(num_frequencies=4)
    with torch.no_grad():
        rotator.weight.copy_(torch.tensor([0.3, -1.0, 0.5, 0.2]))
        assert rotator.sign_scores(PCARotator()(cloud)).abs().min() > 1e-4
    out = rotator(_transformed_copies(cloud))
    torch.testing.assert_close(out, out[:1].expand_as(out), atol=1e-4, rtol=0)


def test_learned_sign_gradient_reaches_w(tiny_clouds):
    rotator = LearnedSignRotator()
    out = rotator(tiny_clouds.pos)
    signs = rotator.frame(tiny_clouds.pos)[1].detach()
    assert set(torch.linalg.det(signs).round().tolist()) <= {-1.0, 1.0}
    (out * torch.randn_like(out)).sum().backward()
    assert rotator.weight.grad is not None and torch.isfinite(rotator.weight.grad).all()
    assert rotator.weight.grad.abs().sum() > 0
    assert rotator.weight.grad[1:].abs().sum() > 0, 'every harmonic should receive gradient'


def test_learned_sign_straight_through_gradient_matches_tanh_surrogate():
    cloud = _skewed_cloud().double()
    rotator = LearnedSignRotator(num_frequencies=3, temperature=0.5).double()
    weight = torch.randn(1, cloud.shape[1], 3, dtype=torch.float64)
    (rotator(cloud) * weight).sum().backward()
    coords = PCARotator()(cloud)
    features = torch.stack([torch.sin(k * coords).mean(dim=1)[0] for k in (1.0, 2.0, 3.0)])  # (t, 3)
    score = rotator.weight.detach() @ features
    upstream = (coords[0] * weight[0]).sum(dim=0)   # dL/ds_a, since out_a = coords_a * s_a
    expected = features @ (upstream * (1 - torch.tanh(score / 0.5) ** 2) / 0.5)
    torch.testing.assert_close(rotator.weight.grad, expected)


def test_rotator_rejects_integer_points():
    with pytest.raises(ValueError, match='PCARotator expects floating point coordinates, got torch.int64'):
        PCARotator()(torch.zeros(1, 4, 3, dtype=torch.long))
