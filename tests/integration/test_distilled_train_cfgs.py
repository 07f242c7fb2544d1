"""Every cfgs/train/distilled-*-cpu.yaml (and the cross-architecture tables' 256- and 128-point versions) builds its
model and its DistilledDataset loaders, and predicts 40 classes at its own point count."""
from __future__ import annotations

import json

import pytest
import torch

from _artifacts import fake_modelnet40_artifact
from _tools import load_tool
from openpoints_dd.data import SyntheticSet
from conftest import make_fake_modelnet40
from openpoints_dd.engine.protocol import _full_train_jobs, _with_real_data
from openpoints_dd.engine.train_cls import Trainer, load_train_config
from openpoints_dd.utils.config import REPO_ROOT, load_config

DISTILLED_CFGS = sorted((REPO_ROOT / 'cfgs' / 'train').glob('distilled-*-cpu.yaml'))
TABLE_CFGS = sorted((REPO_ROOT / 'cfgs' / 'train' / 'xarch-cpc10-cpu90m').glob('*.yaml'))
# scale.yaml holds the keys every backbone's file there shares; it is no config of its own
SCALED_CFGS = sorted(p for p in (REPO_ROOT / 'cfgs' / 'train' / 'xarch-cpc10').glob('*.yaml') if p.stem != 'scale')
CPC1_CFGS = sorted(p for p in (REPO_ROOT / 'cfgs' / 'train' / 'xarch-cpc1').glob('*.yaml') if p.stem != 'scale')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('mn40')
    data_dir = make_fake_modelnet40(root / 'ModelNet40Ply2048')
    return {'data_dir': data_dir, 'artifact': fake_modelnet40_artifact(root / 'gen.safetensors', data_dir)}


def test_every_backbone_has_a_config_in_every_table():
    """The six backbones and PointMLP's light variant."""
    names = {load_config(p).model.get('NAME') for p in DISTILLED_CFGS}
    assert len(DISTILLED_CFGS) == 7 and names == {'DistillPointNet', 'BaseCls', 'PCTClassifier', 'PointMLP'}
    encoders = {load_config(p).model.get('encoder_args', {}).get('NAME') for p in DISTILLED_CFGS}
    assert {'PointNet2Encoder', 'DGCNN', 'PointNextEncoder'} <= encoders
    for table in (SCALED_CFGS, CPC1_CFGS):
        assert sorted(f'distilled-{p.stem}-cpu' for p in table) == [p.stem for p in DISTILLED_CFGS]
    # the 24-48-step table (cross_arch_cpc10_cpu90m.md) is a record of the six it ran
    assert ({f'distilled-{p.stem}-cpu' for p in TABLE_CFGS}
            == {p.stem for p in DISTILLED_CFGS} - {'distilled-pointmlp-elite-cpu'})


ELITE_KEYS = ('embed_dim', 'res_expansion', 'dim_expansion', 'pre_blocks', 'pos_blocks')


@pytest.mark.parametrize('name', ['distilled-pointmlp{}-cpu', 'xarch-cpc10/pointmlp{}', 'xarch-cpc1/pointmlp{}'])
def test_pointmlp_elite_is_pointmlp_but_for_its_width_and_depth(name):
    """Its rows differ from PointMLP's by the network alone: the same recipe, scale, grouping and budget."""
    full, elite = (load_config(REPO_ROOT / 'cfgs' / 'train' / f'{name.format(tag)}.yaml') for tag in ('', '-elite'))
    changed = {key for key in ELITE_KEYS if full.model.pop(key) != elite.model.pop(key)}
    assert changed == set(ELITE_KEYS) and full == elite


@pytest.mark.parametrize('path', CPC1_CFGS, ids=lambda p: p.stem)
def test_one_per_class_table_is_the_ten_per_class_one_with_the_set_listed_ten_times(path):
    """The 1-per-class table trains each backbone exactly as the 10-per-class one, batches of 32 filled from the
    40-cloud set repeated: the same 12 batches per epoch, the same steps."""
    one, ten = load_config(path), load_config(path.parent.parent / 'xarch-cpc10' / path.name)
    assert one.dataset.train.pop('repeat') == 10 and ten.dataset.train.pop('repeat', 1) == 1
    assert one == ten
    assert 40 * 10 // one.batch_size == 400 // ten.batch_size == one.max_train_batches


