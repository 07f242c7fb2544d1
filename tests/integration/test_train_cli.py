"""tools/train.py in-process on a tiny fake ModelNet40, and the config loader it relies on.

The load_config / save_config / config_hash tests would sit in tests/unit/utils/test_config.py by the
mirror rule; they live here because overrides are what the command line exposes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import openpoints_dd  # noqa: F401
from conftest import make_fake_modelnet40
from openpoints.utils import EasyConfig
from openpoints_dd.engine.train_cls import REQUIRED_KEYS, TRAIN_DEFAULTS
from openpoints_dd.engine.train_data import per_class_loader
from openpoints_dd.utils.config import REPO_ROOT, config_hash, load_config, resolve_path, save_config
from _tools import load_tool

TRAIN_CFGS = sorted((REPO_ROOT / 'cfgs' / 'train').glob('*.yaml'))
EXAMPLES = [p for p in TRAIN_CFGS if p.name != 'default.yaml']


def _load_tool():
    return load_tool('train')


train_tool = _load_tool()


@pytest.fixture(scope='module')
def fake_data(tmp_path_factory) -> Path:
    return make_fake_modelnet40(tmp_path_factory.mktemp('data') / 'ModelNet40Ply2048')


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def cfg_file(tmp_path) -> Path:
    return write(tmp_path / 'exp.yaml', 'epochs: 10\nlr: 0.001\nname: run\nflag: true\nmaybe: null\n'
                                        'shift: [0.2, 0.2]\ndataset:\n  common:\n    NAME: ModelNet40Ply2048\n'
                                        '    data_dir: ./data\ndataloader:\n  num_workers: 6\n')


# ------------------------------------------------------------------------------------------ load_config
def test_overrides_are_parsed_like_easyconfig(cfg_file):
    cfg = load_config(cfg_file, ['epochs=3', '--lr=1e-2', '--name', 'other', 'shift=[1,2]', 'dataset.common.NAME=X'])
    assert (cfg.epochs, cfg.lr, cfg.name, cfg.shift, cfg.dataset.common.NAME) == (3, 0.01, 'other', [1, 2], 'X')
    assert isinstance(cfg.dataset.common, EasyConfig)


@pytest.mark.parametrize('text,value', [('false', False), ('True', True), ('TRUE', True), ('null', None), ('None', None)])
def test_overrides_accept_yaml_and_python_booleans_and_null(cfg_file, text, value):
    cfg = load_config(cfg_file, [f'flag={text}'] if value is not None else [f'maybe={text}'])
    assert (cfg.flag if value is not None else cfg.maybe) is value


def test_overrides_accept_yaml_flow_mappings_and_lists(cfg_file):
    cfg = load_config(cfg_file, ['maybe={NAME: TeacherLabels, teacher: cfgs/train/x.yaml}', 'maybe2=[1, two]'],
                      allow_new=True)
    assert cfg.maybe == {'NAME': 'TeacherLabels', 'teacher': 'cfgs/train/x.yaml'} and cfg.maybe2 == [1, 'two']
    assert load_config(cfg_file, ['+note={not yaml: [}'], allow_new=True).note == '{not yaml: [}'


@pytest.mark.parametrize('override,closest', [
    ('epoch=3', 'epochs'),
    ('dataset.comon.NAME=X', 'dataset.common.NAME'),
    ('num_workers=2', 'dataloader.num_workers'),
    ('dataset.common.datadir=/x', 'dataset.common.data_dir'),
])
def test_unknown_key_names_the_closest_key(cfg_file, override, closest):
    with pytest.raises(ValueError, match=rf"unknown config key .*Closest existing key: '{closest}'.*leading \+"):
        load_config(cfg_file, [override])


def test_plus_prefix_and_allow_new_add_keys(cfg_file):
    cfg = load_config(cfg_file, ['+dataset.common.new_key=1', '+brand.new.section=abc'])
    assert cfg.dataset.common.new_key == 1 and cfg.brand.new.section == 'abc'
    assert load_config(cfg_file, ['other=2'], allow_new=True).other == 2


@pytest.mark.parametrize('override,message', [
    ('epochs=ten', "gives 'epochs' a string"),
    ('name=3', "quote it"),
    ('flag=1', "a number .* holds a bool"),
    ('shift=0.5', "a number .* holds a list"),
    ('dataset=3', "a number .* holds a mapping"),
    ('epochs={"a": 1}', "a mapping .* holds a number"),
    ('epochs.sub=1', "'epochs' is a number .* not a section"),
])
def test_a_change_of_kind_is_an_error(cfg_file, override, message):
    with pytest.raises(ValueError, match=message):
        load_config(cfg_file, [override])


def test_int_for_float_and_none_either_way_are_accepted(cfg_file):
    cfg = load_config(cfg_file, ['lr=1', 'maybe=[1, 2]', 'name=None', "+quoted='3'"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.maybe == [1, 2] and cfg.name is None and cfg.quoted == '3'


def test_an_empty_section_can_be_filled_and_tuples_become_lists(cfg_file):
    cfg = load_config(cfg_file, ['maybe.NAME=CrossEntropy', 'maybe.args.smoothing=0.1', 'shift=(1, 2)'])
    assert cfg.maybe == {'NAME': 'CrossEntropy', 'args': {'smoothing': 0.1}} and cfg.shift == [1, 2]
    with pytest.raises(ValueError, match="unknown config key 'dataset.common.nme'"):
        load_config(cfg_file, ['dataset.common.nme=1'])


def test_malformed_overrides_are_errors(cfg_file):
    with pytest.raises(ValueError, match='has no value'):
        load_config(cfg_file, ['--epochs'])
    with pytest.raises(ValueError, match='empty part'):
        load_config(cfg_file, ['dataset..NAME=1'])


def test_base_inheritance_merges_recursively_and_own_keys_win(tmp_path):
    write(tmp_path / 'shared' / 'data.yaml',
          'epochs: 5\ndataset:\n  common: {NAME: A, data_dir: d}\n  train: {split: train}\n')
    write(tmp_path / 'shared' / 'model.yaml', 'base: data.yaml\nmodel: {NAME: M, width: 32}\nepochs: 7\n')
    write(tmp_path / 'exps' / 'default.yaml', 'seed: 1\nepochs: 100\nbatch_size: 8\n')
    path = write(tmp_path / 'exps' / 'exp.yaml', 'base: [../shared/model.yaml]\ndataset:\n  common: {NAME: B}\n')
    cfg = load_config(path)
    assert cfg.dataset.common == {'NAME': 'B', 'data_dir': 'd'} and cfg.dataset.train.split == 'train'
    assert cfg.model.width == 32 and cfg.epochs == 7 and cfg.seed == 1 and cfg.batch_size == 8
    assert 'base' not in cfg


def test_base_errors(tmp_path):
    write(tmp_path / 'a.yaml', 'base: b.yaml\n')
    write(tmp_path / 'b.yaml', 'base: a.yaml\n')
    with pytest.raises(ValueError, match='base cycle'):
        load_config(tmp_path / 'a.yaml')
    with pytest.raises(FileNotFoundError, match='missing.yaml'):
        load_config(write(tmp_path / 'c.yaml', 'base: missing.yaml\n'))
    with pytest.raises(FileNotFoundError, match='not found'):
        load_config(tmp_path / 'nope.yaml')


def test_empty_yaml_files_do_not_crash(tmp_path):
    write(tmp_path / 'default.yaml', '')
    write(tmp_path / 'empty_base.yaml', '# nothing\n')
    assert load_config(write(tmp_path / 'empty.yaml', '')) == {}
    assert load_config(write(tmp_path / 'x.yaml', 'base: empty_base.yaml\na: 1\n')) == {'a': 1}


def test_save_config_roundtrip_and_drops_objects(tmp_path, caplog):
    cfg = EasyConfig()
    cfg.update({'a': {'b': (1, 2)}, 'n': np.float32(0.5), 'i': np.int64(3), 'p': Path('/x'),
                'transform': {'fn': object()}, 'keep': [1, {'c': None}]})
    with caplog.at_level(logging.WARNING):
        save_config(cfg, tmp_path / 'cfg.yaml')
    assert 'transform.fn (object)' in caplog.text
    back = load_config(tmp_path / 'cfg.yaml')
    assert back == {'a': {'b': [1, 2]}, 'n': 0.5, 'i': 3, 'p': '/x', 'transform': {}, 'keep': [1, {'c': None}]}


def test_config_hash_is_canonical():
    a, b = EasyConfig(), EasyConfig()
    a.update({'x': 1, 'y': {'z': (1, 2)}})
    b.update({'y': {'z': [1, 2]}, 'x': 1})
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 8
    b.x = 2
    assert config_hash(a) != config_hash(b)


def test_relative_data_dirs_resolve_against_cwd_then_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path('cfgs') == str(REPO_ROOT / 'cfgs')          # not in the cwd: the repository root
    (tmp_path / 'cfgs').mkdir()
    assert resolve_path('cfgs') == str(tmp_path / 'cfgs')           # the cwd first
    assert resolve_path('/abs/x') == '/abs/x'


@pytest.mark.parametrize('path', TRAIN_CFGS, ids=lambda p: p.name)
def test_train_cfgs_load_and_list_every_trainer_key(path):
    cfg = load_config(path)
    assert set(TRAIN_DEFAULTS) <= set(cfg), set(TRAIN_DEFAULTS) - set(cfg)
    if path.name != 'default.yaml':
        assert all(cfg.get(k) is not None for k in REQUIRED_KEYS)
        assert cfg.dataloader.num_workers == 0 and cfg.num_classes == 40
        assert Path(resolve_path(cfg.dataset.common.data_dir)).name == 'ModelNet40Ply2048'


# ------------------------------------------------------------------------------------------ tools/train.py
def tiny_overrides(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f'dataset.common.data_dir={data_dir}', 'dataset.train.num_points=2048', 'dataset.val.num_points=2048',
            'num_points=128', 'epochs=1', 'batch_size=4', 'val_batch_size=4', 'progress=False', 'device=cpu',
            f'run_dir={run_dir}', *extra]


def test_main_trains_the_pointnet_example_and_writes_its_files(fake_data, tmp_path):
    run_dir = tmp_path / 'run'
    cfg = str(REPO_ROOT / 'cfgs' / 'train' / 'modelnet40-pointnet.yaml')
    assert train_tool.main(['--cfg', cfg, *tiny_overrides(fake_data, run_dir, 'progress=True')]) == 0
    for name in ('cfg.yaml', 'log.txt', 'metrics.json', 'checkpoint/last.safetensors', 'checkpoint/best.json'):
        assert (run_dir / name).is_file(), name
    log = (run_dir / 'log.txt').read_text()
    assert f'run dir {run_dir}' in log and 'device cpu' in log and 'seed 0' in log and 'overrides: ' in log
    assert log.count('overrides: ') == 1 and 'final | last epoch 1' in log
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics['last_epoch'] == 1 and "papers' protocol" in metrics['best_note']
    assert load_config(run_dir / 'cfg.yaml').model.NAME == 'DistillPointNet'

    # mode=resume without run_dir continues in the checkpoint's run, at the next epoch
    resume = [o for o in tiny_overrides(fake_data, run_dir, 'mode=resume', 'epochs=2', f'pretrained_path={run_dir}')
              if not o.startswith('run_dir=')]
    assert train_tool.main(['--cfg', cfg, *resume]) == 0
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert [h['epoch'] for h in metrics['history']] == [1, 2] and metrics['last_epoch'] == 2
    assert 'continuing at epoch 2' in (run_dir / 'log.txt').read_text()
    state = torch.load(run_dir / 'checkpoint' / 'last_state.pt', weights_only=True)
    assert state['scheduler']['t_initial'] > 0


def test_main_runs_the_pointnext_s_example(fake_data, tmp_path):
    cfg = str(REPO_ROOT / 'cfgs' / 'train' / 'modelnet40-pointnext-s.yaml')
    assert train_tool.main(['--cfg', cfg, *tiny_overrides(fake_data, tmp_path / 'run', 'max_train_batches=1')]) == 0
    metrics = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert metrics['num_params'] > 1e6 and len(metrics['history']) == 1


def test_main_default_run_dir_holds_stem_date_and_hash(fake_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = str(REPO_ROOT / 'cfgs' / 'train' / 'modelnet40-pointnet.yaml')
    overrides = [o for o in tiny_overrides(fake_data, tmp_path) if not o.startswith('run_dir=')]
    assert train_tool.main(['--cfg', cfg, *overrides, 'max_val_batches=1']) == 0
    (run_dir,) = (tmp_path / 'runs' / 'modelnet40-pointnet').iterdir()
    stamp_date, stamp_time, short_hash = run_dir.name.split('-')
    assert len(stamp_date) == 8 and len(stamp_time) == 6 and len(short_hash) == 8
    assert json.loads((run_dir / 'metrics.json').read_text())['cfg_hash'] == short_hash


def test_val_per_class_keeps_the_first_clouds_of_every_class(fake_data, tmp_path):
    with h5py.File(fake_data / 'modelnet40_ply_hdf5_2048' / 'ply_data_test0.h5') as f:
        labels = f['label'][:].reshape(-1)
    cfg = str(REPO_ROOT / 'cfgs' / 'train' / 'modelnet40-pointnet.yaml')
    run_dir = tmp_path / 'run'
    assert train_tool.main(['--cfg', cfg, *tiny_overrides(fake_data, run_dir, 'val_per_class=1')]) == 0
    assert f'val {len(np.unique(labels))} clouds' in (run_dir / 'log.txt').read_text()

    loader = torch.utils.data.DataLoader([{'y': np.int64(y)} for y in [3, 1, 3, 3, 0, 1]], batch_size=4)
    subset = per_class_loader(loader, 2)
    assert list(subset.dataset.indices) == [0, 1, 2, 4, 5] and subset.batch_size == 4
    with pytest.raises(ValueError, match='val_per_class must be >= 1'):
        per_class_loader(loader, 0)


def test_main_rejects_unknown_keys_before_creating_anything(tmp_path):
    cfg = str(REPO_ROOT / 'cfgs' / 'train' / 'modelnet40-pointnet.yaml')
    with pytest.raises(ValueError, match="Closest existing key: 'epochs'"):
        train_tool.main(['--cfg', cfg, 'epoch=2', f'run_dir={tmp_path / "run"}'])
    assert not (tmp_path / 'run').exists()
