"""tools/first_steps.py: a learning rate's first steps, measured on the config's own engine."""
import json
from pathlib import Path
from _tools import load_tool

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / 'cfgs' / 'distill' / 'demo.yaml')
TINY = ['+dataset.common.num_per_class_train=6', '+dataset.common.num_per_class_test=3', 'distill.outer_loop=1',
        'distill.batch_real=4', 'distill.num_points=64', 'distill.synthesizer.hidden_dim=16',
        'distill.synthesizer.init_steps=3', 'evaluation.num_points=128']


def _first_steps(argv):
    return load_tool('first_steps').main(argv)


def test_a_larger_rate_moves_the_clouds_further(tmp_path, capsys):
    moved = {}
    for lr in (1e-5, 1e-2):
        out = tmp_path / f'{lr}.json'
        assert _first_steps(['--cfg', DEMO, '--steps', '2', '--json', str(out), *TINY,
                             f'distill.syn_optimizer.lr={lr}']) == 0
        rows = json.loads(out.read_text())['rows']
        assert [r['step'] for r in rows] == [0, 1, 2] and rows[1]['loss_before'] > 0
        moved[lr] = rows[-1]['from_start_mean']
    assert 0 < moved[1e-5] < moved[1e-2]
    assert 'median radius' in capsys.readouterr().out
