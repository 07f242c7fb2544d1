"""Teacher labels in tools/train.py: one epoch of each of the six classification backbones of cfgs/train on a tiny
distilled set, the loss of every batch from a cached teacher (tiny, written in place of a trained one)."""
from __future__ import annotations

import json

import pytest
import torch

from _artifacts import fake_modelnet40_artifact
from conftest import make_fake_modelnet40
from openpoints_dd.data.artifact import save_tensor_file
from openpoints_dd.labels import dataset_identity, teacher_path
from openpoints_dd.models import DistillPointNet
from openpoints_dd.utils.config import REPO_ROOT
from test_train_amp import BACKBONES, _train_main

TEACHER = str(REPO_ROOT / 'cfgs' / 'train' / 'teacher-pointnet-modelnet40.yaml')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('mn40')
    data_dir = make_fake_modelnet40(root / 'ModelNet40Ply2048')
    identity = dataset_identity({'common': {'NAME': 'ModelNet40Ply2048', 'data_dir': str(data_dir)},
                                 'train': {'split': 'train', 'num_points': 128}})
    cache = root / 'teachers'
    path, _ = teacher_path(TEACHER, [], str(cache))
    torch.manual_seed(0)
    save_tensor_file(path, DistillPointNet(num_classes=40, widths=(8, 16, 32)).state_dict(), {
        'kind': 'teacher', 'model': {'NAME': 'DistillPointNet', 'num_classes': 40, 'widths': [8, 16, 32]},
        'cfg_hash': 'test', 'test_oa': 3.0, 'test_macc': 3.0, 'epochs': 1, 'minutes': 0.1,
        'dataset': {'name': identity.name, 'num_classes': 40, 'class_names': list(identity.class_names)}})
    return {'data_dir': data_dir, 'cache': cache,
            'artifact': fake_modelnet40_artifact(root / 'gen.safetensors', data_dir)}


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_each_backbone_trains_one_epoch_on_teacher_labels(name, data, tmp_path):
    run_dir = tmp_path / 'run'
    labels = f"labels={{NAME: TeacherLabels, teacher: {TEACHER}, cache_dir: {data['cache']}}}"
    assert _train_main()(['--cfg', str(REPO_ROOT / 'cfgs' / 'train' / f'distilled-{name}-cpu.yaml'),
                          f"artifact={data['artifact']}", f"dataset.common.data_dir={data['data_dir']}", labels,
                          'num_points=128', 'dataset.train.num_points=128', 'dataset.val.num_points=128', 'epochs=1',
                          't_max=1', 'batch_size=4', 'val_batch_size=6', 'max_train_batches=2', 'max_val_batches=1',
                          'progress=False', 'device=cpu', f'run_dir={run_dir}', *BACKBONES[name]]) == 0
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics['last_epoch'] == 1 and torch.isfinite(torch.tensor(metrics['history'][0]['train_loss']))
    log = (run_dir / 'log.txt').read_text()
    assert "labels: {'labels': 'teacher labels'" in log and "'test_oa': 3.0" in log
    # metrics.json names the labels too: tools/evaluate.py's --model tables read them from there
    assert metrics['labels'] == 'teacher labels' and metrics['labels_report']['teacher']['test_oa'] == 3.0
