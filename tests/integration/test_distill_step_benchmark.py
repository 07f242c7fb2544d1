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
    assert all(row[m]['seconds'] > 0 for m in ('baseline', 'ours', 'one_class')), row
    # the bf16 options are measured, and checked against fp32, where the CPU multiplies bf16 faster than fp32; on
    # one without bf16 units (AVX2 only) each is skipped, saying why
    assert len(row['bf16']) == 3, row['bf16']
    for name, measurement in row['bf16'].items():
        if 'seconds' in measurement:
            assert measurement['seconds'] > 0 and name in row['bf16_check'], (name, row)
        else:
            assert measurement['error'].startswith('skipped: bf16 matmul') and name not in row['bf16_check'], (name, row)
    ours = row['ours']   # its own FLOPs, counted, so that its share of the CPU's peak is its efficiency
    assert ours['gflop_per_step'] > 0 and ours['own_gflops'] == ours['gflop_per_step'] / ours['seconds']
    assert all(0.5 < check['gradient_cosine'] <= 1 for check in row['bf16_check'].values()), row['bf16_check']
