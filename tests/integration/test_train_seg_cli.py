"""tools/train.py on part segmentation: one epoch of each part model on a tiny part DistilledDataset written
here, the task dispatch, and the mIoU the trainer reports against a hand check."""
from __future__ import annotations

import json

import pytest
import torch

import openpoints_dd  # noqa: F401
from openpoints_dd.data import save_artifact
from openpoints_dd.data.distilled_dataset import DistilledDataset
from openpoints_dd.data.synthetic_set import synthesizer_tensors
from openpoints_dd.engine.tasks import TASKS, task_of
from openpoints_dd.registry import build_synthesizer
from openpoints_dd.utils.config import REPO_ROOT, load_config

from openpoints_dd.data.embedded_shapes import PARTS_PER_CLASS  # noqa: E402  (10 categories, 31 part labels)
from _tools import load_tool
TINY_DATA = ['dataset.common.num_per_class_train=2', 'dataset.common.num_per_class_test=1',
             'dataset.common.num_points=64', 'dataset.train.num_points=64', 'num_points=64', 'batch_size=8',
             'val_batch_size=16', 'dataset.train.repeat=1', 'epochs=1', 'device=cpu', 'progress=False', 'seed=0']
TINY_MODELS = {
    'distilled-pointnet-cpu': ['model.widths=[8,16,32]'],
    'distilled-pointnext-s-cpu': ['model.encoder_args.width=8', 'model.encoder_args.nsample=8',
                                  'model.encoder_args.sa_layers=1'],
}


def _train_main():
    return load_tool('train').main


def part_artifact(path, points: bool = False):
    """An untrained narrow PartPointGenerator for the embedded part categories (uniform part proportions), saved
    as the segmentation engine saves it; `points=True`: a fixed draw of it stored as points with part ids."""
    from openpoints_dd.data.embedded_shapes import EmbeddedShapesPart
    data = EmbeddedShapesPart('train', num_per_class_train=1, num_per_class_test=1, num_points=16)
    assert [len(ids) for ids in data.cls2parts] == PARTS_PER_CLASS
    cfg = {'NAME': 'PartPointGenerator', 'hidden_dim': 16, 'w0_initial': 30,
           'part_proportions': [[1.0] * n for n in PARTS_PER_CLASS], 'cls2parts': data.cls2parts}
    synthesizer = build_synthesizer(cfg, num_classes=10, cpc=1)
    metadata = {'kind': 'generator', 'cpc': 1, 'num_points': 64, 'synthesizer': cfg, 'task': 'segmentation',
                'objective': {'NAME': 'PartGradientMatching'}, 'rotator': {'NAME': 'IdentityRotator'},
                'dataset': {'name': 'EmbeddedShapesPart', 'num_classes': 10, 'class_names': list(data.classes)},
                'segmentation': {'num_parts': 31, 'cls2parts': data.cls2parts}}
    if not points:
        return save_artifact(path, synthesizer_tensors(synthesizer, 64)[0], metadata)
    with torch.no_grad():
        pos, parts = synthesizer.synthesize_with_parts(torch.arange(10), 64, torch.Generator().manual_seed(0))
    return save_artifact(path, {'pos': pos, 'y': synthesizer.labels, 'parts': parts}, {**metadata, 'kind': 'points'})


@pytest.fixture(scope='module')
def artifact(tmp_path_factory):
    return part_artifact(tmp_path_factory.mktemp('part') / 'artifact.safetensors')


@pytest.mark.parametrize('name', sorted(TINY_MODELS))
def test_train_one_epoch_on_a_part_distilled_set(name, artifact, tmp_path):
    run_dir = tmp_path / 'run'
    _train_main()(['--cfg', str(REPO_ROOT / 'cfgs' / 'train' / 'partseg' / f'{name}.yaml'), f'artifact={artifact}',
                   f'run_dir={run_dir}', *TINY_DATA, *TINY_MODELS[name]])
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    for key in ('instance_miou', 'class_miou', 'unrestricted_instance_miou', 'unrestricted_class_miou'):
        assert 0 <= metrics[f'last_{key}'] <= 100
    # restricting the argmax to the category's parts can only help: every part of the truth is allowed
    assert metrics['last_instance_miou'] >= metrics['last_unrestricted_instance_miou']
    assert metrics['best_epoch'] == 1 and 'instance mIoU' in metrics['best_note']
    assert len(metrics['last_miou_per_class']) == 10     # one figure per test category
    assert (run_dir / 'checkpoint' / 'best.safetensors').is_file() and (run_dir / 'checkpoint' / 'last_state.pt').is_file()


