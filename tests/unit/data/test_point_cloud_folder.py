"""PointCloudFolderDataset: the three layouts, classes from the data, openpoints' normalisation, the file cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHAPE_NAMES, make_class_folders, make_h5_dataset, write_cloud
from openpoints.dataset import build_dataloader_from_cfg
from openpoints.dataset.build import DATASETS
from openpoints.utils import EasyConfig
from openpoints_dd.data import PointCloudFolderDataset, RealPool
from openpoints_dd.data.point_cloud_folder import read_cloud

pytestmark = pytest.mark.filterwarnings('ignore:.*pin_memory:UserWarning')


def _build(data_dir, split='train', **kwargs):
    return PointCloudFolderDataset(data_dir=str(data_dir), split=split, num_points=kwargs.pop('num_points', 128),
                                   **kwargs)


@pytest.mark.parametrize('style', ['modelnet', 'scanobjectnn'])
def test_h5_layouts_take_class_names_and_count_from_the_data(tmp_path, style):
    root = make_h5_dataset(tmp_path / 'my_shapes', style=style)
    train, test = _build(root), _build(root, 'test')
    assert train.layout == test.layout == 'h5' and train.name == 'my_shapes'
    assert train.classes == test.classes == list(SHAPE_NAMES) and train.num_classes == 4
    assert len(train) == 24 and len(test) == 12 and train.points.shape == (24, 128, 3)
    assert np.bincount(train.labels).tolist() == [6, 6, 6, 6]
    assert len(_build(root, 'val')) == 12                                  # no val files: val is test (openpoints)
    # h5 clouds are taken as stored (openpoints' h5 loaders do not normalise); 'unit_sphere' normalises them
    assert np.abs(train.points).max() > 2
    normalised = _build(root, normalize='unit_sphere')
    radius = np.linalg.norm(normalised.points, axis=2).max(axis=1)
    np.testing.assert_allclose(radius, 1.0, rtol=1e-5)
    np.testing.assert_allclose(normalised.points.mean(axis=1), 0.0, atol=1e-5)


def test_h5_without_names_file_names_classes_by_label_id(tmp_path):
    root = make_h5_dataset(tmp_path / 'plain', style='scanobjectnn')
    (root / 'shape_names.txt').unlink()
    assert _build(root, 'test').classes == ['0', '1', '2', '3']


def test_h5_files_pick_one_variant_and_bad_globs_are_errors(tmp_path):
    root = make_h5_dataset(tmp_path / 'scan', style='scanobjectnn')
    picked = _build(root, h5_files={'train': 'training_objectdataset.h5', 'test': 'test_objectdataset.h5'})
    assert len(picked) == 24
    with pytest.raises(FileNotFoundError, match=r"no h5 file of split 'train'.*Set h5_files"):
        _build(root, h5_files={'train': 'nothing*.h5', 'test': '*test*.h5'})
    with pytest.raises(ValueError, match='match both the train and the test glob'):
        _build(root, h5_files={'train': '*.h5', 'test': '*test*.h5'})
    with pytest.raises(ValueError, match='h5_files needs globs for train and test'):
        _build(root, h5_files={'training': '*.h5'})


def test_h5_errors_name_the_fix(tmp_path):
    root = make_h5_dataset(tmp_path / 'few', style='modelnet', num_points=64)
    with pytest.raises(ValueError, match='stores 64 points per cloud but num_points is 128; lower num_points'):
        _build(root)
    (root / 'modelnet40_ply_hdf5_2048' / 'shape_names.txt').write_text('a\nb\n')
    with pytest.raises(ValueError, match=r'names 2 classes; it must list one name per label'):
        _build(root, num_points=64)


def test_class_folders_read_every_file_format(tmp_path):
    root = make_class_folders(tmp_path / 'scans')
    train = _build(root)
    assert train.layout == 'class_folders' and train.classes == sorted(SHAPE_NAMES) and len(train) == 24
    # clouds are unit-sphere normalised, as openpoints' ModelNet text loader does (pc_normalize)
    np.testing.assert_allclose(np.linalg.norm(train.points, axis=2).max(axis=1), 1.0, rtol=1e-5)
    assert np.bincount(train.labels).tolist() == [6, 6, 6, 6]
    assert _build(root, 'test').classes == train.classes and len(_build(root, 'test')) == 12


def test_read_cloud_formats_agree(tmp_path):
    cloud = np.random.default_rng(0).normal(size=(50, 3)).astype('float32')
    for suffix in ('.txt', '.xyz', '.npy', '.ply'):
        write_cloud(tmp_path / f'c{suffix}', cloud)
        np.testing.assert_allclose(read_cloud(tmp_path / f'c{suffix}'), cloud, atol=1e-5)
    binary = tmp_path / 'b.ply'
    header = (f'ply\nformat binary_little_endian 1.0\nelement vertex {len(cloud)}\nproperty float x\n'
              f'property float y\nproperty float z\nproperty uchar red\nelement face 0\n'
              f'property list uchar int vertex_indices\nend_header\n').encode()
    rows = np.zeros(len(cloud), dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('red', 'u1')])
    rows['x'], rows['y'], rows['z'] = cloud.T
    binary.write_bytes(header + rows.tobytes())
    np.testing.assert_array_equal(read_cloud(binary), cloud)
    (tmp_path / 'bad.txt').write_text('1 2\n3 4\n')
    with pytest.raises(ValueError, match=r'bad.txt: expected \(n, >=3\) points'):
        read_cloud(tmp_path / 'bad.txt')
    with pytest.raises(ValueError, match='cannot read a point cloud: not a PLY file'):
        (tmp_path / 'x.ply').write_text('nope\n')
        read_cloud(tmp_path / 'x.ply')


def test_short_clouds_repeat_their_points(tmp_path):
    root = make_class_folders(tmp_path / 'short', num_points=40, suffixes=('.npy',))
    dataset = _build(root, num_points=64, normalize='none')
    stored = np.load(sorted((root / sorted(SHAPE_NAMES)[0] / 'train').iterdir())[0])
    np.testing.assert_array_equal(dataset.points[0], stored[np.arange(64) % 40])


def test_folder_parse_is_cached_and_a_changed_or_corrupt_source_invalidates_it(tmp_path, caplog):
    root = make_class_folders(tmp_path / 'cached', suffixes=('.txt',))
    cache = tmp_path / 'cache'
    first = _build(root, cache_dir=str(cache))
    (cache_file,) = cache.glob('cached-*-train.npz')
    with caplog.at_level('INFO'):
        again = _build(root, cache_dir=str(cache))
    assert 'from the cache' in caplog.text and np.array_equal(first.points, again.points)
    with np.load(cache_file, allow_pickle=False) as blob:   # no pickle: plain arrays only
        assert set(blob.files) == {'format', 'manifest', 'points', 'offsets', 'labels'}

    # a changed source file: parsed again, the new points served
    changed = sorted((root / 'chair' / 'train').iterdir())[0]
    write_cloud(changed, np.full((256, 3), 0.5, dtype='float32') + np.eye(3)[np.arange(256) % 3])
    caplog.clear()
    with caplog.at_level('INFO'):
        updated = _build(root, cache_dir=str(cache), normalize='none')
    assert 'source files changed' in caplog.text
    assert np.allclose(updated.points[updated.labels == 0][0][:3], 0.5 + np.eye(3), atol=1e-5)
    # a new file: parsed again
    write_cloud(root / 'chair' / 'train' / 'extra.xyz', np.ones((256, 3), dtype='float32'))
    assert len(_build(root, cache_dir=str(cache))) == 25
    # a corrupt cache: a warning, then parsed again and rewritten
    cache_file.write_bytes(b'not a zip')
    caplog.clear()
    with caplog.at_level('WARNING'):
        assert len(_build(root, cache_dir=str(cache))) == 25
    assert 'unreadable' in caplog.text
    assert len(_build(root, cache_dir=str(cache))) == 25                   # the rewritten cache reads back


def test_items_follow_openpoints_format_through_build_dataloader(tmp_path):
    root = make_h5_dataset(tmp_path / 'loaded')
    cfg = EasyConfig()
    cfg.update({'dataset': {'common': {'NAME': 'PointCloudFolderDataset', 'data_dir': str(root)},
                            'train': {'split': 'train', 'num_points': 128},
                            'val': {'split': 'test', 'num_points': 128}},
                'datatransforms': {'train': ['PointsToTensor', 'PointCloudScaleAndTranslate'],
                                   'val': ['PointsToTensor'], 'kwargs': {'shift': [0.2, 0.2, 0.2]}},
                'dataloader': {'num_workers': 0}})
    loader = build_dataloader_from_cfg(4, cfg.dataset, cfg.dataloader, datatransforms_cfg=cfg.datatransforms,
                                       split='train', distributed=False)
    batch = next(iter(loader))
    assert batch['pos'].shape == (4, 128, 3) and batch['x'].shape == (4, 128, 3) and batch['y'].dtype == torch.int64
    val = build_dataloader_from_cfg(4, cfg.dataset, cfg.dataloader, datatransforms_cfg=cfg.datatransforms,
                                    split='val', distributed=False)
    first = next(iter(val))
    torch.testing.assert_close(first['pos'][0], torch.from_numpy(val.dataset.points[0]))   # not shuffled


def test_real_pool_records_the_datasets_own_name(tmp_path):
    root = make_h5_dataset(tmp_path / 'folder_name')
    common = {'NAME': 'PointCloudFolderDataset', 'data_dir': str(root)}
    pool = RealPool.from_dataset_cfg({'common': common, 'train': {'split': 'train'}}, num_points=64)
    assert pool.name == 'folder_name' and pool.class_names == list(SHAPE_NAMES) and pool.num_classes == 4
    named = RealPool.from_dataset_cfg({'common': {**common, 'name': 'mugs-and-lamps'}}, num_points=64)
    assert named.name == 'mugs-and-lamps'


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset.common.data_dir '.*missing' does not exist"):
        _build(tmp_path / 'missing')
    root = make_h5_dataset(tmp_path / 'ok')
    with pytest.raises(ValueError, match=r"split must be one of .*got 'validation'"):
        _build(root, 'validation')
    with pytest.raises(ValueError, match='layout must be one of'):
        _build(root, layout='zip')
    with pytest.raises(ValueError, match='normalize must be one of'):
        _build(root, normalize='max')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='holds none of the layouts'):
        _build(tmp_path / 'empty')
    folders = make_class_folders(tmp_path / 'only_train')
    for class_dir in folders.iterdir():
        for item in (class_dir / 'test').iterdir():
            item.unlink()
    with pytest.raises(FileNotFoundError, match=r"no .* file under .*for split 'test'"):
        _build(folders, 'test')
    with pytest.raises(TypeError, match='PointCloudFolderDataset'):   # no **kwargs: a misspelt key fails by name
        DATASETS.build({'NAME': 'PointCloudFolderDataset', 'data_dir': str(root), 'datadir': 'x'})


def test_repr_shows_the_settings(tmp_path):
    text = repr(_build(make_h5_dataset(tmp_path / 'r')))
    assert "name='r'" in text and "layout='h5'" in text and 'classes=4' in text and "normalize='auto'" in text


def test_openpoints_loader_on_a_foreign_class_list_names_the_fix(tmp_path):
    """The same 4-class folder read as openpoints' ModelNet40Ply2048 sees 40 hard-coded classes: the error says which
    dataset reads the data's own class list."""
    root = make_h5_dataset(tmp_path / 'four', num_points=128)
    cfg = {'common': {'NAME': 'ModelNet40Ply2048', 'data_dir': str(root)}, 'train': {'split': 'train'}}
    with pytest.raises(ValueError, match=r"real dataset ModelNet40Ply2048 has no training clouds for classes "
                                         r"\['bookshelf', .*\(36 of the 40 classes .*NAME: PointCloudFolderDataset"):
        RealPool.from_dataset_cfg(cfg, num_points=128)


