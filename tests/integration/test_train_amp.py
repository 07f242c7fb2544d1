"""`amp: bf16` trains one epoch of each classification backbone of cfgs/train, the six and PointMLP-elite
(tools/train.py on a tiny distilled set): finite losses, and parameters and optimizer state still fp32 after the
epoch; and one part segmentation epoch (the part-segmentation trainer shares the loop)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from _artifacts import fake_modelnet40_artifact
from _tools import load_tool
from conftest import make_fake_modelnet40
from openpoints_dd.utils.config import REPO_ROOT

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
# 128 points: PCT's two FPS stages and PointMLP's four halvings need their sizes scaled down with the input
POINTMLP_128 = ['model.points=128', 'model.k_neighbors=[8,8,8,8]']
BACKBONES = {'pointnet': ['model.widths=[8,16,32]'],
             'pointnet++': [],
             'pointnext-s': [],
             'dgcnn': [],
             'pct': ['+model.centres=[64,32]'],
             'pointmlp': POINTMLP_128,
             'pointmlp-elite': POINTMLP_128}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('mn40')
    data_dir = make_fake_modelnet40(root / 'ModelNet40Ply2048')
    return {'data_dir': data_dir, 'artifact': fake_modelnet40_artifact(root / 'gen.safetensors', data_dir)}


def _train_main():
    return load_tool('train').main


def test_the_backbones_are_the_train_configs():
    assert {p.stem for p in (REPO_ROOT / 'cfgs' / 'train').glob('distilled-*-cpu.yaml')} == {
        f'distilled-{name}-cpu' for name in BACKBONES}


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_bf16_trains_one_epoch_with_fp32_master_weights(name, device, data, tmp_path):
    run_dir = tmp_path / 'run'
    assert _train_main()(['--cfg', str(REPO_ROOT / 'cfgs' / 'train' / f'distilled-{name}-cpu.yaml'),
                          f"artifact={data['artifact']}", f"dataset.common.data_dir={data['data_dir']}",
                          'amp=bf16', 'num_points=128', 'dataset.train.num_points=128', 'dataset.val.num_points=128',
                          'epochs=1', 't_max=1', 'batch_size=4', 'val_batch_size=6', 'max_train_batches=2',
                          'max_val_batches=1', 'progress=False', f'device={device}', f'run_dir={run_dir}',
                          *BACKBONES[name]]) == 0
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics['last_epoch'] == 1 and torch.isfinite(torch.tensor(metrics['history'][0]['train_loss']))
    weights = load_file(str(run_dir / 'checkpoint' / 'last.safetensors'))
    floating = {k: v.dtype for k, v in weights.items() if v.is_floating_point()}
    assert floating and set(floating.values()) == {torch.float32}
    state = torch.load(run_dir / 'checkpoint' / 'last_state.pt', weights_only=True)
    moments = [t for s in state['optimizer']['state'].values() for t in s.values()
               if torch.is_tensor(t) and t.is_floating_point() and t.dim() > 0]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    assert "amp: bf16" in (run_dir / 'cfg.yaml').read_text()


def test_bf16_part_segmentation_trains_one_epoch(tmp_path):
    """The part-segmentation trainer shares the loop; its evaluation runs under the same precision (PointNeXt-S part
    model, the embedded part data: upsampling by three_interpolate under autocast)."""
    run_dir = tmp_path / 'run'
    assert _train_main()(['--cfg', str(REPO_ROOT / 'cfgs' / 'train' / 'partseg' / 'embedded-pointnext-s.yaml'),
                          'amp=bf16', 'dataset.common.num_per_class_train=2', 'dataset.common.num_per_class_test=1',
                          'dataset.common.num_points=64', 'num_points=64', 'batch_size=8', 'val_batch_size=16', 'epochs=1', 'device=cpu', 'progress=False', 'seed=0',
                          'model.encoder_args.width=8', 'model.encoder_args.nsample=8', 'max_train_batches=1',
                          f'run_dir={run_dir}']) == 0
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert torch.isfinite(torch.tensor(metrics['history'][0]['train_loss'])) and metrics['last_instance_miou'] >= 0
    weights = load_file(str(run_dir / 'checkpoint' / 'last.safetensors'))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}
