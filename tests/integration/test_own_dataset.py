"""A user's own dataset by YAML alone: small h5 (ModelNet40Ply2048 layout), ScanObjectNN-style and per-class-folder
datasets with their own 4 class names, each distilled by tools/distill.py (with its evaluation) and evaluated by
tools/evaluate.py from a YAML written outside cfgs/ that names neither code nor a class count."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHAPE_NAMES, make_class_folders, make_h5_dataset
from openpoints_dd.data import SyntheticSet
from openpoints_dd.utils.config import REPO_ROOT
from _tools import load_tool

LAYOUTS = {
    'modelnet_h5': lambda root: make_h5_dataset(root, style='modelnet'),
    'scanobjectnn_h5': lambda root: make_h5_dataset(root, style='scanobjectnn'),
    'class_folders': lambda root: make_class_folders(root),
}


def _tool(name: str):
    return load_tool(name).main


def user_yaml(folder: Path, data_dir: Path) -> Path:
    """What the README's "Distill your own dataset" section writes: a project config as base, the data folder, and
    (here) tiny sizes so the test takes seconds."""
    path = folder / 'my_distill.yaml'
    path.write_text(f"""base: {REPO_ROOT / 'cfgs' / 'distill' / 'demo.yaml'}
dataset:
  common: {{NAME: PointCloudFolderDataset, data_dir: {data_dir}}}
distill:
  iterations: 2
  outer_loop: 2
  batch_real: 4
  num_points: 64
  export_num_points: 128
  progress: false
  synthesizer: {{hidden_dim: 16, init_steps: 3}}
evaluation:
  model: {{NAME: DistillPointNet, widths: [8, 16, 32]}}
  epochs: 2
  batch_size: 16
  num_points: 128
  seeds: [0]
  random_selections: 1
""")
    return path


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_distill_and_evaluate_a_users_dataset_from_yaml_alone(layout, tmp_path):
    data_dir = LAYOUTS[layout](tmp_path / f'my_{layout}')
    cfg = user_yaml(tmp_path, data_dir)
    text = cfg.read_text()
    dataset_section = text.split('dataset:')[1].split('distill:')[0].replace(str(data_dir), '<data_dir>')
    assert 'num_classes' not in text and '4' not in dataset_section   # the class count comes from the data alone
    run_dir = tmp_path / 'run'
    assert _tool('distill')(['--cfg', str(cfg), f'run_dir={run_dir}']) == 0

    synthetic = SyntheticSet(run_dir / 'artifact.safetensors')
    expected_classes = list(SHAPE_NAMES) if layout.endswith('h5') else sorted(SHAPE_NAMES)
    recorded = synthetic.metadata['dataset']
    assert (recorded['name'], recorded['num_classes'], recorded['class_names']) == (f'my_{layout}', 4, expected_classes)
    assert synthetic.num_classes == 4 and len(synthetic) == 4                  # cpc 1: one slot per class
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics['iterations_done'] == 2
    assert set(metrics['evaluation']) == {'synthetic (resampled each epoch)', 'synthetic (fixed set)',
                                          'start (resampled each epoch)', 'start (fixed set)', 'random (1 selections)'}
    log = (run_dir / 'log.txt').read_text()
    assert f'real pool my_{layout}/train' in log and 'ModelNet40Ply2048' not in log
    saved = (run_dir / 'cfg.yaml').read_text()                                 # the project defaults applied
    assert 'syn_optimizer' in saved and 'w0_initial: 100' in saved

    out = tmp_path / 'eval'
    assert _tool('evaluate')(['--cfg', str(cfg), '--set', f"mine={run_dir / 'artifact.safetensors'}",
                              '--random', '1', '--seeds', '1', '--first-seed', '2', '--out', str(out)]) == 0
    rows = {(r['set'], r['mode']): r for r in json.loads((out / 'results.json').read_text())['rows']}
    assert set(rows) == {('mine', 'resampled each epoch'), ('mine', 'fixed set'), ('random cpc1', 'random selection')}
    assert [run['selection'] for run in rows[('random cpc1', 'random selection')]['runs']] == [2]


def test_a_users_dataset_trains_an_openpoints_yaml_through_evaluate(tmp_path):
    """The class count reaches an openpoints model YAML too (its head is sized from the artifact, not its 40)."""
    data_dir = make_h5_dataset(tmp_path / 'my_shapes')
    cfg = user_yaml(tmp_path, data_dir)
    run_dir = tmp_path / 'run'
    assert _tool('distill')(['--cfg', str(cfg), f'run_dir={run_dir}']) == 0
    out = tmp_path / 'eval'
    model = str(REPO_ROOT / 'cfgs' / 'train' / 'distilled-pointnet-cpu.yaml')
    assert _tool('evaluate')(['--cfg', str(cfg), '--model', model,
                              '--set', f"mine={run_dir / 'artifact.safetensors'}", '--seeds', '1', '--out', str(out),
                              'epochs=1', 'num_points=64', 'batch_size=2', 'val_batch_size=8', 'model.widths=[8,16,32]',
                              'dataset.train.num_points=64']) == 0
    (row, *_) = json.loads((out / 'results.json').read_text())['rows']
    metrics = json.loads((Path(row['runs'][0]['run_dir']) / 'metrics.json').read_text())
    assert metrics['classes'] == list(SHAPE_NAMES) and len(metrics['last_acc_per_class']) == 4

    # tools/train.py, as the README writes it, with PointNeXt's name for the training split: the artifact's 4 clouds
    train_dir = tmp_path / 'train'
    assert _tool('train')(['--cfg', model, f"artifact={run_dir / 'artifact.safetensors'}",
                           'dataset.common.NAME=PointCloudFolderDataset',
                           f'dataset.common.data_dir={data_dir}', 'dataset.train.split=trainval', 'epochs=1',
                           'num_points=64', 'dataset.train.num_points=64', 'dataset.val.num_points=64', 'batch_size=2',
                           'val_batch_size=8', 'model.widths=[8,16,32]', 'progress=False', f'run_dir={train_dir}']) == 0
    log = (train_dir / 'log.txt').read_text()
    assert 'train 4 clouds (2 batches of 2)' in log and 'val 12 clouds' in log
    assert json.loads((train_dir / 'metrics.json').read_text())['classes'] == list(SHAPE_NAMES)


def test_a_missing_data_folder_is_named_before_any_work(tmp_path):
    cfg = user_yaml(tmp_path, tmp_path / 'not_there')
    with pytest.raises(FileNotFoundError, match=r"dataset.common.data_dir '.*not_there' does not exist"):
        _tool('distill')(['--cfg', str(cfg), f'run_dir={tmp_path / "run"}'])
    assert not (tmp_path / 'run' / 'checkpoint.pt').exists()
