"""tools/pointnext_main.py: the CUDA report on a CPU, the run itself through runpy (on a stand-in checkout written
here, which has PointNeXt's structure and none of its code), and the report on PointNeXt's own files when the
mirror is on this machine."""
from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from _artifacts import fake_modelnet40_artifact
from _tools import load_tool
from conftest import make_fake_modelnet40
from openpoints_dd.engine import pointnext_main as pn

MIRROR = Path('/work/.mirror/guochengqian+PointNeXt/repo')

# A stand-in for PointNeXt's examples/classification: the same entry points and config handling, written for
# this test. `cuda` adds PointNeXt-style device moves (one inside a multi-GPU branch, which a one-process run skips).
_INIT = "import os, sys\nsys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '{up}'))\n"
_MAIN = '''import __init__
import argparse, os
from examples.classification.train import main as train
from examples.classification.pretrain import main as pretrain
from openpoints.utils import EasyConfig, dist_utils, generate_exp_directory

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg', type=str, required=True)
    args, opts = parser.parse_known_args()
    cfg = EasyConfig()
    cfg.load(args.cfg, recursive=True)
    cfg.update(opts)
    cfg.rank, cfg.world_size, cfg.distributed, cfg.mp = dist_utils.get_dist_info(cfg)
    cfg.root_dir = os.path.join(cfg.root_dir, 'shapes')
    generate_exp_directory(cfg, ['tiny'])
    train(0, cfg)
'''
_TRAIN = '''import json, os
import torch
from torch import distributed as dist
from openpoints.dataset import build_dataloader_from_cfg


def main(gpu, cfg):
    if cfg.distributed:
        model = torch.nn.Linear(3, 3).cuda()
    loaders = {{split: build_dataloader_from_cfg(cfg.batch_size, cfg.dataset, cfg.dataloader,
                                                 datatransforms_cfg=cfg.datatransforms, split=split,
                                                 distributed=cfg.distributed) for split in ('train', 'val')}}
    for epoch in range(1, cfg.epochs + 1):
        for data in loaders['train']:
            x = data['x']{cuda}
    summary = {{split: [type(loader.dataset).__name__, len(loader.dataset),
                        getattr(loader.dataset, 'real', None) is None] for split, loader in loaders.items()}}
    summary['num_classes'] = cfg.num_classes
    summary['head'] = cfg.model.cls_args.num_classes
    with open(os.path.join(cfg.run_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f)
    dist.destroy_process_group()
'''
_CFGS = {
    'cfgs/default.yaml': 'root_dir: log/\nseed: 1\nlocal_rank: 0\nlauncher: mp\nepochs: 100\n'
                         'wandb: {use_wandb: False}\ndatatransforms: {train: null, val: null}\n',
    'cfgs/shapes/default.yaml': 'num_points: 128\ndataset:\n'
                                '  common: {NAME: ModelNet40Ply2048, data_dir: ./data/MN40}\n'
                                '  train: {split: train, num_points: 128}\n  val: {split: test, num_points: 128}\n'
                                'batch_size: 8\ndataloader: {num_workers: 6}\nnum_classes: 40\n',
    'cfgs/shapes/tiny.yaml': 'model:\n  NAME: BaseCls\n  cls_args: {NAME: ClsHead, num_classes: 40}\n',
}


def _checkout(root: Path, cuda: bool) -> Path:
    files = {'examples/__init__.py': _INIT.format(up='../'),
             'examples/classification/__init__.py': _INIT.format(up='../../'),
             'examples/classification/main.py': _MAIN,
             'examples/classification/train.py': _TRAIN.format(cuda='.cuda(non_blocking=True)' if cuda else ''),
             'examples/classification/pretrain.py': 'def main(gpu, cfg, profile=False):\n    pass\n', **_CFGS}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _tool():
    return load_tool('pointnext_main')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('pn')
    data_dir = make_fake_modelnet40(root / 'ModelNet40Ply2048')
    return {'data_dir': data_dir, 'artifact': fake_modelnet40_artifact(root / 'gen.safetensors', data_dir)}


