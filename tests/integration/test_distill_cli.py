"""tools/distill.py in-process: distill → artifact → DistilledDataset-ready files → evaluation table."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openpoints_dd.data import SyntheticSet
from _tools import folder_held_by_another_process, load_tool

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / 'cfgs' / 'distill' / 'demo.yaml')
TINY = ['+dataset.common.num_per_class_train=6', '+dataset.common.num_per_class_test=3', 'distill.iterations=2',
        'distill.outer_loop=2', 'distill.batch_real=4', 'distill.num_points=64', 'distill.export_num_points=128',
        'distill.synthesizer.hidden_dim=16', 'distill.synthesizer.init_steps=3', 'distill.progress=False',
        'evaluation.epochs=2', 'evaluation.num_points=128', 'evaluation.seeds=[0]', 'evaluation.random_selections=1',
        'distill.budget_minutes=None', "+evaluation.model={'NAME': 'DistillPointNet', 'widths': [8, 16, 32]}"]


def _distill_main():
    return load_tool('distill').main


def test_distill_cli_writes_artifact_metrics_and_table(tmp_path):
    run_dir = tmp_path / 'run'
    assert _distill_main()(['--cfg', DEMO, f'run_dir={run_dir}', *TINY]) == 0
    for name in ('artifact.safetensors', 'checkpoint.pt', 'cfg.yaml', 'log.txt', 'metrics.json'):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics['iterations_done'] == 2
    rows = metrics['evaluation']
    assert set(rows) == {'synthetic (resampled each epoch)', 'synthetic (fixed set)', 'start (resampled each epoch)',
                         'start (fixed set)', 'random (1 selections)'}
    assert all(0 <= row['final_oa']['mean'] <= 100 for row in rows.values())
    # the generator is fitted to real clouds (init: real): its start is evaluated beside it, paired by seed
    for mode in ('resampled each epoch', 'fixed set'):
        after, before = rows[f'synthetic ({mode})']['runs'], rows[f'start ({mode})']['runs']
        paired = metrics['versus_start'][f'synthetic ({mode})']
        assert paired['start'] == f'start ({mode})'
        assert paired['differences'] == [round(a['oa'] - b['oa'], 2) for a, b in zip(after, before)]
        assert [r['seed'] for r in after] == [r['seed'] for r in before] == [0]
    assert any('− its start, paired by seed: ' in line for line in metrics['table'])
    synthetic = SyntheticSet(run_dir / 'artifact.safetensors')
    assert synthetic.is_generator and synthetic.metadata['dataset']['name'] == 'EmbeddedShapes'
    assert 'final-epoch OA' in (run_dir / 'log.txt').read_text()
    assert metrics['table'][0].endswith('hard labels)') and metrics['labels']['labels'] == 'hard labels'

    # evaluation.generator_modes picks the rows of a generator set
    run_dir = tmp_path / 'resampled-only'
    assert _distill_main()(['--cfg', DEMO, f'run_dir={run_dir}', *TINY, "evaluation.generator_modes=['resampled']",
                            'evaluation.random_selections=0']) == 0
    rows = json.loads((run_dir / 'metrics.json').read_text())['evaluation']
    assert set(rows) == {'synthetic (resampled each epoch)', 'start (resampled each epoch)'}

    # evaluation.start_row=False leaves the start out
    run_dir = tmp_path / 'no-start'
    assert _distill_main()(['--cfg', DEMO, f'run_dir={run_dir}', *TINY, "evaluation.generator_modes=['fixed']",
                            'evaluation.random_selections=0', 'evaluation.start_row=False']) == 0
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert set(metrics['evaluation']) == {'synthetic (fixed set)'} and 'versus_start' not in metrics


def test_the_start_row_is_the_set_a_run_of_no_iterations_exports(tmp_path):
    """artifact-start.safetensors is the synthesizer before the first iteration: the same tensors as the artifact of
    the same config run for no iterations (the separate start export it replaces), and matching moved the set."""
    main = _distill_main()
    assert main(['--cfg', DEMO, f'run_dir={tmp_path / "run"}', *TINY, 'evaluation=null']) == 0
    assert main(['--cfg', DEMO, f'run_dir={tmp_path / "start"}', *TINY, 'evaluation=null',
                 'distill.iterations=0']) == 0
    paths = {name: tmp_path / run / f'{file}.safetensors' for name, run, file in
             [('start', 'run', 'artifact-start'), ('alone', 'start', 'artifact'), ('after', 'run', 'artifact')]}
    assert SyntheticSet(paths['start']).metadata['start'] is True
    assert SyntheticSet(paths['start']).metadata['iterations_done'] == 0
    assert SyntheticSet(paths['after']).metadata['iterations_done'] == 2
    start, alone, after = (load_file(paths[name]) for name in ('start', 'alone', 'after'))
    assert start.keys() == alone.keys() == after.keys()
    assert all(torch.equal(start[k], alone[k]) for k in start)
    assert not all(torch.equal(start[k], after[k]) for k in start)
    assert not (tmp_path / 'start' / 'artifact-start.safetensors').exists()   # no iterations: the artifact is the start


@pytest.mark.parametrize('override, error, match', [
    ('distill.iteratons=3', ValueError, r"unknown key distill\.iteratons \(did you mean 'iterations'\?\)"),
    ('distill.objective.NAME=NoSuchObjective', ValueError, "unknown objective 'NoSuchObjective'. Registered: "),
    ('dataset.common.NAME=ModelNet40Ply2048', None, None),
])
def test_distill_cli_bad_input_is_a_clear_error(tmp_path, override, error, match):
    tiny = TINY
    if error is None:   # a missing data directory
        error, match = FileNotFoundError, 'does not exist'
        override = [override, f'+dataset.common.data_dir={tmp_path}/missing']
        tiny = [o for o in TINY if not o.startswith('+dataset.common.')]   # EmbeddedShapes' keys
    else:
        override = [override]
    with pytest.raises(error, match=match):
        _distill_main()(['--cfg', DEMO, f'run_dir={tmp_path / "run"}', *tiny, *override])


def test_a_resume_with_another_config_is_refused_forced_or_restarted(tmp_path):
    run_dir = tmp_path / 'run'
    assert _distill_main()(['--cfg', DEMO, f'run_dir={run_dir}', *TINY, 'evaluation.random_selections=0']) == 0
    first = json.loads((run_dir / 'metrics.json').read_text())
    assert first['init'] and first['iterations_done'] == 2
    start = (run_dir / 'artifact-start.safetensors').read_bytes()
    # the same config (more iterations would change it): resumes; a harmless change (progress, evaluation) too
    assert _distill_main()(['--cfg', DEMO, f'run_dir={run_dir}', *TINY, 'evaluation.random_selections=0',
                            'evaluation.seeds=[1]', 'distill.log_every=5']) == 0
    resumed = json.loads((run_dir / 'metrics.json').read_text())
    assert resumed['iterations_done'] == 2 and resumed['init'] == first['init']   # metrics complete after a resume
    assert (run_dir / 'artifact-start.safetensors').read_bytes() == start          # the start is the first run's
    assert 'start (fixed set)' in resumed['evaluation']
    with pytest.raises(ValueError, match=r"holds a checkpoint of another config; this one changes "
                                         r"distill\.syn_optimizer\.lr: 0\.001 -> 0\.5, seed: 0 -> 5"):
        _distill_main()(['--cfg', DEMO, f'run_dir={run_dir}', *TINY, 'seed=5', 'distill.syn_optimizer.lr=0.5'])
    assert _distill_main()(['--cfg', DEMO, f'run_dir={run_dir}', *TINY, 'evaluation.random_selections=0',
                            'distill.iterations=3', 'resume=force']) == 0
    assert json.loads((run_dir / 'metrics.json').read_text())['iterations_done'] == 3
    assert "resumed_with_changes: ['distill.iterations: 2 -> 3']" in (run_dir / 'cfg.yaml').read_text()
    assert _distill_main()(['--cfg', DEMO, f'run_dir={run_dir}', *TINY, 'evaluation.random_selections=0',
                            'distill.iterations=1', 'resume=never']) == 0
    assert json.loads((run_dir / 'metrics.json').read_text())['iterations_done'] == 1
    with pytest.raises(ValueError, match="resume must be one of 'auto', 'force', 'never'"):
        _distill_main()(['--cfg', DEMO, f'run_dir={run_dir}', *TINY, 'resume=sometimes'])


def test_a_second_process_on_a_run_dir_is_refused(tmp_path):
    import time
    run_dir = tmp_path / 'run'
    with folder_held_by_another_process(run_dir) as pid:
        with pytest.raises(RuntimeError, match=rf'run_dir {run_dir} is in use by another process \(pid {pid}\)'):
            _distill_main()(['--cfg', DEMO, f'run_dir={run_dir}', *TINY])
    time.sleep(0.1)
    assert _distill_main()(['--cfg', DEMO, f'run_dir={run_dir}', *TINY, 'evaluation.random_selections=0']) == 0
