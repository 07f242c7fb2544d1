"""torchrun with 2 gloo processes gives the synthesizer a 1-process run gives (classes sharded, gradients summed)."""
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / 'cfgs' / 'distill' / 'demo.yaml')
TINY = ['+dataset.common.num_per_class_train=6', '+dataset.common.num_per_class_test=3', 'distill.iterations=2',
        'distill.outer_loop=3', 'distill.batch_real=4', 'distill.num_points=64', 'distill.export_num_points=128',
        'distill.synthesizer.hidden_dim=16', 'distill.synthesizer.init=noise', 'distill.progress=False',
        'distill.budget_minutes=None', 'distill.eval_every_minutes=0', "+distill.backbone.widths=[8, 16, 32]",
        'evaluation=None']


def _distill(run_dir: Path, nproc: int) -> subprocess.CompletedProcess:
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--standalone'] \
        if nproc > 1 else [sys.executable]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run([*launcher, str(ROOT / 'tools' / 'distill.py'), '--cfg', DEMO, f'run_dir={run_dir}', *TINY],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_two_gloo_processes_match_one_process(tmp_path):
    one, two = _distill(tmp_path / 'one', 1), _distill(tmp_path / 'two', 2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(tmp_path / 'one' / 'artifact.safetensors'), load_file(tmp_path / 'two' / 'artifact.safetensors')
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    log = (tmp_path / 'two' / 'log.txt').read_text()
    assert '2 process(es)' in log and 'step 2/2' in log
    assert not (tmp_path / 'two' / 'log.txt.1').exists() and 'rank 1' not in log   # rank 0 alone writes the log
    state = torch.load(tmp_path / 'two' / 'checkpoint.pt', weights_only=True)
    assert all(int(s['step']) == 2 * 3 for s in state['optimizer']['state'].values())   # 2 iterations x 3 outer steps


def _rank_values(rank: int, world: int, init_file: str, results) -> None:
    """One gloo process: its own clock reading, and rank 0's as `value_of_main` gives it."""
    import torch.distributed as dist
    from openpoints_dd.utils import distributed
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        own = 100.0 + rank + 0.123456789   # the processes' clocks differ near a schedule's boundary
        results[rank] = (own, distributed.value_of_main(own), distributed.decision_of_main(rank == 0))
    finally:
        dist.destroy_process_group()


def test_every_gloo_process_gets_rank_0s_value(tmp_path):
    """`value_of_main` (the run's clock the schedule and the tail read) is rank 0's on every rank, to the bit."""
    import torch.multiprocessing as mp
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_values, args=(2, str(tmp_path / 'init'), results), nprocs=2)
        results = dict(results)
    assert results[1][0] != results[0][0]
    assert results[0][1:] == results[1][1:] == (results[0][0], True)