def test_on_a_cpu_the_cuda_lines_are_the_report(data, tmp_path, caplog):
    checkout = _checkout(tmp_path / 'PointNeXt', cuda=True)
    args = ['--pointnext', str(checkout), '--cfg', 'cfgs/shapes/tiny.yaml', '--artifact', str(data['artifact']),
            '--data-dir', str(data['data_dir'])]
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA: the stand-in would run')
    with caplog.at_level(logging.INFO):
        assert _tool().main(args) == 3
    assert 'examples/classification/train.py:15: x = data[\'x\'].cuda(non_blocking=True)' in caplog.text
    assert 'train.py:9' not in caplog.text                       # the multi-GPU branch: not run by one process
    assert not (checkout / 'log').exists()                       # nothing ran


def test_the_unmodified_main_runs_on_the_distilled_set(data, tmp_path, monkeypatch):
    """The run path (as on a GPU machine): main.py through runpy, with DistilledDataset, the artifact's classes,
    capped workers and a one-process group for its closing destroy_process_group()."""
    checkout = _checkout(tmp_path / 'PointNeXt', cuda=False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)   # the stand-in needs no GPU
    assert _tool().main(['--pointnext', str(checkout), '--cfg', 'cfgs/shapes/tiny.yaml', '--artifact',
                         str(data['artifact']), '--data-dir', str(data['data_dir']), 'batch_size=4']) == 0
    (summary_path,) = (checkout / 'log' / 'shapes').glob('*/summary.json')
    summary = json.loads(summary_path.read_text())
    assert summary['train'] == ['DistilledDataset', 40, True] and summary['val'] == ['DistilledDataset', 6, False]
    assert summary['num_classes'] == summary['head'] == 40
    assert not torch.distributed.is_initialized()


def test_a_missing_data_folder_is_an_error_before_anything_runs(data, tmp_path, monkeypatch):
    checkout = _checkout(tmp_path / 'PointNeXt', cuda=False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    with pytest.raises(FileNotFoundError, match=r"dataset.common.data_dir './data/MN40' does not exist.*--data-dir"):
        _tool().main(['--pointnext', str(checkout), '--cfg', 'cfgs/shapes/tiny.yaml', '--artifact',
                      str(data['artifact'])])
    assert not (checkout / 'data').exists() and not (checkout / 'log').exists()
    with pytest.raises(FileNotFoundError, match='is not a PointNeXt checkout: it lacks examples/classification/main'):
        _tool().main(['--pointnext', str(tmp_path), '--cfg', 'x.yaml', '--artifact', str(data['artifact'])])


def test_missing_packages_and_a_wrong_cfg_are_named(data, tmp_path, monkeypatch, caplog):
    checkout = _checkout(tmp_path / 'PointNeXt', cuda=False)
    train = checkout / 'examples' / 'classification' / 'train.py'
    train.write_text('import not_a_package_here\n' + train.read_text())
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    args = ['--pointnext', str(checkout), '--artifact', str(data['artifact']), '--data-dir', str(data['data_dir'])]
    with caplog.at_level(logging.INFO):
        assert _tool().main([*args, '--cfg', 'cfgs/shapes/tiny.yaml']) == 2
    assert ('missing package: examples/classification/train.py:1: import not_a_package_here  <- import '
            'not_a_package_here fails here (ModuleNotFoundError') in caplog.text
    with pytest.raises(FileNotFoundError, match=r'--cfg cfgs/nope.yaml not found in the checkout .*relative to the'):
        _tool().main([*args, '--cfg', 'cfgs/nope.yaml'])


@pytest.mark.skipif(not MIRROR.is_dir(), reason='no PointNeXt mirror on this machine')
def test_pointnext_02341db_needs_cuda_on_three_train_lines(tmp_path):
    """The report on PointNeXt's own files at the commit the README names (read from the mirror, not kept here)."""
    archive = tmp_path / 'pointnext.tar'
    subprocess.run(['git', f'--git-dir={MIRROR}', 'archive', '-o', str(archive), '02341db', 'examples/classification'],
                   check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / 'PointNeXt', filter='data')
    checkout = tmp_path / 'PointNeXt'
    lines = [(f.file, f.line) for f in pn.cuda_lines(checkout)]
    assert lines == [('examples/classification/train.py', 72), ('examples/classification/train.py', 239),
                     ('examples/classification/train.py', 300)]
    missing = {f.code for f in pn.missing_imports(checkout)}
    assert any('wandb' in code for code in missing) == (importlib.util.find_spec('wandb') is None)
