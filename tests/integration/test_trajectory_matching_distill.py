"""Trajectory matching end to end: tools/distill.py at tiny size, and bit-identical resume."""
import json
from pathlib import Path

import torch

from conftest import run_until_crash, tiny_embedded_cfg
from openpoints_dd.data import RealPool, SyntheticSet
from openpoints_dd.engine.distill import CHECKPOINT_NAME, Distiller
from _tools import load_tool

ROOT = Path(__file__).resolve().parents[2]
TM = {'NAME': 'TrajectoryMatching', 'num_experts': 2, 'train_epochs': 3, 'expert_epochs': 1, 'max_start_epoch': 2,
      'syn_steps': 3, 'batch_syn': 6, 'expert_batch': 16, 'lr_teacher': 0.01, 'lr_lr': 1e-5}


def _distill_main():
    return load_tool('distill').main


def test_tm_distillation_through_the_cli_writes_an_artifact(tmp_path):
    from test_distill_cli import TINY
    run_dir, buffer_dir = tmp_path / 'run', tmp_path / 'experts'
    tm = [f'distill.objective={json.dumps({**TM, "buffer_dir": str(buffer_dir)})}', 'distill.outer_loop=1',
          '+distill.backbone.widths=[8, 16, 32]']
    assert _distill_main()(['--cfg', str(ROOT / 'cfgs' / 'distill' / 'demo.yaml'), f'run_dir={run_dir}', *TINY,
                            *tm]) == 0
    synthetic = SyntheticSet(run_dir / 'artifact.safetensors')
    assert synthetic.metadata['objective']['NAME'] == 'TrajectoryMatching'
    assert len(list(buffer_dir.glob('expert_*.safetensors'))) == 2
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics['iterations_done'] == 2 and all(0 < loss < 10 for loss in metrics['loss_history'])


def _cfg(root):
    return tiny_embedded_cfg(root, iterations=3, outer_loop=1, objective=dict(TM),
                             synthesizer={'NAME': 'ExplicitPoints', 'num_points': 128, 'init': 'real'},
                             syn_optimizer={'NAME': 'sgd', 'lr': 0.1, 'momentum': 0.5})


def _pool(cfg):
    return RealPool.from_dataset_cfg(cfg['dataset'], split='train', num_points=128)


def test_tm_resume_is_bit_identical_including_the_step_size(tmp_path):
    full_cfg = _cfg(tmp_path / 'full')
    full = Distiller(full_cfg, _pool(full_cfg), full_cfg['run_dir'])
    full_result = full.run()

    part_cfg = _cfg(tmp_path / 'part')
    interrupted = Distiller(part_cfg, _pool(part_cfg), part_cfg['run_dir'])
    run_until_crash(interrupted, crash_at=2)
    assert (tmp_path / 'part' / 'run' / CHECKPOINT_NAME).is_file()
    resumed = Distiller(part_cfg, _pool(part_cfg), part_cfg['run_dir'])
    assert resumed.objective_setup_seconds == 0.0   # the experts were reused, not retrained
    result = resumed.run()
    assert result.iterations_done == 3 and result.loss_history == full_result.loss_history
    assert torch.equal(resumed.objective.syn_lr, full.objective.syn_lr)
    assert resumed.objective.syn_lr.item() != TM['lr_teacher']   # the step size was learned
    assert torch.equal(SyntheticSet(result.artifact_path).pos, SyntheticSet(full_result.artifact_path).pos)
