"""Tests for the rotated-data protocol: DatasetRotation, and RealPool / RotatedDataset / DistilledDataset using it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_fake_modelnet40, tiny_embedded_cfg
from openpoints.dataset.build import DATASETS
from openpoints_dd.data import DatasetRotation, DistilledDataset, RealPool, RotatedDataset
from openpoints_dd.utils.geometry import UP_AXIS


@pytest.fixture(scope='module')
def fake_data(tmp_path_factory):
    return make_fake_modelnet40(tmp_path_factory.mktemp('data') / 'ModelNet40Ply2048', num_train=6, num_test=5,
                                num_points=64)


def _modelnet_cfg(data_dir, rotation=None) -> dict:
    common = {'NAME': 'ModelNet40Ply2048', 'data_dir': str(data_dir)}
    if rotation is not None:
        common['rotation'] = rotation
    return {'common': common, 'train': {'split': 'train', 'num_points': 64}, 'val': {'split': 'test', 'num_points': 64}}


# -- DatasetRotation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('mode', ['so3', 'z'])
def test_rotations_are_proper_and_differ_between_samples(mode):
    rotations = DatasetRotation(mode=mode, seed=0).matrices('train', range(50))
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    torch.testing.assert_close(rotations.transpose(1, 2) @ rotations, eye)
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(50, dtype=torch.float64))
    distance = (rotations[:, None] - rotations[None]).flatten(2).norm(dim=-1)
    assert distance[~torch.eye(50, dtype=torch.bool)].min() > 1e-3, 'two samples got the same rotation'


@pytest.mark.parametrize('mode', ['so3', 'z'])
def test_rotation_of_a_sample_depends_on_seed_split_and_index_only(mode):
    rotation = DatasetRotation(mode=mode, seed=3)
    all_at_once = rotation.matrices('train', range(20))
    shuffled = [7, 2, 19, 0]
    torch.testing.assert_close(rotation.matrices('train', shuffled), all_at_once[shuffled], rtol=0, atol=0)
    torch.testing.assert_close(DatasetRotation(mode=mode, seed=3).matrices('train', [5])[0], all_at_once[5],
                               rtol=0, atol=0)
    assert not torch.allclose(DatasetRotation(mode=mode, seed=4).matrices('train', range(20)), all_at_once)
    assert not torch.allclose(rotation.matrices('test', range(20)), all_at_once)
    # val and test serve the same clouds in openpoints' classification datasets, so they share rotations
    torch.testing.assert_close(rotation.matrices('val', range(20)), rotation.matrices('test', range(20)))


def test_z_mode_keeps_the_up_axis_coordinate():
    pos = torch.randn(30, 16, 3, dtype=torch.float64)
    out = DatasetRotation(mode='z', seed=0).apply(pos, 'train', range(30))
    torch.testing.assert_close(out[..., UP_AXIS], pos[..., UP_AXIS])
    assert not torch.allclose(out, pos)
    torch.testing.assert_close(out.norm(dim=-1), pos.norm(dim=-1))


def test_so3_rotations_look_uniform():
    # Haar measure: E[R] = 0 and E[R_ij^2] = 1/3; 2000 draws give a standard error of about 0.013.
    rotations = DatasetRotation(mode='so3', seed=0).matrices('train', range(2000))
    assert rotations.mean(dim=0).abs().max() < 0.06
    torch.testing.assert_close(rotations.square().mean(dim=0), torch.full((3, 3), 1 / 3, dtype=torch.float64),
                               atol=0.03, rtol=0)


def test_apply_keeps_container_dtype_and_extra_channels():
    rotation = DatasetRotation(mode='so3', seed=0)
    array = np.random.default_rng(0).normal(size=(3, 8, 6)).astype(np.float32)
    out = rotation.apply(array, 'train', [0, 1, 2])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == array.shape
    np.testing.assert_array_equal(out[..., 3:], array[..., 3:])
    expected = torch.from_numpy(array[..., :3]).double() @ rotation.matrices('train', [0, 1, 2])
    np.testing.assert_allclose(out[..., :3], expected.numpy(), atol=1e-5)
    tensor = torch.from_numpy(array)
    out = rotation.apply(tensor, 'train', [0, 1, 2])
    assert torch.is_tensor(out) and out.dtype == torch.float32
    assert DatasetRotation().apply(tensor, 'train', [0, 1, 2]) is tensor


@pytest.mark.parametrize('cfg,match', [
    ({'mode': 'SO3'}, r"mode must be one of \['none', 'so3', 'z'\], got 'SO3'"),
    ({'mode': 'so3', 'sed': 1}, r"unknown keys \['sed'\] in the dataset `rotation` section"),
    ({'mode': 'so3', 'seed': 1.5}, 'seed must be an int'),
    ('so3', 'must be a mapping like'),
])
def test_bad_rotation_sections_are_rejected(cfg, match):
    with pytest.raises(ValueError, match=match):
        DatasetRotation.from_cfg(cfg)


def test_apply_rejects_mismatched_indices():
    with pytest.raises(ValueError, match=r'expects pos \(M, N, >=3\) and M indices'):
        DatasetRotation(mode='so3').apply(torch.zeros(2, 4, 3), 'train', [0])


# -- RealPool --------------------------------------------------------------------------------------------------

def _embedded_cfg(tmp_path, rotation=None) -> dict:
    dataset = tiny_embedded_cfg(tmp_path)['dataset']
    if rotation is not None:
        dataset['common']['rotation'] = rotation
    return dataset


def test_real_pool_rotates_each_cloud_by_its_dataset_index(tmp_path):
    plain = RealPool.from_dataset_cfg(_embedded_cfg(tmp_path), split='val', num_points=64)
    rotated = RealPool.from_dataset_cfg(_embedded_cfg(tmp_path, {'mode': 'so3', 'seed': 1}), split='val',
                                        num_points=64)
    assert plain.rotation == {'mode': 'none'} and rotated.rotation == {'mode': 'so3', 'seed': 1}
    # the pool sorts by label (stably); recover each pool row's dataset index the same way
    common = dict(_embedded_cfg(tmp_path)['common'])
    dataset = DATASETS.build(common, default_args={'split': 'test', 'num_points': 64, 'transform': None})
    order = torch.argsort(torch.from_numpy(np.asarray(dataset.labels).reshape(-1).astype(np.int64)), stable=True)
    expected = plain.pos.double() @ DatasetRotation(mode='so3', seed=1).matrices('test', order)
    torch.testing.assert_close(rotated.pos, expected.float(), atol=1e-5, rtol=0)
    assert not torch.allclose(rotated.pos, plain.pos, atol=1e-2)


def test_real_pool_split_section_overrides_common(tmp_path):
    cfg = _embedded_cfg(tmp_path, {'mode': 'so3', 'seed': 0})
    cfg['train']['rotation'] = {'mode': 'z', 'seed': 2}
    pool = RealPool.from_dataset_cfg(cfg, split='train', num_points=64)
    assert pool.rotation == {'mode': 'z', 'seed': 2, 'up_axis': UP_AXIS}


def test_artifact_metadata_records_the_rotation(tmp_path):
    from openpoints_dd.engine.distill import Distiller
    cfg = tiny_embedded_cfg(tmp_path)
    cfg['dataset']['common']['rotation'] = {'mode': 'z', 'seed': 5}
    pool = RealPool.from_dataset_cfg(cfg['dataset'], split='train', num_points=64)
    metadata = Distiller(cfg, pool, cfg['run_dir']).metadata()
    assert metadata['dataset']['rotation'] == {'mode': 'z', 'seed': 5, 'up_axis': UP_AXIS}


# -- RotatedDataset and DistilledDataset's real splits ---------------------------------------------------------

def test_rotated_dataset_items_are_the_real_items_rotated(fake_data):
    rotation = {'mode': 'so3', 'seed': 0}
    real = DATASETS.build({'NAME': 'ModelNet40Ply2048', 'data_dir': str(fake_data)},
                          default_args={'split': 'test', 'num_points': 64, 'transform': None})
    rotated = DATASETS.build({'NAME': 'RotatedDataset', 'real_dataset': 'ModelNet40Ply2048', 'data_dir': str(fake_data),
                              'rotation': rotation},
                             default_args={'split': 'test', 'num_points': 64, 'transform': None})
    assert isinstance(rotated, RotatedDataset) and len(rotated) == len(real) and rotated.num_classes == 40
    matrices = DatasetRotation(**rotation).matrices('test', range(len(real)))
    for index in (0, 3):
        item = rotated[index]
        assert torch.is_tensor(item['pos']) and item['pos'].dtype == torch.float32 and item['x'] is item['pos']
        expected = torch.from_numpy(np.asarray(real[index]['pos'])).double() @ matrices[index]
        torch.testing.assert_close(item['pos'].double(), expected, atol=1e-5, rtol=0)
        assert int(item['y']) == int(real[index]['y'])


def test_rotated_dataset_needs_a_registered_real_dataset():
    with pytest.raises(ValueError, match='RotatedDataset needs `real_dataset`'):
        RotatedDataset(real_dataset='ModelNet40')


def test_distilled_dataset_rotates_its_real_test_split(fake_data):
    rotation = {'mode': 'so3', 'seed': 0}
    common = {'real_dataset': 'ModelNet40Ply2048', 'data_dir': str(fake_data)}
    plain = DistilledDataset(split='test', num_points=64, **common)
    rotated = DistilledDataset(split='test', num_points=64, rotation=rotation, **common)
    assert isinstance(rotated.real, RotatedDataset) and rotated.classes == plain.classes
    matrix = DatasetRotation(**rotation).matrices('test', [2])[0]
    expected = torch.from_numpy(np.asarray(plain[2]['pos'])).double() @ matrix
    torch.testing.assert_close(rotated[2]['pos'].double(), expected, atol=1e-5, rtol=0)
