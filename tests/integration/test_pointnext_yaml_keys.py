"""Every key the README lists for PointNeXt's YAMLs on tools/train.py is taken without a `+`: on stand-ins with
PointNeXt's config structure written here, and on PointNeXt's own YAMLs when its mirror is on this machine."""
from __future__ import annotations

import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from openpoints_dd.engine.train_cls import REQUIRED_KEYS, TRAIN_DEFAULTS, load_train_config
from openpoints_dd.utils.config import REPO_ROOT

MIRROR = Path('/work/.mirror/guochengqian+PointNeXt/repo')
TABLE_INTRO = "These are the keys such a YAML needs on the command line"
VALUES = {'artifact': 'runs/x/artifact.safetensors', 'dataset.common.data_dir': '/data/ModelNet40Ply2048',
          'dataset.common.data_root': '/data/shapenetpart', 'dataset.common.NAME': 'EmbeddedShapesPart',
          'run_dir': '/tmp/run', 'root_dir': '/tmp/runs', 'epochs': '2', 'max_train_batches': '1',
          'max_val_batches': '1', 'val_per_class': '2', 'device': 'cpu', 'amp': 'bf16', 'progress': 'False',
          'seed': '0', 'labels': 'null'}
# PointNeXt's config structure (root default.yaml, a dataset folder's default.yaml, a model file), none of its keys ours
STAND_INS = {
    'cfgs/default.yaml': 'seed: null\nepochs: 100\nroot_dir: log/\nmode: train\nwandb: {use_wandb: False}\n'
                         'datatransforms: {train: null, val: null}\nfeature_keys: pos\n',
    'cfgs/modelnet40ply2048/default.yaml': 'num_points: 1024\ndataset:\n  common: {NAME: ModelNet40Ply2048, '
                                           'data_dir: ./data/ModelNet40Ply2048}\n  train: {split: train}\n'
                                           '  val: {split: test}\nbatch_size: 32\ndataloader: {num_workers: 6}\n'
                                           'num_classes: 40\nepochs: 600\n',
    'cfgs/modelnet40ply2048/pointnext-s.yaml': 'model:\n  NAME: BaseCls\n'
                                               '  cls_args: {NAME: ClsHead, num_classes: 40}\n',
    'cfgs/shapenetpart/default.yaml': 'dataset:\n  common: {NAME: ShapeNetPartNormal, data_root: data/ShapeNetPart}\n'
                                      '  train: {split: trainval}\n  val: {split: test, presample: True}\n'
                                      'num_classes: 50\nshape_classes: 16\nfeature_keys: pos,x,heights\n',
    'cfgs/shapenetpart/pointnext-s.yaml': 'model:\n  NAME: BasePartSeg\n  cls_args: {NAME: SegHead, num_classes: 50}\n',
}


def readme_keys() -> list[str]:
    """The keys of the README's table for PointNeXt's YAMLs (first column, every `backticked` name)."""
    text = (REPO_ROOT / 'README.md').read_text()
    assert TABLE_INTRO in text, 'the README lost its table of PointNeXt keys'
    table = text.split(TABLE_INTRO, 1)[1].split('\n\n', 2)[1]
    keys = []
    for row in table.splitlines()[2:]:
        keys += re.findall(r'`([^`]+)`', row.split('|')[1])
    return keys


def test_the_readme_lists_the_trainer_keys_a_cpu_run_needs():
    keys = readme_keys()
    assert {'artifact', 'dataset.common.data_dir', 'run_dir', 'val_per_class', 'max_train_batches', 'amp',
            'labels'} <= set(keys)
    assert set(keys) <= set(VALUES), f'give the test a value for {set(keys) - set(VALUES)}'
    ours = [k for k in keys if not k.startswith('dataset.')]
    known = set(TRAIN_DEFAULTS) | set(REQUIRED_KEYS)   # the trainer's defaults, and the keys every YAML has
    assert set(ours) <= known, set(ours) - known


def _pointnext_yamls(root: Path) -> dict[str, Path]:
    return {'classification': root / 'cfgs' / 'modelnet40ply2048' / 'pointnext-s.yaml',
            'segmentation': root / 'cfgs' / 'shapenetpart' / 'pointnext-s.yaml'}


def _check_every_key(yamls: dict[str, Path]) -> None:
    for key in readme_keys():
        task = 'segmentation' if key in ('dataset.common.data_root',) else 'classification'
        for kind, path in yamls.items():
            if key.startswith('dataset.common.data_') and kind != task:
                continue   # a dataset's own folder key: ModelNet40's data_dir, ShapeNet-part's data_root
            value = load_train_config(path, [f'{key}={VALUES[key]}'])   # raises on an unknown key (no +)
            for part in key.split('.'):
                value = value[part]
            assert str(value).lower() == VALUES[key].lower().replace('null', 'none'), (key, value)


def test_every_listed_key_needs_no_plus_on_pointnext_style_yamls(tmp_path):
    for name, text in STAND_INS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    yamls = _pointnext_yamls(tmp_path)
    with pytest.raises(ValueError, match=r'\+not_a_key='):            # unknown keys still need their +
        load_train_config(yamls['classification'], ['not_a_key=1'])
    _check_every_key(yamls)


@pytest.mark.skipif(not MIRROR.is_dir(), reason='no PointNeXt mirror on this machine')
def test_every_listed_key_needs_no_plus_on_pointnexts_own_yamls(tmp_path):
    archive = tmp_path / 'cfgs.tar'
    subprocess.run(['git', f'--git-dir={MIRROR}', 'archive', '-o', str(archive), '02341db', 'cfgs'], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / 'PointNeXt', filter='data')
    _check_every_key(_pointnext_yamls(tmp_path / 'PointNeXt'))
    for model in ('pointnext-s', 'pointnet++', 'pointmlp', 'deepgcn'):
        load_train_config(tmp_path / 'PointNeXt' / 'cfgs' / 'modelnet40ply2048' / f'{model}.yaml',
                          [f'{key}={VALUES[key]}' for key in readme_keys() if key != 'dataset.common.data_root'])
