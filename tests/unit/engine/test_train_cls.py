"""train_classifier on a tiny fake ModelNet40Ply2048 folder: training, checkpoints, resume, test mode, errors."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

import openpoints_dd  # noqa: F401  (registers models, CPU fallbacks)
from conftest import make_fake_modelnet40
from openpoints.dataset.build import DATASETS
from openpoints.models import build_model_from_cfg
from openpoints.utils import EasyConfig
from openpoints_dd.engine.train_checkpoint import find_checkpoint, load_model_weights
from openpoints_dd.engine.train_cls import BEST_NOTE, resample_points, train_classifier, Trainer
from openpoints_dd.utils.config import load_config

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
NUM_TRAIN, NUM_TEST = 8, 6

POINTNEXT_S = {  # PointNeXt's cfgs/modelnet40ply2048/pointnext-s.yaml model section
    'NAME': 'BaseCls',
    'encoder_args': {'NAME': 'PointNextEncoder', 'blocks': [1, 1, 1, 1, 1, 1], 'strides': [1, 2, 2, 2, 2, 1],
                     'width': 32, 'in_channels': 3, 'radius': 0.15, 'radius_scaling': 1.5, 'sa_layers': 2,
                     'sa_use_res': True, 'nsample': 32, 'expansion': 4,
                     'aggr_args': {'feature_type': 'dp_fj', 'reduction': 'max'},
                     'group_args': {'NAME': 'ballquery', 'normalize_dp': True},
                     'conv_args': {'order': 'conv-norm-act'}, 'act_args': {'act': 'relu'}, 'norm_args': {'norm': 'bn'}},
    'cls_args': {'NAME': 'ClsHead', 'num_classes': 40, 'mlps': [512, 256], 'norm_args': {'norm': 'bn1d'}},
}
POINTNET = {'NAME': 'DistillPointNet', 'num_classes': 40, 'widths': [16, 32, 64]}


@pytest.fixture(scope='module')
def fake_data(tmp_path_factory) -> Path:
    return make_fake_modelnet40(tmp_path_factory.mktemp('data') / 'ModelNet40Ply2048')


def tiny_cfg(data_dir: Path, model: dict = POINTNET, **overrides) -> EasyConfig:
    cfg = {
        'dataset': {'common': {'NAME': 'ModelNet40Ply2048', 'data_dir': str(data_dir)},
                    'train': {'split': 'train', 'num_points': 2048}, 'val': {'split': 'test', 'num_points': 2048}},
        'datatransforms': {'train': ['PointsToTensor', 'PointCloudScaleAndTranslate'], 'val': ['PointsToTensor'],
                           'kwargs': {'shift': [0.2, 0.2, 0.2]}},
        'model': model, 'num_classes': 40, 'num_points': 128, 'epochs': 1, 'batch_size': 4, 'val_batch_size': 4,
        'lr': 1e-3, 'optimizer': {'NAME': 'adamw', 'weight_decay': 0.05}, 'progress': False, 'seed': 0,
        'device': 'cpu',
    }
    cfg.update(overrides)
    out = EasyConfig()
    out.update(json.loads(json.dumps(cfg)))  # EasyConfig.update(dict) builds nested EasyConfigs (deep copies)
    return out


@pytest.fixture(scope='module')
def pointnet_run(fake_data, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp('pointnet_run')
    return run_dir, train_classifier(tiny_cfg(fake_data), run_dir)


# ------------------------------------------------------------------------------------------ resampling
@pytest.mark.parametrize('method', ['fps', 'random', 'first'])
@pytest.mark.parametrize('num_in,num_out', [(2048, 100), (300, 256), (64, 64), (50, 64)])
def test_resample_points_keeps_input_points(method, num_in, num_out):
    points = torch.randn(3, num_in, 4)
    out = resample_points(points, num_out, method)
    assert out.shape == (3, min(num_in, num_out), 4)
    for cloud, sub in zip(points, out):
        matches = (sub[:, None, :] == cloud[None, :, :]).all(-1)     # (M, N): every output point is an input point
        assert matches.any(1).all()
        assert matches.any(0).sum() == sub.shape[0], 'a point was picked twice'


def test_resample_points_first_is_a_prefix_and_fps_spreads():
    points = torch.zeros(1, 10, 3)
    points[0, :, 0] = torch.arange(10.)             # points on a line: FPS from point 0 takes the far end next
    assert torch.equal(resample_points(points, 4, 'first'), points[:, :4])
    picked = resample_points(points, 2, 'fps')[0, :, 0]
    assert set(picked.tolist()) <= {0., 9., 5., 4.}  # drawn from FPS's first round(2*1.17)=2 points {0, 9}


def test_resample_points_rejects_unknown_method():
    with pytest.raises(ValueError, match="'fps', 'random' or 'first'"):
        resample_points(torch.randn(1, 10, 3), 4, 'grid')


# ------------------------------------------------------------------------------------------ training
def test_pointnet_one_epoch_writes_metrics_checkpoints_and_logs(pointnet_run):
    run_dir, result = pointnet_run
    for name in ('cfg.yaml', 'log.txt', 'metrics.json', 'checkpoint/last.safetensors', 'checkpoint/last.json',
                 'checkpoint/last_state.pt', 'checkpoint/best.safetensors', 'checkpoint/best.json'):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics == json.loads(json.dumps(result))
    for key in ('last_epoch', 'last_oa', 'last_macc', 'best_epoch', 'best_oa', 'best_macc', 'best_note', 'history',
                'seed', 'device', 'num_params', 'cfg_hash', 'eval_split', 'last_acc_per_class', 'classes'):
        assert key in metrics, key
    assert metrics['best_note'] == BEST_NOTE and "papers' protocol" in BEST_NOTE
    assert metrics['last_epoch'] == metrics['best_epoch'] == 1 and metrics['eval_split'] == 'test'
    assert 0 <= metrics['last_oa'] <= 100 and len(metrics['last_acc_per_class']) == 40
    assert [h['epoch'] for h in metrics['history']] == [1] and np.isfinite(metrics['history'][0]['train_loss'])
    log = (run_dir / 'log.txt').read_text()
    assert f'run dir {run_dir}' in log and 'device cpu' in log and 'seed 0' in log and 'epoch 1/1' in log


def test_checkpoints_reload_safely(pointnet_run, fake_data):
    run_dir, result = pointnet_run
    state = torch.load(run_dir / 'checkpoint' / 'last_state.pt', map_location='cpu', weights_only=True)
    assert set(state) == {'optimizer', 'scheduler', 'rng'} and state['optimizer']['state']
    weights = load_file(str(run_dir / 'checkpoint' / 'last.safetensors'))
    model = build_model_from_cfg(EasyConfig(POINTNET))
    info = load_model_weights(model, find_checkpoint(run_dir, 'last'))
    assert info['epoch'] == 1 and info['format'].startswith('openpoints_dd.train_cls')
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    saved = load_config(run_dir / 'cfg.yaml')
    assert saved.seed == 0 and saved.num_points == 128 and saved.model.NAME == 'DistillPointNet'


def test_same_seed_in_process_gives_the_same_run(pointnet_run, fake_data, tmp_path):
    _, first = pointnet_run
    again = train_classifier(tiny_cfg(fake_data), tmp_path)
    assert again['history'][0]['train_loss'] == first['history'][0]['train_loss']
    assert again['last_oa'] == first['last_oa']


@pytest.mark.parametrize('device', DEVICES)
def test_pointnext_s_one_epoch(fake_data, tmp_path, device):
    cfg = tiny_cfg(fake_data, POINTNEXT_S, device=device, grad_norm_clip=1,
                   criterion_args={'NAME': 'SmoothCrossEntropy', 'label_smoothing': 0.2})
    result = train_classifier(cfg, tmp_path)
    assert result['device'].startswith(device) and result['num_params'] > 1e6
    assert np.isfinite(result['history'][0]['train_loss'])
    weights = load_file(str(tmp_path / 'checkpoint' / 'best.safetensors'))
    assert any(k.startswith('encoder.') for k in weights)


def test_resume_continues_at_the_next_epoch_like_an_uninterrupted_run(fake_data, tmp_path):
    # cloud size = num_points (no resampling) and a permutation-invariant model: the dataset's in-place point
    # shuffling then cannot change the result, so the resumed run must match the uninterrupted one
    cfg = tiny_cfg(fake_data, point_resampling='first', epochs=2, t_max=2)
    cfg.dataset.train.num_points = cfg.dataset.val.num_points = 128
    straight = train_classifier(cfg, tmp_path / 'straight')
    train_classifier({**cfg, 'epochs': 1}, tmp_path / 'part1')   # t_max 2: the same schedule as the 2-epoch run
    resumed_cfg = {**cfg, 'mode': 'resume', 'pretrained_path': str(tmp_path / 'part1')}
    resumed = train_classifier(resumed_cfg, tmp_path / 'part2')
    assert [h['epoch'] for h in resumed['history']] == [1, 2]
    assert 'continuing at epoch 2' in (tmp_path / 'part2' / 'log.txt').read_text()
    for a, b in zip(straight['history'], resumed['history']):
        assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-4)
        assert a['lr'] == pytest.approx(b['lr'])
    assert resumed['last_oa'] == pytest.approx(straight['last_oa'])


def test_test_mode_reproduces_the_final_validation(pointnet_run, fake_data, tmp_path):
    run_dir, result = pointnet_run
    cfg = tiny_cfg(fake_data, mode='test', pretrained_path=str(run_dir))
    tested = train_classifier(cfg, tmp_path)
    assert tested['mode'] == 'test' and tested['split'] == 'test' and tested['checkpoint_epoch'] == 1
    assert tested['oa'] == pytest.approx(result['last_oa']) and tested['macc'] == pytest.approx(result['last_macc'])
    assert json.loads((tmp_path / 'metrics.json').read_text())['oa'] == tested['oa']


def test_separate_test_split_is_tested_with_last_and_best(fake_data, tmp_path):
    cfg = tiny_cfg(fake_data)
    cfg.dataset.val.split = 'train'      # validate on train, test on test: a distinct test section
    cfg.dataset.test = EasyConfig(split='test', num_points=2048)
    result = train_classifier(cfg, tmp_path)
    assert result['eval_split'] == 'train' and result['test_split'] == 'test'
    assert {'test_last_oa', 'test_last_macc', 'test_best_oa', 'test_best_macc'} <= set(result)


def test_no_weight_decay_models_build_their_optimizer(fake_data, tmp_path):
    class WithSkipList(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.token = torch.nn.Parameter(torch.zeros(2, 4))
            self.linear = torch.nn.Linear(4, 4)

        def no_weight_decay(self):
            return {'token'}

    trainer = Trainer(tiny_cfg(fake_data), tmp_path, None)
    model = WithSkipList()
    optimizer, _ = trainer._build_optimizer(model)   # openpoints alone: AttributeError 'module'
    no_decay = [g for g in optimizer.param_groups if g['weight_decay'] == 0]
    assert any(p is model.token for g in no_decay for p in g['params'])
    assert not hasattr(model, 'module')


@DATASETS.register_module(force=True)
class TrainClsTestPlainDataset(Dataset):
    """A dataset with neither `classes` nor `num_classes` nor `data_dir`: only the openpoints item contract."""

    def __init__(self, split: str = 'train', transform=None, size: int = 8, num_points: int = 64):
        generator = torch.Generator().manual_seed(0 if split == 'train' else 1)
        self.pos = torch.randn(size, num_points, 3, generator=generator)
        self.y = torch.arange(size) % 3

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {'pos': self.pos[i], 'x': self.pos[i], 'y': self.y[i]}


def test_a_dataset_without_classes_trains_with_numbered_classes(tmp_path, caplog):
    cfg = EasyConfig()
    cfg.update({'dataset': {'common': {'NAME': 'TrainClsTestPlainDataset', 'num_points': 64},
                            'train': {'size': 8}, 'val': {'size': 5}},
                'model': {'NAME': 'DistillPointNet', 'num_classes': 3, 'widths': [8, 16, 32]},
                'num_classes': 3, 'num_points': 64, 'epochs': 2, 'val_freq': 5, 'batch_size': 4, 'lr': 1e-2,
                'optimizer': {'NAME': 'momentum'}, 'sched': None, 'progress': False, 'tensorboard': True})
    result = train_classifier(cfg, tmp_path)
    assert result['classes'] == ['0', '1', '2'] and result['eval_split'] == 'val'
    assert [('val_oa' in h) for h in result['history']] == [False, True]  # the last epoch is always validated
    assert result['history'][0]['lr'] == result['history'][1]['lr'] == 1e-2  # sched: null keeps lr constant
    assert list(tmp_path.glob('events.out.tfevents*')) or 'tensorboard is not installed' in caplog.text


# ------------------------------------------------------------------------------------------ errors
def test_num_classes_mismatch_is_a_clear_error(fake_data, tmp_path):
    cfg = tiny_cfg(fake_data, model={**POINTNET, 'num_classes': 10}, num_classes=10)
    with pytest.raises(ValueError, match='num_classes is 10 but the train dataset ModelNet40Ply2048 has 40'):
        train_classifier(cfg, tmp_path)


def test_model_head_mismatch_is_a_clear_error(fake_data, tmp_path):
    cfg = tiny_cfg(fake_data, model={**POINTNET, 'num_classes': 10})
    with pytest.raises(ValueError, match=r'logits of shape \(2, 10\) for 2 clouds but num_classes is 40'):
        train_classifier(cfg, tmp_path)


def test_empty_train_loader_suggests_a_batch_size(fake_data, tmp_path):
    with pytest.raises(ValueError, match=f'batch_size<={NUM_TRAIN} or repeat'):
        train_classifier(tiny_cfg(fake_data, batch_size=16), tmp_path)


def test_missing_data_dir_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match='dataset.common.data_dir'):
        train_classifier(tiny_cfg(tmp_path / 'nowhere'), tmp_path)


@pytest.mark.parametrize('key,value,message', [
    ('optimizer', None, 'lacks optimizer'),
    ('mode', 'pretrain', 'mode must be one of'),
    ('device', 'tpu', "device must be 'cpu'"),
    ('batch_size', 0, 'batch_size must be >= 1'),
    ('amp', 'bogus', r"amp must be one of null, 'fp32'.*'bf16'.*got 'bogus'"),
    ('amp', 'fp16', r"amp must be one of .*got 'fp16'"),
])
def test_bad_settings_are_reported(fake_data, tmp_path, key, value, message):
    cfg = tiny_cfg(fake_data)
    cfg[key] = value
    with pytest.raises(ValueError, match=message):
        train_classifier(cfg, tmp_path)


def test_resume_needs_a_checkpoint(fake_data, tmp_path):
    cfg = tiny_cfg(fake_data, mode='resume', pretrained_path=str(tmp_path / 'none'))
    with pytest.raises(FileNotFoundError, match='no checkpoint at'):
        train_classifier(cfg, tmp_path / 'run')


def test_amp_bf16_runs_the_forward_in_bf16_and_the_loss_in_fp32(fake_data, tmp_path, monkeypatch):
    seen = {'logits': set(), 'loss': set()}
    original = Trainer._build_model

    def build(self):
        model = original(self)
        # _check_head's forward (before training, outside amp) is fp32; training and validation run under amp
        model.register_forward_hook(lambda module, args, out: seen['logits'].add(out.dtype) if module.training
                                    or len(seen['loss']) else None)
        model.criterion.register_forward_hook(lambda module, args, out: seen['loss'].add(out.dtype))
        return model
    monkeypatch.setattr(Trainer, '_build_model', build)
    cfg = tiny_cfg(fake_data, POINTNEXT_S, amp='bf16', max_train_batches=1, max_val_batches=1,
                   criterion_args={'NAME': 'SmoothCrossEntropy', 'label_smoothing': 0.2})
    result = train_classifier(cfg, tmp_path)
    assert seen == {'logits': {torch.bfloat16}, 'loss': {torch.float32}}
    assert np.isfinite(result['history'][0]['train_loss'])


def test_a_wrong_labels_section_fails_before_any_data_loads(fake_data, tmp_path):
    with pytest.raises(TypeError, match='Check the keys of the labeler section'):
        train_classifier(tiny_cfg(fake_data, labels={'NAME': 'TeacherLabels'}), tmp_path)      # no teacher YAML
    with pytest.raises(KeyError, match='Registered labelers'):
        train_classifier(tiny_cfg(fake_data, labels={'NAME': 'SoftLabels'}), tmp_path)


def test_loader_workers_are_capped_to_the_cores(fake_data, tmp_path, monkeypatch, caplog):
    from openpoints_dd.engine import train_data
    monkeypatch.setattr(train_data, 'available_cores', lambda: 1)
    trainer = Trainer(tiny_cfg(fake_data, dataloader={'num_workers': 6}), tmp_path, None)
    with caplog.at_level('INFO'):
        loader = trainer._loader('train', 4)
    assert loader.num_workers == 1 and 'dataloader.num_workers 6 -> 1: the cores this process may use' in caplog.text


def test_only_data_folders_the_dataset_opens_are_checked():
    from openpoints_dd.engine.train_data import dataset_reads
    assert dataset_reads('ModelNet40Ply2048', 'data_dir') and dataset_reads('ShapeNetPartNormal', 'data_root')
    assert dataset_reads('PointCloudFolderDataset', 'data_dir')
    assert not dataset_reads('EmbeddedShapesPart', 'data_root')      # it would ignore PointNeXt's data_root
    assert dataset_reads('NoSuchDataset', 'data_dir')                 # unknown: checked


def test_a_missing_folder_names_the_dataset_the_artifact_came_from(tmp_path):
    from openpoints_dd.data import save_artifact
    metadata = {'kind': 'points', 'cpc': 1, 'num_points': 16, 'synthesizer': {'NAME': 'ExplicitPoints'},
                'objective': {'NAME': 'GradientMatching'}, 'rotator': {'NAME': 'IdentityRotator'},
                'dataset': {'name': 'EmbeddedShapes', 'num_classes': 2, 'class_names': ['a', 'b']}}
    path = save_artifact(tmp_path / 'a.safetensors', {'pos': torch.rand(2, 16, 3), 'y': torch.arange(2)}, metadata)
    cfg = tiny_cfg(tmp_path / 'nowhere', artifact=str(path))
    with pytest.raises(FileNotFoundError, match=r"dataset.common.data_dir .*not found.*distilled from EmbeddedShapes: "
                                                r"to test on that dataset instead, set "
                                                r"dataset.common.NAME=EmbeddedShapes"):
        train_classifier(cfg, tmp_path / 'run')


def test_an_artifact_of_another_dataset_is_named_as_such(fake_data, tmp_path):
    """A 2-class artifact trained with a ModelNet40 YAML: the class lists differ, and the message says why."""
    from openpoints_dd.data import save_artifact
    metadata = {'kind': 'points', 'cpc': 2, 'num_points': 2048, 'synthesizer': {'NAME': 'ExplicitPoints'},
                'objective': {'NAME': 'GradientMatching'}, 'rotator': {'NAME': 'IdentityRotator'},
                'dataset': {'name': 'mine', 'num_classes': 2, 'class_names': ['a', 'b']}}
    path = save_artifact(tmp_path / 'a.safetensors', {'pos': torch.rand(4, 2048, 3), 'y': torch.tensor([0, 0, 1, 1])},
                         metadata)
    with pytest.raises(ValueError, match=r'was distilled from mine \(2 classes: a, b, ...\) but this config tests on '
                                         r'ModelNet40Ply2048 \(40 classes: .*Point dataset.common'):
        train_classifier(tiny_cfg(fake_data, artifact=str(path)), tmp_path / 'run')
    # the same class count and names, another dataset: refused too (it trained silently before)
    from openpoints_dd.labels import DatasetIdentity, dataset_identity
    real = dataset_identity({'common': {'NAME': 'ModelNet40Ply2048', 'data_dir': str(fake_data)}, 'train': {}})
    other = save_artifact(tmp_path / 'b.safetensors', {'pos': torch.rand(40, 2048, 3), 'y': torch.arange(40)},
                          {**metadata, 'cpc': 1, 'dataset': {'name': 'ScanObjectNN', 'num_classes': 40,
                                                             'class_names': list(real.class_names)}})
    with pytest.raises(ValueError, match=r'was distilled from ScanObjectNN \(40 classes'):
        train_classifier(tiny_cfg(fake_data, artifact=str(other)), tmp_path / 'run2')