def test_test_mode_reproduces_the_last_epoch_and_checks_the_data(artifact, tmp_path):
    """mode=test reloads the checkpoint and gives the figures of the last validation; a classification
    dataset with a part model is refused with the fix."""
    cfg = str(REPO_ROOT / 'cfgs' / 'train' / 'partseg' / 'distilled-pointnet-cpu.yaml')
    common = [f'artifact={artifact}', *TINY_DATA, *TINY_MODELS['distilled-pointnet-cpu']]
    main = _train_main()
    main(['--cfg', cfg, f'run_dir={tmp_path / "a"}', *common])
    main(['--cfg', cfg, f'run_dir={tmp_path / "b"}', 'mode=test', f'pretrained_path={tmp_path / "a"}', *common])
    trained = json.loads((tmp_path / 'a' / 'metrics.json').read_text())
    tested = json.loads((tmp_path / 'b' / 'metrics.json').read_text())
    assert tested['instance_miou'] == pytest.approx(trained['last_instance_miou'])
    # the artifact sizes the head (its metadata knows the 31 part labels) ...
    main(['--cfg', cfg, f'run_dir={tmp_path / "c"}', *common, 'num_classes=40', 'model.num_classes=40'])
    log = (tmp_path / 'c' / 'log.txt').read_text()
    assert 'num_classes 40 -> 31: the part labels of the artifact' in log and 'model.num_classes 40 -> 31' in log
    # ... real part data with a wrong head is refused with the fix
    real = str(REPO_ROOT / 'cfgs' / 'train' / 'partseg' / 'embedded-pointnet.yaml')
    with pytest.raises(ValueError, match='num_classes=31'):
        main(['--cfg', real, f'run_dir={tmp_path / "d"}', *(o for o in TINY_DATA if not o.startswith('dataset.train')),
              *TINY_MODELS['distilled-pointnet-cpu'], 'num_classes=40', 'model.num_classes=40'])


def test_resume_continues_to_the_same_result(artifact, tmp_path):
    """2 epochs straight, or 1 epoch then mode=resume to 2: the same weights and figures (train_cls's resume).
    Every epoch is validated in both (a validation draws from the RNG the checkpoint carries on)."""
    cfg = str(REPO_ROOT / 'cfgs' / 'train' / 'partseg' / 'distilled-pointnet-cpu.yaml')
    common = [f'artifact={artifact}', *TINY_DATA, *TINY_MODELS['distilled-pointnet-cpu'], 'val_freq=1']
    main = _train_main()
    main(['--cfg', cfg, f'run_dir={tmp_path / "straight"}', *common, 'epochs=2'])
    main(['--cfg', cfg, f'run_dir={tmp_path / "cut"}', *common, 'epochs=1'])
    main(['--cfg', cfg, 'mode=resume', f'pretrained_path={tmp_path / "cut"}', *common, 'epochs=2'])
    straight = json.loads((tmp_path / 'straight' / 'metrics.json').read_text())
    resumed = json.loads((tmp_path / 'cut' / 'metrics.json').read_text())
    assert resumed['last_epoch'] == 2 and [h['epoch'] for h in resumed['history']] == [1, 2]
    assert resumed['last_instance_miou'] == pytest.approx(straight['last_instance_miou'], abs=1e-9)
    assert resumed['history'][-1]['train_loss'] == pytest.approx(straight['history'][-1]['train_loss'], rel=1e-6)


def test_part_distilled_dataset_items_and_points_artifacts(tmp_path):
    """Segmentation items are ShapeNetPartNormal's: category in cls, per-point part ids of that category in y;
    a points artifact carries its part ids."""
    for points in (False, True):
        path = part_artifact(tmp_path / f'{points}.safetensors', points=points)
        data = DistilledDataset('train', distilled_path=str(path), num_points=32)
        item = data[3]
        assert item['pos'].shape == (32, 3) and item['y'].shape == (32,) and int(item['cls'][0]) == 3
        assert set(item['y'].tolist()) <= set(data.cls2parts[3]) and data.num_parts == 31


def test_task_dispatch():
    def task(cfg):
        return task_of(cfg).name

    assert task(load_config(REPO_ROOT / 'cfgs' / 'train' / 'partseg' / 'embedded-pointnext-s.yaml')) == 'segmentation'
    assert task(load_config(REPO_ROOT / 'cfgs' / 'train' / 'modelnet40-pointnet.yaml')) == 'classification'
    # PointNeXt's ShapeNet-part YAMLs carry no task key: the model or the dataset decides
    assert task_of({'model': {'NAME': 'BasePartSeg'}, 'dataset': {'common': {'NAME': 'X'}}}) is TASKS['segmentation']
    assert task({'model': {'NAME': 'BaseCls'}, 'dataset': {'common': {'NAME': 'ShapeNetPartNormal'}}}) == 'segmentation'
    distilled_part_set = {'NAME': 'DistilledDataset', 'real_dataset': 'EmbeddedShapesPart'}
    assert task({'model': {'NAME': 'BaseCls'}, 'dataset': {'common': distilled_part_set}}) == 'segmentation'
    with pytest.raises(ValueError, match='task must be one of'):
        task_of({'task': 'detection'})


