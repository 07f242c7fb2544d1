"""How long a distillation config's whole run takes, projected from its first timed iterations.

    python benchmarks/projected_run.py --cfg cfgs/distill/modelnet40/dd3d-cpc1.yaml --iterations 10 \
        --out docs/results/projected_dd3d_cpc1.json

Builds the config's Distiller on its real data (the synthesizer's initialisation included and timed apart),
runs `--iterations` iterations exactly as `tools/distill.py` would (`Distiller.run_iteration`: fresh backbone,
the outer matching steps, the inner training), and projects the config's `distill.iterations` from their mean.
Nothing is written to the run directory; the threads are torch's (set OMP_NUM_THREADS). Writes JSON with the
CPU, torch version and threads.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import openpoints_dd  # noqa: E402,F401
from openpoints_dd.data.real_pool import RealPool  # noqa: E402
from openpoints_dd.engine.distill import Distiller  # noqa: E402
from openpoints_dd.settings import load_distill_config  # noqa: E402
from openpoints_dd.utils.memory import keep_freed_memory  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_step import _cpu_name  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cfg', required=True, help='distillation YAML')
    parser.add_argument('--iterations', type=int, default=10, help='iterations timed. Default 10')
    parser.add_argument('--out', default=None, help='JSON report')
    args, overrides = parser.parse_known_args()
    keep_freed_memory()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_distill_config(args.cfg, [f'run_dir={run_dir}', *overrides])
        d = cfg['distill']
        pool = RealPool.from_dataset_cfg(cfg['dataset'], split='train', num_points=max(1024, int(d['num_points'])))
        distiller = Distiller(cfg, pool, run_dir)
        start = time.perf_counter()
        distiller.initialize()
        init_seconds = time.perf_counter() - start
        seconds = []
        for iteration in range(args.iterations):
            start = time.perf_counter()
            distiller.run_iteration(iteration, int(d['outer_loop']), int(d['inner_loop']))
            seconds.append(time.perf_counter() - start)
            print(f'iteration {iteration}: {seconds[-1]:.2f} s', flush=True)
    mean = statistics.mean(seconds)
    total = int(d['iterations'])
    report = {'cfg': args.cfg, 'overrides': overrides, 'machine': _cpu_name(), 'threads': torch.get_num_threads(),
              'torch': torch.__version__, 'timed_iterations': seconds, 'mean_iteration_s': mean,
              'iterations': total, 'init_s': init_seconds, 'projected_hours': (init_seconds + mean * total) / 3600}
    print(f'{args.cfg}: {mean:.2f} s per iteration (mean of {len(seconds)}, {torch.get_num_threads()} threads, '
          f'{report["machine"]}); {total} iterations + init {init_seconds:.0f} s -> {report["projected_hours"]:.2f} h')
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