def test_malformed_files_are_named(tmp_path):
    import h5py
    root = tmp_path / 'bad_h5'
    root.mkdir()
    with h5py.File(root / 'train.h5', 'w') as f:
        f['data'] = np.zeros((2, 16, 3), dtype='float32')
    with h5py.File(root / 'test.h5', 'w') as f:
        f['data'] = np.zeros((2, 16), dtype='float32')
        f['label'] = np.zeros(2, dtype='int64')
    with pytest.raises(ValueError, match=r"train.h5 has no \['label'\] dataset .*need `data` \(n, P, 3\) and `label`"):
        _build(root, num_points=16)
    with pytest.raises(ValueError, match=r'test.h5 holds data \(2, 16\) and label \(2,\); expected \(n, P, >=3\)'):
        _build(root, 'test', num_points=16)
    with pytest.raises(ValueError, match='num_points must be >= 1'):
        _build(root, num_points=0)
    (tmp_path / 'faces.ply').write_text('ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int i\nend_header\n')
    with pytest.raises(ValueError, match=r'no vertex element \(elements: \[.face.\]\)'):
        read_cloud(tmp_path / 'faces.ply')
    (tmp_path / 'uv.ply').write_text('ply\nformat ascii 1.0\nelement vertex 1\nproperty float u\nend_header\n0\n')
    with pytest.raises(ValueError, match=r'no x, y, z properties \(it has \[.u.\]\)'):
        read_cloud(tmp_path / 'uv.ply')
    with pytest.raises(ValueError, match="unknown suffix '.obj'"):
        read_cloud(tmp_path / 'x.obj')
