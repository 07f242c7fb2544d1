"""tools/distill.py with `task: segmentation`: a tiny part-segmentation distillation end to end."""
import json
from pathlib import Path

from openpoints_dd.data import SyntheticSet
from _tools import load_tool

ROOT = Path(__file__).resolve().parents[2]
CFG = str(ROOT / 'cfgs' / 'distill' / 'embedded_part' / 'dd3d-cpc1.yaml')
TINY = ['+dataset.common.num_shape_classes=3', 'dataset.common.num_per_class_train=6',
        'dataset.common.num_per_class_test=3', 'distill.iterations=2', 'distill.outer_loop=2', 'distill.batch_real=4',
        'distill.num_points=64', 'distill.export_num_points=64', 'distill.synthesizer.hidden_dim=16',
        'distill.backbone.widths=[8,16,32]', 'distill.progress=False', 'distill.budget_minutes=None',
        'evaluation.epochs=2', 'evaluation.num_points=64', 'evaluation.seeds=[0]', 'evaluation.random_selections=1',
        'evaluation.model.widths=[8,16,32]']


def _distill_main():
    return load_tool('distill').main


def test_segmentation_distillation_writes_artifact_and_miou_table(tmp_path):
    """The classification run's path: timed evaluations of snapshots (mIoU), then the set's rows and Random's."""
    run_dir = tmp_path / 'run'
    assert _distill_main()(['--cfg', CFG, f'run_dir={run_dir}', *TINY, 'distill.eval_every=2',
                            'evaluation.eval_epochs_during_distill=2']) == 0
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics['task'] == 'segmentation' and metrics['iterations_done'] == 2
    assert all(len(metrics['loss_history']) == 2 and v == v for v in metrics['loss_history'])
    [during] = metrics['evaluations_during_distillation']
    assert during['iteration'] == 2 and 0 <= during['instance_miou'] <= 100
    assert Path(during['snapshot']).is_file()
    rows = metrics['evaluation']
    assert set(rows) == {'synthetic (resampled each epoch)', 'synthetic (fixed set)', 'random (1 selections)'}
    for row in rows.values():
        for key in ('instance_miou', 'class_miou', 'unrestricted_instance_miou', 'unrestricted_class_miou'):
            assert 0 <= row[f'final_{key}']['mean'] <= 100
    synthetic = SyntheticSet(run_dir / 'artifact.safetensors')
    meta = synthetic.metadata
    assert synthetic.is_generator and meta['task'] == 'segmentation'
    assert meta['dataset']['num_classes'] == 3 and meta['cpc'] == 1
    assert len(meta['segmentation']['part_proportions']) == 3 and meta['segmentation']['num_parts'] >= 6
    pos, parts = synthetic.synthesizer.synthesize_with_parts(synthetic.labels.new_tensor([0, 2]), 32)
    assert pos.shape == (2, 32, 3)
    assert set(parts[1].tolist()) <= set(meta['segmentation']['cls2parts'][2])
    assert 'inst mIoU' in (run_dir / 'log.txt').read_text()


def test_slot_partition_config_end_to_end(tmp_path):
    """The committed acceptance config (part_presence: slot, real init on clouds showing the slot's parts), tiny:
    the artifact's partition is PartPool.part_proportions(cpc) of the training data, and a part left out of a
    slot is one that at most half of the category's clouds show."""
    import torch
    from openpoints_dd.data.part_pool import PartPool
    from openpoints_dd.settings import load_distill_config
    cfg = str(ROOT / 'cfgs' / 'distill' / 'embedded_part' / 'dd3d-realinit-slotparts-cpc1.yaml')
    overrides = [o.replace('num_shape_classes=3', 'num_shape_classes=4') for o in TINY] + [
        'distill.synthesizer.init_steps=3', 'distill.synthesizer.init_num_points=32']
    run_dir = tmp_path / 'run'
    assert _distill_main()(['--cfg', cfg, f'run_dir={run_dir}', *overrides]) == 0
    meta = SyntheticSet(run_dir / 'artifact.safetensors').metadata
    # a real-initialised part generator is evaluated beside its start, paired by seed on the task's headline
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert set(metrics['evaluation']) == {f'{set_} ({mode})' for set_ in ('synthetic', 'start')
                                          for mode in ('resampled each epoch', 'fixed set')} | {'random (1 selections)'}
    for after, paired in metrics['versus_start'].items():
        before = metrics['evaluation'][paired['start']]['runs']
        assert paired['differences'] == [round(a['instance_miou'] - b['instance_miou'], 2)
                                         for a, b in zip(metrics['evaluation'][after]['runs'], before)]
    pool = PartPool.from_dataset_cfg(load_distill_config(str(cfg), overrides).dataset, 'train', num_points=64)
    assert meta['segmentation']['part_proportions'] == pool.part_proportions(1)
    for c, q in enumerate(meta['segmentation']['part_proportions']):
        shown = torch.stack([(pool.parts[pool.labels == c] == p).any(1) for p in pool.cls2parts[c]], 1).float().mean(0)
        assert all(rate <= 0.5 for rate, share in zip(shown.tolist(), q) if share == 0)
        assert all(rate >= 0.5 for rate, share in zip(shown.tolist(), q) if share > 0)


