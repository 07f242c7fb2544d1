"""openpoints' ModelNet40Ply2048 loads the shared ModelNet40 copy through build_dataloader_from_cfg on CPU."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import openpoints_dd  # noqa: F401  (torchvision stub, collections.Iterable)
from openpoints.dataset import build_dataloader_from_cfg
from openpoints.utils import EasyConfig

# openpoints hard-codes pin_memory=True, which warns on a machine without an accelerator
pytestmark = pytest.mark.filterwarnings('ignore:.*pin_memory:UserWarning')

DATA_DIR = Path(__file__).resolve().parents[3].parent / 'shared' / 'data' / 'ModelNet40Ply2048'


@pytest.fixture(scope='module')
def cfg() -> EasyConfig:
    if not (DATA_DIR / 'modelnet40_ply_hdf5_2048').is_dir():
        message = f'ModelNet40Ply2048 not found at {DATA_DIR}'
        if os.environ.get('CI'):
            pytest.fail(message + ' (CI is set, so the data must be there)')
        pytest.skip(message)
    cfg = EasyConfig()
    # the parts of PointNeXt's cfgs/modelnet40ply2048/default.yaml that the loaders read
    cfg.update({
        'num_points': 1024,
        'dataset': {'common': {'NAME': 'ModelNet40Ply2048', 'data_dir': str(DATA_DIR)},
                    'train': {'split': 'train', 'num_points': 1024},
                    'val': {'split': 'test', 'num_points': 1024}},
        'datatransforms': {'train': ['PointsToTensor', 'PointCloudScaleAndTranslate'], 'val': ['PointsToTensor'],
                           'kwargs': {'shift': [0.2, 0.2, 0.2]}},
        'dataloader': {'num_workers': 0},
    })
    return cfg


def _loader(cfg: EasyConfig, split: str, batch_size: int = 8):
    return build_dataloader_from_cfg(batch_size, cfg.dataset, cfg.dataloader,
                                     datatransforms_cfg=cfg.datatransforms, split=split, distributed=False)


def _check_batch(batch, batch_size):
    assert batch['pos'].shape == (batch_size, 1024, 3) and batch['pos'].dtype == torch.float32
    assert batch['x'].shape == (batch_size, 1024, 3) and batch['x'].dtype == torch.float32
    assert batch['y'].shape == (batch_size,) and batch['y'].dtype == torch.int64
    assert ((batch['y'] >= 0) & (batch['y'] < 40)).all()
    torch.testing.assert_close(batch['x'], batch['pos'])                    # no heights: x is pos


def test_train_split(cfg):
    loader = _loader(cfg, 'train')
    dataset = loader.dataset
    assert len(dataset) == 9840 and dataset.num_classes == 40 and len(dataset.classes) == 40
    assert len(loader) == 9840 // 8                                          # drop_last on train
    _check_batch(next(iter(loader)), 8)


def test_val_and_test_splits_are_the_official_test_set(cfg):
    for split in ('val', 'test'):
        loader = _loader(cfg, split)
        assert len(loader.dataset) == 2468 and loader.dataset.num_classes == 40
        batch = next(iter(loader))
        _check_batch(batch, 8)
        # no shuffling and no augmentation: the first cloud is the stored one
        torch.testing.assert_close(batch['pos'][0], torch.from_numpy(loader.dataset.data[0][:1024]))


# ----------------------------------------------------------- no download: a missing folder is a clear error
def test_missing_data_dir_is_a_clear_error_and_creates_nothing(tmp_path):
    from openpoints.dataset.modelnet.modelnet40_ply_2048_loader import ModelNet40Ply2048
    missing = tmp_path / 'nowhere' / 'ModelNet40Ply2048'
    with pytest.raises(FileNotFoundError, match=r"dataset.common.data_dir .*does not exist.*does not download"):
        ModelNet40Ply2048(data_dir=str(missing), split='train')
    assert not missing.exists() and not missing.parent.exists()       # upstream would mkdir it, then download


def test_empty_data_dir_is_a_clear_error(tmp_path):
    from openpoints.dataset.modelnet.modelnet40_ply_2048_loader import ModelNet40Ply2048
    with pytest.raises(FileNotFoundError, match=r'holds no modelnet40_ply_hdf5_2048/ply_data_test\*\.h5 \(an empty'):
        ModelNet40Ply2048(data_dir=str(tmp_path), split='val')


def test_a_foreign_class_list_is_named_with_the_dataset_that_reads_it(tmp_path, caplog):
    from conftest import make_fake_modelnet40
    from openpoints.dataset.modelnet.modelnet40_ply_2048_loader import ModelNet40Ply2048
    root = make_fake_modelnet40(tmp_path / 'mine', num_train=4, num_test=2)
    with caplog.at_level('WARNING'):
        dataset = ModelNet40Ply2048(data_dir=str(root), split='train')
    assert len(dataset) == 4 and 'PointCloudFolderDataset' in caplog.text and 'lists 40 classes' in caplog.text
