"""Tests for EmbeddedShapes / EmbeddedShapesPart: determinism, splits, geometry, labels and openpoints loading."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from openpoints.dataset import build_dataloader_from_cfg
from openpoints.dataset.build import DATASETS
from openpoints.utils import EasyConfig

from openpoints_dd.data import EmbeddedShapes, EmbeddedShapesPart, generate_embedded_shapes
from openpoints_dd.data import embedded_shapes as module

SMALL = dict(num_points=128, num_per_class_train=4, num_per_class_test=2)  # one 32-cloud chunk per class


def _fresh(**kwargs) -> dict:
    """Generate without the cache, so that determinism is really tested."""
    module._generate_cached.cache_clear()
    return generate_embedded_shapes(**kwargs)


def test_same_seed_same_clouds_and_prefix_stable():
    first = _fresh(split='train', num_per_class=3, num_points=64, seed=5)
    second = _fresh(split='train', num_per_class=3, num_points=64, seed=5)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    # Cloud j of class c does not depend on how many clouds or classes were asked for.
    more = _fresh(split='train', num_per_class=40, num_points=64, seed=5, num_classes=4)
    np.testing.assert_array_equal(more['pos'][40:43], first['pos'][3:6])     # class 1, clouds 0..2
    np.testing.assert_array_equal(more['parts'][120:123], first['parts'][9:12])  # class 3


def test_different_seeds_and_splits_differ():
    base = generate_embedded_shapes(split='train', num_per_class=2, num_points=64, seed=0)
    other_seed = generate_embedded_shapes(split='train', num_per_class=2, num_points=64, seed=1)
    test = generate_embedded_shapes(split='test', num_per_class=2, num_points=64, seed=0)
    val = generate_embedded_shapes(split='val', num_per_class=2, num_points=64, seed=0)
    assert not np.allclose(base['pos'], other_seed['pos'])
    # No test cloud equals any train cloud (compare sorted radii, which ignore point order).
    train_radii = np.sort(np.linalg.norm(base['pos'], axis=2), axis=1)
    test_radii = np.sort(np.linalg.norm(test['pos'], axis=2), axis=1)
    distance = np.abs(train_radii[:, None] - test_radii[None]).mean(-1)
    assert distance.min() > 1e-3
    np.testing.assert_array_equal(val['pos'], test['pos'])  # val is test, as in ModelNet40Ply2048


def test_arrays_shapes_balance_normalisation_and_normals():
    data = generate_embedded_shapes(split='train', num_per_class=4, num_points=128, seed=0)
    num_classes = len(module.CLASS_NAMES)
    assert num_classes >= 8
    assert data['pos'].shape == (4 * num_classes, 128, 3) and data['pos'].dtype == np.float32
    assert data['normals'].shape == data['pos'].shape and data['normals'].dtype == np.float32
    assert data['parts'].shape == (4 * num_classes, 128) and data['parts'].dtype == np.int64
    assert data['labels'].dtype == np.int64
    np.testing.assert_array_equal(np.bincount(data['labels']), np.full(num_classes, 4))
    np.testing.assert_allclose(data['pos'].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(data['pos'], axis=2).max(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(data['normals'], axis=2), 1.0, atol=1e-4)
    assert not data['pos'].flags.writeable  # the cache is shared: nobody may change it


def test_part_labels_stay_in_their_class_range_and_all_parts_occur():
    data = generate_embedded_shapes(split='train', num_per_class=32, num_points=256, seed=0)
    assert all(2 <= count <= 4 for count in module.PARTS_PER_CLASS)
    assert module.NUM_PARTS == sum(module.PARTS_PER_CLASS)
    for label, (start, count) in enumerate(zip(module.PART_START, module.PARTS_PER_CLASS)):
        parts = data['parts'][data['labels'] == label]
        assert parts.min() >= start and parts.max() < start + count, module.CLASS_NAMES[label]
        assert len(np.unique(parts)) == count, f'{module.CLASS_NAMES[label]}: a part never appears'


def test_classes_are_distinct_shapes():
    """Class means of a simple shape descriptor differ: no two classes are the same generator."""
    data = generate_embedded_shapes(split='train', num_per_class=32, num_points=256, seed=0)
    extent = np.abs(data['pos']).max(axis=1)                       # (M, 3) bounding-box half extents
    radii = np.linalg.norm(data['pos'], axis=2)
    descriptor = np.concatenate([extent, np.quantile(radii, [0.1, 0.5, 0.9], axis=1).T], 1)
    means = np.stack([descriptor[data['labels'] == c].mean(0) for c in range(len(module.CLASS_NAMES))])
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(len(means))
    assert gaps.min() > 0.02


@pytest.mark.parametrize('kind, dims', [('box', [0.5, 0.2, 0.1]), ('frustum', [0.3, 0.1, 0.4, 1.0, 1.0]),
                                        ('ellipsoid', [0.5, 0.3, 0.2]), ('torus', [0.4, 0.1, 0.5])])
def test_primitives_sample_their_surface_with_unit_normals(kind, dims):
    rng = np.random.default_rng(0)
    dims = np.tile(np.asarray(dims), (2000, 1))
    pos, normal = module._SAMPLERS[kind](dims, rng.random((2000, 5)))
    np.testing.assert_allclose(np.linalg.norm(normal, axis=1), 1.0, atol=1e-9)
    if kind == 'box':
        assert np.allclose(np.abs(pos / dims).max(axis=1), 1.0) and np.all(np.abs(pos) <= dims + 1e-12)
        np.testing.assert_allclose(module._box_area(dims[:1]), [8 * (0.1 + 0.02 + 0.05)])
    elif kind == 'frustum':
        radius = np.linalg.norm(pos[:, :2], axis=1)
        on_side = np.isclose(radius, 0.3 + (0.1 - 0.3) * (pos[:, 2] + 0.4) / 0.8)
        on_cap = np.isclose(np.abs(pos[:, 2]), 0.4) & (radius <= 0.3 + 1e-12)
        assert np.all(on_side | on_cap) and on_cap.any() and on_side.any()
    elif kind == 'ellipsoid':
        np.testing.assert_allclose(((pos / dims) ** 2).sum(1), 1.0)
        np.testing.assert_allclose(module._ellipsoid_area(np.ones((1, 3))), [4 * np.pi], rtol=1e-9)
    else:
        ring = np.linalg.norm(pos[:, :2], axis=1)
        np.testing.assert_allclose((ring - 0.4) ** 2 + pos[:, 2] ** 2, 0.01)
        assert np.all(pos[:, 0] >= -1e-9)  # half a torus, centred on +x


def test_frustum_area_known_answer():
    """A cylinder of radius 1 and height 2 with both caps: 2*pi*1*2 + 2*pi."""
    np.testing.assert_allclose(module._frustum_area(np.array([[1.0, 1.0, 1.0, 1.0, 1.0]])), [6 * np.pi])


def test_classification_items_match_modelnet40ply2048():
    dataset = EmbeddedShapes(split='train', **SMALL)
    assert dataset.num_classes == len(dataset.classes) == len(module.CLASS_NAMES)
    assert len(dataset) == 4 * dataset.num_classes and dataset.num_points == 128
    assert dataset.points.shape == (len(dataset), 128, 3) and dataset.labels.shape == (len(dataset),)
    item = dataset[5]
    assert set(item) == {'pos', 'x', 'y'}
    assert item['pos'].shape == (128, 3) and item['pos'].dtype == np.float32 and item['x'] is item['pos']
    assert isinstance(item['y'], np.int64) and item['y'] == 1
    item['pos'][:] = 0.0
    assert dataset.points[5].any(), 'an item must be a copy: transforms work in place'
    test = EmbeddedShapes(split='val', **SMALL)
    assert len(test) == 2 * test.num_classes and test.partition == 'test'


def test_num_classes_selects_the_first_classes():
    subset = EmbeddedShapes(split='train', num_classes=3, **SMALL)
    full = EmbeddedShapes(split='train', **SMALL)
    assert subset.classes == full.classes[:3] and subset.num_classes == 3
    np.testing.assert_array_equal(subset.points, full.points[:12])


def test_unknown_keys_are_logged_once(caplog):
    module._LOGGED_IGNORED.clear()
    with caplog.at_level(logging.WARNING, logger=module.__name__):
        EmbeddedShapes(split='train', data_dir='./data/x', **SMALL)
        EmbeddedShapes(split='test', data_dir='./data/x', **SMALL)
    assert sum('data_dir' in record.getMessage() for record in caplog.records) == 1


@pytest.mark.parametrize('kwargs, match', [(dict(split='trainval'), "split must be 'train', 'val' or 'test'"),
                                           (dict(num_classes=11), r'num_classes must be in \[1, 10\]'),
                                           (dict(num_per_class_train=0), 'must be >= 1'),
                                           (dict(anisotropy=0.5), 'anisotropy must be >= 1')])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    arguments = {**SMALL, **kwargs}
    with pytest.raises(ValueError, match=match):
        EmbeddedShapes(**arguments)


def test_repr_shows_arguments():
    text = repr(EmbeddedShapes(split='test', **SMALL))
    assert "split='test'" in text and 'num_points=128' in text and 'num_per_class=2' in text


def test_registered_and_built_by_openpoints_dataloader():
    assert 'EmbeddedShapes' in DATASETS.module_dict and 'EmbeddedShapesPart' in DATASETS.module_dict
    cfg = EasyConfig()
    cfg.update({
        'dataset': {'common': {'NAME': 'EmbeddedShapes', 'data_dir': 'unused', **SMALL},
                    'train': {'split': 'train'}, 'val': {'split': 'val'}},
        'dataloader': {'num_workers': 0},
        'datatransforms': {'train': ['PointsToTensor', 'PointCloudScaleAndTranslate'], 'val': ['PointsToTensor'],
                           'kwargs': {'shift': [0.2, 0.2, 0.2]}},
    })
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # pin_memory without an accelerator
        loaders = {split: build_dataloader_from_cfg(8, cfg.dataset, cfg.dataloader, cfg.datatransforms,
                                                    split=split, distributed=False) for split in ('train', 'val')}
        batches = {split: next(iter(loader)) for split, loader in loaders.items()}
    assert len(loaders['train']) == 40 // 8 and len(loaders['val'].dataset) == 20
    for batch in batches.values():
        assert batch['pos'].shape == (8, 128, 3) and batch['pos'].dtype == torch.float32
        assert batch['x'].shape == (8, 128, 3) and batch['y'].shape == (8,) and batch['y'].dtype == torch.int64
    val = loaders['val'].dataset
    np.testing.assert_allclose(batches['val']['pos'].numpy(), val.points[:8])  # val: no augmentation
    assert not torch.allclose(batches['train']['pos'], torch.from_numpy(val.points[:8]))


def test_part_items_match_shapenetpartnormal():
    dataset = EmbeddedShapesPart(split='train', **SMALL)
    assert dataset.num_shape_classes == len(dataset.classes) == len(module.CLASS_NAMES)
    assert dataset.num_parts == dataset.num_classes == sum(dataset.parts_per_class)
    assert dataset.cls2partembed.shape == (dataset.num_shape_classes, dataset.num_parts)
    assert dataset.cls2partembed.sum().item() == dataset.num_parts
    item = dataset[9]
    category = int(item['cls'][0])
    assert set(item) == {'pos', 'x', 'cls', 'y'} and category == 2
    assert item['pos'].shape == item['x'].shape == (128, 3) and item['x'].dtype == np.float32
    assert item['cls'].shape == (1,) and item['cls'].dtype == np.int64
    assert item['y'].shape == (128,) and item['y'].dtype == np.int64
    assert set(item['y'].tolist()) <= set(dataset.cls2parts[category])
    np.testing.assert_allclose(np.linalg.norm(item['x'], axis=1), 1.0, atol=1e-4)
    subset = EmbeddedShapesPart(split='test', num_shape_classes=2, **SMALL)
    assert subset.num_parts == sum(module.PARTS_PER_CLASS[:2]) and subset.parts.max() < subset.num_parts


def test_part_items_collate_through_openpoints():
    cfg = EasyConfig()
    cfg.update({'dataset': {'common': {'NAME': 'EmbeddedShapesPart', **SMALL}, 'train': {'split': 'train'}},
                'dataloader': {'num_workers': 0},
                'datatransforms': {'train': ['PointsToTensor', 'PointCloudScaleAndTranslate'],
                                   'val': ['PointsToTensor']}})
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        batch = next(iter(build_dataloader_from_cfg(4, cfg.dataset, cfg.dataloader, cfg.datatransforms,
                                                    split='train', distributed=False)))
    assert batch['pos'].shape == batch['x'].shape == (4, 128, 3)
    assert batch['cls'].shape == (4, 1) and batch['y'].shape == (4, 128) and batch['y'].dtype == torch.int64