def test_segmentation_evaluation_with_a_part_teacher(tmp_path):
    """evaluation.labels: a part-segmentation teacher labels every row's training points; the table says so and
    names the teacher under it."""
    from test_train_seg_cli import tiny_part_teacher
    run_dir = tmp_path / 'run'
    labels = (f"evaluation.labels={{NAME: TeacherLabels, teacher: {tiny_part_teacher(tmp_path)}, "
              f"cache_dir: {tmp_path / 'teachers'}}}")
    overrides = [o for o in TINY if 'num_shape_classes' not in o]   # the teacher's data: all 10 categories
    assert _distill_main()(['--cfg', CFG, f'run_dir={run_dir}', *overrides, labels]) == 0
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics['labels']['labels'] == 'teacher labels'
    assert metrics['labels']['teacher']['model'] == 'DistillPointNetSeg'
    assert 'teacher labels)' in metrics['table'][0] and metrics['table'][-1].startswith('Teacher labels: DistillPointNetSeg')
    assert all(0 <= row['final_instance_miou']['mean'] <= 100 for row in metrics['evaluation'].values())


def test_tools_evaluate_reproduces_the_segmentation_table_and_refuses_the_other_task(tmp_path):
    """tools/evaluate.py with a `task: segmentation` --cfg runs the same protocol as the distillation's own
    evaluation (the same figures, run for run); a part set against a classification config, or the reverse, is
    refused before any training."""
    import pytest
    from test_evaluate_cli import evaluate_main
    run_dir = tmp_path / 'run'
    overrides = [*TINY, 'evaluation.seeds=[0,1]', 'evaluation.random_selections=2']
    assert _distill_main()(['--cfg', CFG, f'run_dir={run_dir}', *overrides]) == 0
    distilled = json.loads((run_dir / 'metrics.json').read_text())['evaluation']
    evaluation = [o for o in overrides if o.startswith(('evaluation.', '+dataset', 'dataset'))
                  and not o.startswith(('evaluation.seeds', 'evaluation.random'))]
    artifact = run_dir / 'artifact.safetensors'
    assert evaluate_main(['--cfg', CFG, '--set', f'dd3d={artifact}', '--random', '2', '--seeds', '2',
                          '--out', str(tmp_path / 'eval'), *evaluation]) == 0
    rows = {(r['set'], r['mode']): r for r in json.loads((tmp_path / 'eval' / 'results.json').read_text())['rows']}
    same = {('dd3d', 'resampled each epoch'): 'synthetic (resampled each epoch)',
            ('dd3d', 'fixed set'): 'synthetic (fixed set)',
            ('random cpc1', 'random selection'): 'random (2 selections)'}
    for key, name in same.items():
        for figure in ('instance_miou', 'unrestricted_instance_miou'):
            assert rows[key][f'final_{figure}']['values'] == distilled[name][f'final_{figure}']['values']
    assert 'final-epoch inst mIoU %' in (tmp_path / 'eval' / 'results.md').read_text()
    classification = str(ROOT / 'cfgs' / 'distill' / 'demo.yaml')
    with pytest.raises(ValueError, match='is a segmentation set but --cfg evaluates classification'):
        evaluate_main(['--cfg', classification, '--set', f'dd3d={artifact}', '--out', str(tmp_path / 'bad'),
                       'dataset.common.NAME=EmbeddedShapesPart', '+dataset.common.num_shape_classes=3'])