def test_trainer_miou_equals_the_distillation_evaluation(tmp_path):
    """The trainer's mIoU over a loader is evaluate_seg.test_miou's over the same clouds (one code, two callers)."""
    from openpoints_dd.data.part_pool import PartPool
    from openpoints_dd.engine.evaluate_seg import test_miou
    cfg = load_config(REPO_ROOT / 'cfgs' / 'train' / 'partseg' / 'embedded-pointnet.yaml',
                      [o for o in TINY_DATA if not o.startswith('dataset.train.')] + ['model.widths=[8,16,32]'])
    trainer = TASKS['segmentation'].trainer(cfg, tmp_path, None)
    model = trainer._build_model()
    loader = trainer._loader('val', 7)                       # batches of 7, 3 of them, the last one short
    trainer.classes = trainer._check_dataset(loader.dataset, 'val')
    model.train()
    with torch.no_grad():                                    # move the BatchNorm statistics off their start
        model({'pos': torch.randn(4, 64, 3), 'cls': torch.zeros(4, dtype=torch.long)})
    ours = trainer.evaluate(model, loader)
    pool = PartPool.from_dataset_cfg(cfg.dataset, 'val', num_points=64)
    reference = test_miou(model, pool.pos, pool.parts, pool.labels, pool.cls2parts)
    for key in ('instance_miou', 'class_miou', 'unrestricted_instance_miou', 'unrestricted_class_miou', 'point_acc'):
        assert ours[key] == pytest.approx(reference[key], abs=1e-6), key


def test_train_on_shapenetpart_layout(tmp_path):
    """ShapeNetPartNormal (the standard layout, written here by the part-pool test's helper): train, then test
    clouds of their own sizes one per batch; openpoints' 16-category part table (50 labels) with 2 categories used."""
    import sys
    sys.path.insert(0, str(REPO_ROOT / 'tests' / 'unit' / 'data'))
    from test_part_pool import make_fake_shapenetpart
    root = make_fake_shapenetpart(tmp_path / 'shapenetcore_partanno_segmentation_benchmark_v0_normal')
    run_dir = tmp_path / 'run'
    _train_main()(['--cfg', str(REPO_ROOT / 'cfgs' / 'train' / 'partseg' / 'shapenetpart-pointnet.yaml'),
                   f'dataset.common.data_root={root}', 'dataset.train.split=train', 'dataset.common.num_points=16',
                   'num_points=16', 'model.widths=[8,16,32]', 'batch_size=3', 'epochs=1', 'device=cpu',
                   'progress=False', 'seed=0', f'run_dir={run_dir}'])
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics['eval_split'] == 'test' and set(metrics['last_miou_per_class']) == {'Airplane', 'Bag'}


def tiny_part_teacher(tmp_path) -> str:
    """A teacher YAML for the embedded part data: the committed part teacher at a test's size (one epoch, narrow)."""
    path = tmp_path / 'teacher.yaml'
    teacher = REPO_ROOT / 'cfgs' / 'train' / 'partseg' / 'teacher-embedded-pointnet.yaml'
    path.write_text(f'base: {teacher}\nepochs: 1\nt_max: 1\nval_freq: 1\nprogress: False\nmodel: {{widths: [8, 16, 32]}}\n'
                    'dataset: {common: {num_per_class_train: 2, num_per_class_test: 1, num_points: 64}}\n'
                    'num_points: 64\nbatch_size: 8\nval_batch_size: 8\n')
    return str(path)


def test_train_on_per_point_teacher_labels(artifact, tmp_path):
    """labels: TeacherLabels with a part-segmentation teacher: it is trained once on the real part data, then
    labels every point of every training batch; the log names it and its test mIoU."""
    cfg = str(REPO_ROOT / 'cfgs' / 'train' / 'partseg' / 'distilled-pointnet-cpu.yaml')
    labels = f"labels={{NAME: TeacherLabels, teacher: {tiny_part_teacher(tmp_path)}, cache_dir: {tmp_path / 'teachers'}}}"
    common = [f'artifact={artifact}', *TINY_DATA, *TINY_MODELS['distilled-pointnet-cpu']]
    main = _train_main()
    main(['--cfg', cfg, f'run_dir={tmp_path / "hard"}', *common])
    main(['--cfg', cfg, f'run_dir={tmp_path / "teacher"}', *common, labels])
    assert len(list((tmp_path / 'teachers').glob('teacher-*.safetensors'))) == 1
    log = (tmp_path / 'teacher' / 'log.txt').read_text()
    assert "'labels': 'teacher labels'" in log and "'test_instance_miou'" in log
    hard, taught = (json.loads((tmp_path / run / 'metrics.json').read_text()) for run in ('hard', 'teacher'))
    assert hard['history'][0]['train_loss'] != taught['history'][0]['train_loss']   # another loss, same batches
    assert 0 <= taught['last_instance_miou'] <= 100
