"""Tests for `Canonicalize`, the rotators as openpoints data transforms: invariance per sample (100 rotations and
the 8 axis reflections), openpoints' transform pipeline, type keeping, and loading learned-sign weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from openpoints.transforms import DataTransforms, build_transforms_from_cfg
from openpoints.utils import EasyConfig
from openpoints_dd.data.artifact import save_artifact
from openpoints_dd.registry import ROTATORS, build_rotator
from openpoints_dd.rotators import Canonicalize, LearnedSignRotator, principal_axes
from openpoints_dd.utils.geometry import normalize_to_unit_sphere, random_rotation_matrices

SIGN_RESOLVING = [{'NAME': 'PCASignRotator'}, {'NAME': 'LearnedSignRotator'},
                  {'NAME': 'LearnedSignRotator', 'num_frequencies': 3}]
AXIS_REFLECTIONS = torch.tensor([[a, b, c] for a in (1.0, -1.0) for b in (1.0, -1.0) for c in (1.0, -1.0)],
                                dtype=torch.float64)


def _skewed_cloud(num_points: int = 256) -> torch.Tensor:
    """(N, 3) float64: anisotropic (variances about 1 : 0.36 : 0.09) and skewed (exponential) on every axis,
    then turned by a random rotation, unit-sphere normalised: PCA axes and their signs are well defined."""
    generator = torch.Generator().manual_seed(0)
    exponential = -torch.log(torch.rand(num_points, 3, generator=generator, dtype=torch.float64))
    cloud = exponential * torch.tensor([1.0, 0.6, 0.3], dtype=torch.float64)
    cloud = cloud @ random_rotation_matrices(1, generator=generator, dtype=torch.float64)[0]
    return normalize_to_unit_sphere(cloud[None])[0]


def _copies(cloud: torch.Tensor) -> torch.Tensor:
    """(108, N, 3) float64: the 8 axis reflections, then 100 random rotations (each after one reflection)."""
    rotations = random_rotation_matrices(100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reflected = cloud[None] * AXIS_REFLECTIONS[:, None, :]
    rotated = (cloud[None] * AXIS_REFLECTIONS[torch.arange(100) % 8][:, None, :]) @ rotations
    return torch.cat([reflected, rotated])


@pytest.mark.parametrize('rotator', SIGN_RESOLVING, ids=lambda r: '-'.join(map(str, r.values())))
def test_sign_resolving_canonicaliser_gives_one_cloud_for_all_rotations_and_reflections(rotator):
    cloud = _skewed_cloud()
    coords = cloud @ principal_axes(cloud[None] - cloud.mean(0))[1][0]
    variance = coords.var(dim=0)
    assert (variance[:-1] / variance[1:]).min() > 1.5, 'the test cloud needs distinct variances'
    transform = Canonicalize(rotator=rotator)
    reference = transform({'pos': cloud.float().numpy()})['pos']
    for copy in _copies(cloud):
        out = transform({'pos': copy.float().numpy()})['pos']
        np.testing.assert_allclose(out, reference, atol=1e-4, rtol=0)
    # and the PCA frame itself is right-handed for every copy
    centred = _copies(cloud) - _copies(cloud).mean(dim=1, keepdim=True)
    torch.testing.assert_close(torch.linalg.det(principal_axes(centred)[1]), torch.ones(108, dtype=torch.float64))


def test_pca_only_canonicaliser_is_invariant_up_to_axis_signs():
    cloud = _skewed_cloud()
    transform = Canonicalize(rotator={'NAME': 'PCARotator'})
    outs = np.stack([transform({'pos': copy.float().numpy()})['pos'] for copy in _copies(cloud)])
    np.testing.assert_allclose(np.abs(outs), np.abs(outs[:1]).repeat(len(outs), 0), atol=1e-4, rtol=0)
    assert len({tuple(np.sign(o[np.abs(o).argmax(0), [0, 1, 2]]).tolist()) for o in outs}) > 1, \
        'PCA alone should leave sign ambiguities (else the sign test above proves nothing)'


def test_canonicalize_keeps_container_dtype_and_updates_x_and_normals():
    cloud = _skewed_cloud(64)
    transform = Canonicalize()   # PCASignRotator by default
    rotator = build_rotator({'NAME': 'PCASignRotator'})
    origin, basis = rotator.frame(cloud[None])
    expected = ((cloud[None] - origin) @ basis)[0]

    for dtype in (np.float32, np.float64):
        out = transform({'pos': cloud.numpy().astype(dtype)})['pos']
        assert isinstance(out, np.ndarray) and out.dtype == dtype
        np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)
    pos = cloud.float()
    normals = torch.nn.functional.normalize(torch.randn(64, 3), dim=1)
    data = transform({'pos': pos, 'x': pos, 'normals': normals, 'y': torch.tensor(1)})
    assert torch.is_tensor(data['pos']) and data['pos'].dtype == torch.float32 and data['x'] is data['pos']
    torch.testing.assert_close(data['normals'], normals @ basis[0].float(), atol=1e-5, rtol=0)
    features = torch.cat([pos, torch.ones(64, 1)], dim=1)
    data = transform({'pos': pos, 'x': features})
    torch.testing.assert_close(data['x'], torch.cat([data['pos'], torch.ones(64, 1)], dim=1))


def test_canonicalize_runs_in_openpoints_transform_pipeline():
    cfg = EasyConfig({'train': ['PointsToTensor', 'Canonicalize', 'PointCloudScaleAndTranslate'],
                      'val': ['PointsToTensor', 'Canonicalize'],
                      'kwargs': {'shift': [0.2, 0.2, 0.2], 'rotator': {'NAME': 'PCASignRotator', 'w0': 1.0}}})
    assert 'Canonicalize' in DataTransforms.module_dict
    cloud = _skewed_cloud(128).float().numpy()
    train = build_transforms_from_cfg('train', cfg)
    data = train({'pos': cloud.copy(), 'y': np.int64(3)})
    assert torch.is_tensor(data['pos']) and data['pos'].shape == (128, 3)
    val = build_transforms_from_cfg('val', cfg)
    expected = build_rotator({'NAME': 'PCASignRotator'})(torch.from_numpy(cloud)[None])[0]
    torch.testing.assert_close(val({'pos': cloud.copy(), 'y': np.int64(3)})['pos'], expected)


@pytest.mark.skipif('EulerRotator' not in ROTATORS, reason='EulerRotator is not part of this checkout')
def test_per_slot_rotator_is_refused_with_the_reason():
    with pytest.raises(ValueError, match='EulerRotator rotates synthetic slots only'):
        Canonicalize(rotator={'NAME': 'EulerRotator'})


def test_canonicalize_rejects_channels_beyond_xyz():
    with pytest.raises(ValueError, match=r'expects data\["pos"\] of shape \(N, 3\), got \(16, 6\)'):
        Canonicalize()({'pos': np.zeros((16, 6), dtype=np.float32)})


# -- learned weights -------------------------------------------------------------------------------------------

def _trained_sign(num_frequencies: int = 4) -> LearnedSignRotator:
    rotator = LearnedSignRotator(num_frequencies=num_frequencies)
    with torch.no_grad():
        rotator.weight.copy_(torch.tensor([0.3, -1.0, 0.5, 0.2]))
    return rotator


def test_learned_sign_weights_load_from_a_distillation_checkpoint(tmp_path):
    path = tmp_path / 'checkpoint.pt'
    torch.save({'synthesizer': {}, 'rotator': _trained_sign().state_dict(), 'iteration': 3}, path)
    cfg = {'NAME': 'LearnedSignRotator', 'num_frequencies': 4}
    transform = Canonicalize(rotator=cfg, rotator_weights=str(path))
    torch.testing.assert_close(transform.rotator.weight.detach(), torch.tensor([0.3, -1.0, 0.5, 0.2]))
    cloud = _skewed_cloud(64).float()
    torch.testing.assert_close(transform({'pos': cloud})['pos'], _trained_sign()(cloud[None])[0].detach())
    with pytest.raises(ValueError, match='holds no rotator config; give `rotator` too'):
        Canonicalize(rotator_weights=str(path))
    with pytest.raises(ValueError, match='do not fit LearnedSignRotator'):
        Canonicalize(rotator={'NAME': 'LearnedSignRotator', 'num_frequencies': 8}, rotator_weights=str(path))


def _artifact(tmp_path, rotator_cfg, tensors=None):
    metadata = {'kind': 'points', 'synthesizer': {'NAME': 'ExplicitPoints'}, 'objective': {'NAME': 'GradientMatching'},
                'rotator': rotator_cfg, 'dataset': {'name': 'X', 'num_classes': 2, 'class_names': ['a', 'b']},
                'cpc': 1, 'num_points': 16}
    base = {'pos': torch.randn(2, 16, 3), 'y': torch.tensor([0, 1])}
    return save_artifact(tmp_path / 'artifact.safetensors', {**base, **(tensors or {})}, metadata)


def test_rotator_config_and_weights_come_from_an_artifact(tmp_path):
    path = _artifact(tmp_path, {'NAME': 'PCARotator'})
    assert type(Canonicalize(rotator_weights=str(path)).rotator).__name__ == 'PCARotator'
    with pytest.raises(ValueError, match='contradicts the artifact'):
        Canonicalize(rotator={'NAME': 'PCASignRotator'}, rotator_weights=str(path))

    cfg = {'NAME': 'LearnedSignRotator', 'num_frequencies': 4}
    with pytest.raises(ValueError, match='stores no rotator tensors'):
        Canonicalize(rotator_weights=str(_artifact(tmp_path / 'a', cfg)))
    weights = {'rotator.' + k: v for k, v in _trained_sign().state_dict().items()}
    transform = Canonicalize(rotator_weights=str(_artifact(tmp_path / 'b', cfg, weights)))
    torch.testing.assert_close(transform.rotator.weight.detach(), torch.tensor([0.3, -1.0, 0.5, 0.2]))


def test_missing_weights_file_names_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match='artifact.safetensors\\) or checkpoint'):
        Canonicalize(rotator_weights=str(tmp_path / 'nope.pt'))


def test_a_checkpoint_without_rotator_state_is_refused(tmp_path):
    path = tmp_path / 'model.pt'
    torch.save({'model': {'weight': torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match='is not a distillation checkpoint'):
        Canonicalize(rotator={'NAME': 'LearnedSignRotator'}, rotator_weights=str(path))