@pytest.mark.parametrize('path', DISTILLED_CFGS + TABLE_CFGS + SCALED_CFGS + CPC1_CFGS,
                         ids=lambda p: f'{p.parent.name}/{p.stem}')
def test_distilled_cfg_builds_model_and_loaders(path, data, tmp_path):
    cfg = load_config(path, [f"dataset.common.data_dir={data['data_dir']}", f"artifact={data['artifact']}",
                             'device=cpu', 'progress=False', 'seed=0'])
    assert cfg.dataset.common.NAME == 'DistilledDataset' and cfg.epochs < 600   # a CPU-scale budget
    assert cfg.dataset.train.num_points == cfg.num_points == cfg.model.get('points', cfg.num_points)
    trainer = Trainer(cfg, tmp_path, None)
    model = trainer._build_model()
    trainer._check_head(model)                      # 40 logits for random clouds
    train, val = trainer._loader('train', 2), trainer._loader('val', 2)
    assert len(train.dataset) == 40 * cfg.dataset.train.get('repeat', 1) and train.dataset.synthetic.is_generator
    assert len(val.dataset) == 6                    # the fake real test split
    batch, target = trainer._prepare(next(iter(train)), training=True)
    assert batch['pos'].shape == (2, cfg.num_points, 3) and target.shape == (2,)
    model.eval()
    with torch.no_grad():
        assert model(batch).shape == (2, 40)


def _train_main():
    return load_tool('train').main


@pytest.mark.parametrize('name,extra', [('distilled-pointnet-cpu', ['model.widths=[8,16,32]']),
                                        ('distilled-pointnext-s-cpu', [])])
def test_tools_train_runs_one_epoch_on_the_artifact_key(name, extra, data, tmp_path):
    run_dir = tmp_path / 'run'
    assert _train_main()(['--cfg', str(REPO_ROOT / 'cfgs' / 'train' / f'{name}.yaml'), f"artifact={data['artifact']}",
                          f"dataset.common.data_dir={data['data_dir']}", 'num_points=128',
                          'dataset.train.num_points=128', 'dataset.val.num_points=128', 'epochs=1', 'batch_size=4',
                          'val_batch_size=6', 'max_train_batches=2', 'progress=False', 'device=cpu',
                          f'run_dir={run_dir}', *extra]) == 0
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics['last_epoch'] == 1 and metrics['classes'] == SyntheticSet(data['artifact']).class_names
    assert "train 40 clouds" in (run_dir / 'log.txt').read_text()      # the artifact's 40 slots, not real clouds


def test_artifact_key_on_a_real_dataset_yaml_trains_on_the_artifact(data, tmp_path):
    """`artifact=` on a YAML of the real dataset: the train split becomes the artifact, val stays the real data."""
    run_dir = tmp_path / 'run'
    assert _train_main()(['--cfg', str(REPO_ROOT / 'cfgs' / 'train' / 'modelnet40-pointnet.yaml'),
                          f"artifact={data['artifact']}", f"dataset.common.data_dir={data['data_dir']}",
                          'num_points=128', 'dataset.train.num_points=128', 'dataset.val.num_points=128', 'epochs=1',
                          'batch_size=4', 'val_batch_size=6', 'max_train_batches=1', 'model.widths=[8,16,32]',
                          'progress=False', 'device=cpu', f'run_dir={run_dir}']) == 0
    log = (run_dir / 'log.txt').read_text()
    assert 'the train split is DistilledDataset on it; val/test are the YAML\'s ModelNet40Ply2048' in log
    assert 'train 40 clouds' in log and 'val 6 clouds' in log


@pytest.mark.parametrize('path', CPC1_CFGS, ids=lambda p: p.stem)
def test_one_per_class_full_train_row_is_the_ten_per_class_one(path, tmp_path):
    """The repeat is a DistilledDataset key: the whole-train-set reference of both tables is the same training."""
    jobs = {}
    for table in ('xarch-cpc1', 'xarch-cpc10'):
        base = _with_real_data(load_train_config(str(path.parent.parent / table / path.name), []), None)
        job, = _full_train_jobs(path.stem, base, None, 40, [0], None, 'cpu', tmp_path)
        job.cfg.pop('run_dir')
        jobs[table] = job
    assert 'repeat' not in jobs['xarch-cpc1'].cfg['dataset']['train']
    assert jobs['xarch-cpc1'] == jobs['xarch-cpc10']
