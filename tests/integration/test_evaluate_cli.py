"""tools/evaluate.py in-process: the protocol table from tiny runs, on the fast path and through a model YAML."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from _artifacts import EMBEDDED, data_cfg_text, generator_artifact, points_artifact
from _tools import folder_held_by_another_process, load_tool
from openpoints_dd.data import RealPool, SyntheticSet
from openpoints_dd.data.artifact import ArtifactError, load_artifact, save_artifact
from openpoints_dd.engine.protocol import (BEST_LABEL, _metrics_run, _real_section, _row, loss_curve_table,
                                          markdown_table, parse_set_args, save_random_artifact)

ROOT = Path(__file__).resolve().parents[2]


def _main():
    return load_tool('evaluate').main


evaluate_main = _main()


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('eval')
    cfg = root / 'data.yaml'
    cfg.write_text(data_cfg_text())
    return {'cfg': cfg, 'points': points_artifact(root / 'points.safetensors'),
            'generator': generator_artifact(root / 'generator.safetensors')}


def test_fast_protocol_table_from_two_sets_and_random(files, tmp_path, capsys):
    out = tmp_path / 'out'
    assert evaluate_main(['--cfg', str(files['cfg']), '--set', f"real1={files['points']}",
                          '--set', f"gen={files['generator']}", '--random', '2', '--seeds', '2',
                          '--out', str(out), 'evaluation.epochs=1']) == 0
    result = json.loads((out / 'results.json').read_text())
    rows = {(r['set'], r['mode']): r for r in result['rows']}
    # a points artifact: one row; a generator: resampled and fixed; random: one row of 2 selections
    assert set(rows) == {('real1', '-'), ('gen', 'resampled each epoch'), ('gen', 'fixed set'),
                         ('random cpc1', 'random selection')}
    assert all(r['final_oa']['n'] == 2 for r in rows.values())
    assert [run['selection'] for run in rows[('random cpc1', 'random selection')]['runs']] == [0, 1]
    for r in rows.values():
        values = [run['oa'] for run in r['runs']]
        assert r['final_oa']['mean'] == pytest.approx(sum(values) / 2)
        assert all(0 <= v <= 100 for v in values) and r['best_oa_papers_protocol']['mean'] >= r['final_oa']['mean']
        assert '1 epochs, 64 points' in r['budget']
    table = (out / 'results.md').read_text()
    assert table.count('\n| PointNet (CPU protocol) |') == 4 and BEST_LABEL in table
    assert table.strip() in capsys.readouterr().out
    with open(out / 'results.csv') as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 4 and {line['set'] for line in lines} == {'real1', 'gen', 'random cpc1'}


def test_model_yaml_trains_one_tiny_epoch_through_train_cls(files, tmp_path):
    out = tmp_path / 'out'
    model = str(ROOT / 'cfgs' / 'train' / 'distilled-pointnet-cpu.yaml')
    assert evaluate_main(['--cfg', str(files['cfg']), '--model', model, '--set', f"real1={files['points']}",
                          '--random', '1', '--seeds', '1', '--out', str(out), 'epochs=1', 'num_points=64',
                          'batch_size=5', 'val_batch_size=10', 'model.widths=[8,16,32]',
                          'dataset.train.num_points=64']) == 0
    row, random_row = json.loads((out / 'results.json').read_text())['rows']
    assert random_row['set'] == 'random cpc1' and (out / 'random' / 'cpc1-selection0.safetensors').is_file()
    assert row['model'] == 'distilled-pointnet-cpu' and row['set'] == 'real1' and row['final_oa']['n'] == 1
    run_dir = Path(row['runs'][0]['run_dir'])
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics['last_epoch'] == 1 and row['runs'][0]['oa'] == metrics['last_oa']
    assert metrics['classes'] == SyntheticSet(files['points']).class_names   # head sized to the 10 embedded classes
    assert metrics['history'][0]['epoch'] == 1 and (run_dir / 'checkpoint' / 'last.safetensors').is_file()


def test_random_selection_artifact_holds_k_real_clouds_per_class(tmp_path):
    pool = RealPool.from_dataset_cfg(EMBEDDED, split='train')
    path = save_random_artifact(pool, 2, 0, tmp_path / 'r.safetensors')
    synthetic = SyntheticSet(path)
    assert synthetic.cpc == 2 and torch.equal(torch.bincount(synthetic.labels), torch.full((10,), 2))
    indices = synthetic.metadata['synthesizer']['indices']
    assert torch.equal(pool.labels[indices], synthetic.labels)      # each stored cloud comes from its class
    again = SyntheticSet(save_random_artifact(pool, 2, 0, tmp_path / 'r2.safetensors'))
    assert torch.equal(again.pos, synthetic.pos)                    # a selection is reproducible


def test_bad_inputs_fail_clearly(files, tmp_path):
    with pytest.raises(ValueError, match='label=path'):
        parse_set_args(['no-equals-sign'])
    with pytest.raises(FileNotFoundError, match='no artifact at'):
        parse_set_args([f'x={tmp_path / "missing.safetensors"}'])
    with pytest.raises(ValueError, match='given twice'):
        parse_set_args([f"a={files['points']}", f"a={files['points']}"])
    with pytest.raises(ValueError, match='nothing to evaluate'):
        evaluate_main(['--cfg', str(files['cfg']), '--out', str(tmp_path / 'o')])
    with pytest.raises(ValueError, match="Closest existing key: 'epochs'"):
        evaluate_main(['--model', str(ROOT / 'cfgs' / 'train' / 'distilled-pointnet-cpu.yaml'), '--set',
                       f"a={files['points']}", '--out', str(tmp_path / 'o'), 'epoch=1'])


def test_markdown_table_shows_mean_std_and_runs():
    summary = {'mean': 50.0, 'std': 2.5, 'n': 2, 'values': [47.5, 52.5]}
    table = markdown_table([{'model': 'm', 'set': 's', 'mode': '-', 'cpc': 1, 'budget': 'b', 'final_oa': summary,
                             'final_macc': summary, 'best_oa_papers_protocol': summary}])
    assert '| m | s | - | 1 | hard labels | 50.00 ± 2.50 | 50.00 ± 2.50 | 50.00 ± 2.50 | 2 | b |' in table



def test_a_teacher_row_names_its_teacher_under_the_table():
    summary = {'mean': 60.0, 'std': 1.0, 'n': 1, 'values': [60.0]}
    report = {'labels': 'teacher labels', 'temperature': 5.0, 'alpha': 0.8, 'smoothing': 0.2,
              'teacher': {'config': 'cfgs/train/t.yaml', 'overrides': [], 'model': 'DistillPointNet',
                          'test_oa': 86.79, 'minutes': 15.3}}
    table = markdown_table([{'model': 'm', 'set': 's', 'mode': '-', 'cpc': 1, 'budget': 'b', 'labels': 'teacher labels',
                             'final_oa': summary, 'final_macc': summary, 'best_oa_papers_protocol': summary,
                             'runs': [{'labels_report': report}]}])
    assert '| m | s | - | 1 | teacher labels | 60.00 ± 1.00 |' in table
    assert ('Teacher labels: DistillPointNet from cfgs/train/t.yaml, trained on the whole real train set in 15.3 min, '
            'test OA 86.79 %; T 5, alpha 0.8, smoothing 0.2.') in table


def test_a_model_row_names_the_labels_its_runs_trained_against():
    """A --model training's metrics.json says what it trained against; its row says so, and keeps the teacher's
    report for the note under the table (a teacher row was printed as 'hard labels' before)."""
    metrics = {'last_oa': 60.0, 'last_macc': 50.0, 'best_oa': 60.0, 'best_epoch': 1, 'epochs': 1, 'seconds': 1.0,
               'run_dir': 'r'}
    report = {'labels': 'teacher labels', 'temperature': 5.0, 'alpha': 0.8, 'smoothing': 0.2,
              'teacher': {'config': 't.yaml', 'overrides': ['num_points=128'], 'model': 'DistillPointNet',
                          'test_oa': 84.56, 'minutes': 6.4}}
    taught = _row('herding', '-', 1, 'pointnet', 'b', [_metrics_run({**metrics, 'labels': 'teacher labels',
                                                                     'labels_report': report}, 0, None)])
    assert taught['labels'] == 'teacher labels' and taught['runs'][0]['labels_report'] == report
    assert 'Teacher labels: DistillPointNet from t.yaml' in markdown_table([taught])
    assert _row('herding', '-', 1, 'pointnet', 'b', [_metrics_run(metrics, 0, None)])['labels'] == 'hard labels'


def test_real_section_turns_a_distilled_dataset_back_into_its_real_one():
    distilled = {'common': {'NAME': 'DistilledDataset', 'real_dataset': 'EmbeddedShapes', 'num_points': 128},
                 'train': {'split': 'train', 'repeat': 4, 'resample': True}, 'val': {'split': 'test'}}
    real = _real_section(distilled)
    assert real == {'common': {'NAME': 'EmbeddedShapes', 'num_points': 128}, 'train': {'split': 'train'},
                    'val': {'split': 'test'}}
    assert distilled['common']['NAME'] == 'DistilledDataset'          # the caller's config is not modified
    assert _real_section(EMBEDDED)['common'] == EMBEDDED['common']


def test_full_train_row_trains_the_model_on_the_real_train_set(files, tmp_path, caplog):
    caplog.set_level('INFO')
    out = tmp_path / 'out'
    model = str(ROOT / 'cfgs' / 'train' / 'distilled-pointnet-cpu.yaml')
    assert evaluate_main(['--cfg', str(files['cfg']), '--model', model, '--full-train', '--full-epochs', '1',
                          '--seeds', '2', '--out', str(out), 'epochs=3', 'num_points=64', 'batch_size=10',
                          'val_batch_size=100', 'model.widths=[8,16,32]', 'dataset.train.num_points=64',
                          'max_train_batches=2', 'val_per_class=1']) == 0
    (row,) = json.loads((out / 'results.json').read_text())['rows']
    assert (row['set'], row['mode'], row['cpc']) == ('full train set', 'real train set', 'all')
    assert row['final_oa']['n'] == 2 and row['budget'] == ('1 epochs, 64 points, batch 10, at most 2 batches per '
                                                           'epoch, tested every 1 epochs on the first 1 test clouds '
                                                           'of every class')
    metrics = json.loads((Path(row['runs'][0]['run_dir']) / 'metrics.json').read_text())
    real_train = RealPool.from_dataset_cfg(_real_section(EMBEDDED), split='train')
    log = f'data EmbeddedShapes | train {len(real_train.labels)} clouds ({len(real_train.labels) // 10} batches of 10)'
    assert metrics['last_epoch'] == 1 and log in caplog.text
    assert f'| val {real_train.num_classes} clouds' in caplog.text


def test_full_train_without_a_model_is_a_clear_error(files, tmp_path):
    with pytest.raises(ValueError, match='--full-train trains the --model YAMLs'):
        evaluate_main(['--cfg', str(files['cfg']), '--full-train', '--out', str(tmp_path / 'out')])


def test_generator_modes_select_the_rows_of_a_generator(files, tmp_path):
    out = tmp_path / 'out'
    assert evaluate_main(['--cfg', str(files['cfg']), '--set', f"gen={files['generator']}", '--seeds', '1',
                          '--generator-modes', 'resampled', '--out', str(out), 'evaluation.epochs=1']) == 0
    rows = json.loads((out / 'results.json').read_text())['rows']
    assert [(r['set'], r['mode']) for r in rows] == [('gen', 'resampled each epoch')]


def test_first_seed_splits_one_table_over_processes(files, tmp_path):
    """Seeds 0 and 1 in one call are, run for run, seed 0 in one call and seed 1 (--first-seed 1) in another."""
    base = ['--cfg', str(files['cfg']), '--set', f"real1={files['points']}", 'evaluation.epochs=1']
    assert evaluate_main(base + ['--seeds', '2', '--out', str(tmp_path / 'both')]) == 0
    assert evaluate_main(base + ['--seeds', '1', '--out', str(tmp_path / 'first')]) == 0
    assert evaluate_main(base + ['--seeds', '1', '--first-seed', '1', '--out', str(tmp_path / 'second')]) == 0
    both, first, second = (json.loads((tmp_path / n / 'results.json').read_text()) for n in ('both', 'first', 'second'))
    assert second['settings']['seeds'] == [1]
    runs = lambda result: [(run['seed'], run['oa']) for run in result['rows'][0]['runs']]   # noqa: E731
    assert runs(both) == runs(first) + runs(second) and [s for s, _ in runs(both)] == [0, 1]
    with pytest.raises(ValueError, match='--first-seed must be >= 0'):
        evaluate_main(base + ['--first-seed', '-1', '--out', str(tmp_path / 'bad')])


def test_merge_pools_a_table_split_over_processes(files, tmp_path):
    """--merge of the seed-0 and seed-1 parts is the two-seed table; a training in two parts, a folder without
    results, and --merge with training options are refused."""
    base = ['--cfg', str(files['cfg']), '--set', f"real1={files['points']}", 'evaluation.epochs=1']
    assert evaluate_main(base + ['--seeds', '2', '--random', '2', '--out', str(tmp_path / 'both')]) == 0
    assert evaluate_main(base + ['--seeds', '1', '--random', '1', '--out', str(tmp_path / 'first')]) == 0
    assert evaluate_main(base + ['--seeds', '1', '--random', '1', '--first-seed', '1',
                                 '--out', str(tmp_path / 'second')]) == 0
    parts = [str(tmp_path / 'first'), str(tmp_path / 'second')]
    assert evaluate_main(['--merge', *parts, '--out', str(tmp_path / 'merged')]) == 0
    both, merged = (json.loads((tmp_path / n / 'results.json').read_text()) for n in ('both', 'merged'))
    assert merged['settings']['merged_from'] == parts
    assert [(r['set'], r['final_oa'], r['final_macc']) for r in merged['rows']] == \
        [(r['set'], r['final_oa'], r['final_macc']) for r in both['rows']]
    assert [run['selection'] for run in merged['rows'][1]['runs']] == [0, 1]
    assert (tmp_path / 'merged' / 'results.md').read_text().startswith(both['table'].splitlines()[0])
    with pytest.raises(ValueError, match=r'real1 \(-\), seed 0, is already in another part'):
        evaluate_main(['--merge', parts[0], parts[0], '--out', str(tmp_path / 'twice')])
    with pytest.raises(FileNotFoundError, match='holds no results.json'):
        evaluate_main(['--merge', parts[0], str(tmp_path), '--out', str(tmp_path / 'none')])
    with pytest.raises(SystemExit):
        evaluate_main(['--merge', parts[0], '--random', '1', '--out', str(tmp_path / 'mixed')])
    seg = json.loads((tmp_path / 'second' / 'results.json').read_text())
    seg['rows'] = [{**row, 'task': 'segmentation', 'set': 'parts'} for row in seg['rows']]
    (tmp_path / 'seg').mkdir()
    (tmp_path / 'seg' / 'results.json').write_text(json.dumps(seg))
    with pytest.raises(ValueError, match='tables of different tasks'):
        evaluate_main(['--merge', parts[0], str(tmp_path / 'seg'), '--out', str(tmp_path / 'tasks')])


def test_bf16_runs_are_a_row_of_their_own_in_a_merged_table(files, tmp_path):
    """The budget states bf16 autocast (the fast protocol's and a model YAML's), so --merge keeps an fp32 and a
    bf16 training of the same set and seed apart instead of refusing them as one training counted twice."""
    base = ['--cfg', str(files['cfg']), '--set', f"real1={files['points']}", '--seeds', '1', 'evaluation.epochs=1']
    assert evaluate_main(base + ['--out', str(tmp_path / 'fp32')]) == 0
    assert evaluate_main(base + ['evaluation.amp=bf16', '--out', str(tmp_path / 'bf16')]) == 0
    assert evaluate_main(['--merge', str(tmp_path / 'fp32'), str(tmp_path / 'bf16'),
                          '--out', str(tmp_path / 'both')]) == 0
    rows = json.loads((tmp_path / 'both' / 'results.json').read_text())['rows']
    assert [row['final_oa']['n'] for row in rows] == [1, 1]
    assert [row['budget'] for row in rows] == ['1 epochs, 64 points, batch 16, tested every 1 epochs',
                                               '1 epochs, 64 points, batch 16, bf16 autocast, tested every 1 epochs']
    model = str(ROOT / 'cfgs' / 'train' / 'distilled-pointnet-cpu.yaml')
    tiny = ['epochs=1', 'num_points=64', 'batch_size=10', 'val_batch_size=100', 'model.widths=[8,16,32]',
            'dataset.train.num_points=64', 'val_per_class=1', 'amp=bf16']
    assert evaluate_main(['--cfg', str(files['cfg']), '--model', model, '--set', f"real1={files['points']}",
                          '--seeds', '1', '--out', str(tmp_path / 'model'), *tiny]) == 0
    (row,) = json.loads((tmp_path / 'model' / 'results.json').read_text())['rows']
    assert row['budget'] == '1 epochs, 64 points, batch 10, bf16 autocast, tested every 1 epochs on the first 1 ' \
                            'test clouds of every class'


def test_a_second_process_on_an_out_folder_is_refused_before_any_work(files, tmp_path):
    """Two tables on one --out folder would train into the same run folders; the second is refused at once, and
    writes nothing, until the first is done."""
    out = tmp_path / 'out'
    table = ['--cfg', str(files['cfg']), '--set', f"real1={files['points']}", '--random', '1', '--seeds', '1',
             'evaluation.epochs=1']
    with folder_held_by_another_process(out, '--out folder') as pid:
        message = rf'--out folder {out} is in use by another process \(pid {pid}\)'
        with pytest.raises(RuntimeError, match=message):
            evaluate_main(table + ['--out', str(out)])
        assert sorted(p.name for p in out.iterdir()) == ['.lock']          # no random selection, no run
        assert evaluate_main(table + ['--out', str(tmp_path / 'part')]) == 0
        with pytest.raises(RuntimeError, match=message):
            evaluate_main(['--merge', str(tmp_path / 'part'), '--out', str(out)])
        assert sorted(p.name for p in out.iterdir()) == ['.lock']
    assert evaluate_main(table + ['--out', str(out)]) == 0
    assert (out / 'results.json').is_file()


def test_workers_run_the_same_trainings_in_parallel_processes(files, tmp_path):
    """Two single-threaded worker processes give the table of one single-threaded process, run for run."""
    model = str(ROOT / 'cfgs' / 'train' / 'distilled-pointnet-cpu.yaml')
    args = ['--cfg', str(files['cfg']), '--model', model, '--set', f"real1={files['points']}", '--random', '1',
            '--seeds', '2', '--full-train', '--full-epochs', '1', 'epochs=2', 'num_points=64', 'batch_size=5',
            'val_batch_size=10', 'model.widths=[8,16,32]', 'dataset.train.num_points=64', 'max_train_batches=2']
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert evaluate_main(args + ['--out', str(tmp_path / 'one')]) == 0
        torch.set_num_threads(2)
        assert evaluate_main(args + ['--out', str(tmp_path / 'two'), '--workers', '2']) == 0
    finally:
        torch.set_num_threads(threads)
    one, two = (json.loads((tmp_path / name / 'results.json').read_text()) for name in ('one', 'two'))
    assert two['settings']['workers'] == 2
    assert [(r['model'], r['set'], r['mode'], r['budget'], r['final_oa']['n']) for r in two['rows']] == \
        [(r['model'], r['set'], r['mode'], r['budget'], r['final_oa']['n']) for r in one['rows']]
    assert [r['set'] for r in two['rows']] == ['real1', 'random cpc1', 'full train set']
    for row_one, row_two in zip(one['rows'], two['rows']):
        assert [(run['seed'], run['oa'], run['best_oa']) for run in row_two['runs']] == \
            [(run['seed'], run['oa'], run['best_oa']) for run in row_one['runs']]
        for run in row_two['runs']:   # each worker wrote its own run folder
            metrics = json.loads((Path(run['run_dir']) / 'metrics.json').read_text())
            assert metrics['last_oa'] == run['oa']
            assert run['train_loss'] == [round(h['train_loss'], 4) for h in metrics['history']] and \
                len(run['train_loss']) == metrics['epochs']
    with pytest.raises(ValueError, match='--workers must be >= 1'):
        evaluate_main(args + ['--out', str(tmp_path / 'bad'), '--workers', '0'])


def test_first_seed_shifts_the_random_selections(files, tmp_path):
    """--first-seed S draws random selections S..S+K-1, so a table split over processes draws each selection once."""
    out = tmp_path / 'out'
    assert evaluate_main(['--cfg', str(files['cfg']), '--set', f"real1={files['points']}", '--random', '2',
                          '--seeds', '1', '--first-seed', '3', '--out', str(out), 'evaluation.epochs=1']) == 0
    rows = {r['set']: r for r in json.loads((out / 'results.json').read_text())['rows']}
    assert [run['selection'] for run in rows['random cpc1']['runs']] == [3, 4]
    assert [run['seed'] for run in rows['real1']['runs']] == [3]


def test_a_set_of_another_dataset_or_class_count_is_refused(files, tmp_path):
    """A 5-class set against 10-class test data (it reported 9.80 %), or another dataset of the same count."""
    five = generator_artifact(tmp_path / 'five.safetensors', num_classes=5, class_names=list('abcde'))
    with pytest.raises(ArtifactError, match=r'written for EmbeddedShapes \(5 classes\) but the config asks for '
                                            r'EmbeddedShapes \(10 classes\)'):
        evaluate_main(['--cfg', str(files['cfg']), '--set', f'five={five}', '--out', str(tmp_path / 'o'),
                       'evaluation.epochs=1'])
    tensors, metadata = load_artifact(files['points'])
    other = save_artifact(tmp_path / 'other.safetensors', tensors, {**metadata, 'dataset': {**metadata['dataset'],
                                                                                       'name': 'ScanObjectNN'}})
    with pytest.raises(ArtifactError, match=r'written for ScanObjectNN \(10 classes\)'):
        evaluate_main(['--cfg', str(files['cfg']), '--set', f'other={other}', '--out', str(tmp_path / 'o2'),
                       'evaluation.epochs=1'])


def test_rows_of_a_model_that_random_does_not_train_are_not_printed_as_figures():
    """Issue 26's bar: a model whose Random rows stay under 20 % (1 per class) or 50 % (10 per class) has no
    measurements at that size; its other models and sizes are printed as usual."""
    def row(model, set_, mode, cpc, oa):
        summary = {'mean': oa, 'std': 0.0, 'n': 1, 'values': [oa]}
        return {'model': model, 'set': set_, 'mode': mode, 'cpc': cpc, 'budget': 'b', 'final_oa': summary,
                'final_macc': summary, 'best_oa_papers_protocol': summary}
    rows = [row('pointmlp', 'dd3d', 'fixed set', 10, 30.0), row('pointmlp', 'random cpc10', 'random selection', 10, 9.9),
            row('pointmlp', 'random cpc1', 'random selection', 1, 21.0), row('pointnet', 'dd3d', 'fixed set', 10, 74.0),
            row('pointnet', 'random cpc10', 'random selection', 10, 71.3)]
    table = markdown_table(rows)
    assert '| pointmlp | dd3d | fixed set | 10 | hard labels | not a measurement: Random under the bar' in table
    assert '| pointmlp | random cpc1 | random selection | 1 | hard labels | 21.00 ± 0.00 |' in table
    assert '| pointnet | dd3d | fixed set | 10 | hard labels | 74.00 ± 0.00 |' in table
    assert 'pointmlp at 10 per class: Random reaches 9.90 % OA, under the 50 %' in table
    assert 'pointnet at 10' not in table and 'pointmlp at 1 ' not in table


def test_loss_curve_table_averages_spans_of_epochs_then_runs():
    """Each span's mean over its epochs, then over the runs; a row without curves (the fast protocol) is left out."""
    def row(set_, curves):
        return {'model': 'm', 'set': set_, 'mode': '-', 'cpc': 10,
                'runs': [{'seed': i, 'train_loss': c} for i, c in enumerate(curves)]}
    rows = [row('a', [[4.0, 2.0, 1.0, 1.0], [2.0, 2.0, 1.0, 3.0]]), row('fast', [[]])]
    table = loss_curve_table(rows, parts=2)
    assert '| m | a | - | 10 | 4 | 2.500 | 1.500 | 2 |' in table
    assert '| 0–50 % | 50–100 % |' in table and 'fast' not in table
    assert loss_curve_table([row('fast', [[]])]) == ''
