"""benchmarks/distill_step.py at a toy size: every measurement runs (a broken config once made them all exit 1
while the benchmark itself returned 0)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_measurement_of_the_distill_step_benchmark_runs(tmp_path):
    out = tmp_path / 'step.json'
    done = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'distill_step.py'), '--classes', '2', '--cpc', '1',
                           '--points', '64', '--real', '2', '--synthesizers', 'ExplicitPoints', '--repeats', '1',
                           '--classes-scan', '--out', str(out)],
                          cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    row, = json.loads(out.read_text())['rows']
    measured = [row['baseline'], row['ours'], row['one_class'], *row['bf16'].values()]
    assert len(measured) == 6 and all(m['seconds'] > 0 for m in measured), row
    ours = row['ours']   # its own FLOPs, counted, so that its share of the CPU's peak is its efficiency
    assert ours['gflop_per_step'] > 0 and ours['own_gflops'] == ours['gflop_per_step'] / ours['seconds']
    assert all(0.5 < check['gradient_cosine'] <= 1 for check in row['bf16_check'].values()), row['bf16_check']
