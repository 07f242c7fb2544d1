"""tools/train.py trains PointNeXt-S on rotated, canonicalised fake ModelNet40 (cfgs/train rotated example)."""
from __future__ import annotations

import json

from conftest import make_fake_modelnet40
from openpoints_dd.utils.config import REPO_ROOT, load_config
from _tools import load_tool

CFG = REPO_ROOT / 'cfgs' / 'train' / 'modelnet40-rotated-pointnext-s-pcasign.yaml'


def _train_tool():
    return load_tool('train')


def test_pointnext_s_trains_one_epoch_through_canonicalize_on_rotated_data(tmp_path):
    data = make_fake_modelnet40(tmp_path / 'ModelNet40Ply2048', num_train=8, num_test=4, num_points=128)
    run_dir = tmp_path / 'run'
    overrides = [f'dataset.common.data_dir={data}', 'dataset.train.num_points=128', 'dataset.val.num_points=128',
                 'num_points=128', 'epochs=1', 'batch_size=4', 'val_batch_size=4', 'progress=False', 'device=cpu',
                 f'run_dir={run_dir}', 'max_train_batches=1', 'datatransforms.kwargs.rotator.NAME=PCASignRotator']
    assert _train_tool().main(['--cfg', str(CFG), *overrides]) == 0
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert len(metrics['history']) == 1 and metrics['num_params'] > 1e6
    saved = load_config(run_dir / 'cfg.yaml')
    assert saved.dataset.common.NAME == 'RotatedDataset' and saved.dataset.common.rotation.mode == 'so3'
    assert 'Canonicalize' in saved.datatransforms.train
    assert saved.datatransforms.val == ['PointsToTensor', 'Canonicalize']
