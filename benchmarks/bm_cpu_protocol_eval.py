"""Evaluate distilled artifacts and Random under research/cpu_protocol.md and print a markdown table.

    .venv/bin/python benchmarks/bm_cpu_protocol_eval.py --cfg cfgs/distill/modelnet40/dd3d-cpc1-cpu30m.yaml \
        --artifact dd3d-scratch=runs/a/artifact.safetensors --artifact dd3d-realinit=runs/b/artifact.safetensors

The data and evaluation settings come from the config (its `dataset` and `evaluation` sections); each artifact is
trained with `evaluation.seeds` (generator sets: fresh noise every epoch), Random with `random_selections`
selections at the artifacts' clouds per class. Final-epoch test accuracy, mean ± std.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openpoints_dd  # noqa: E402,F401
from openpoints_dd.data import RealPool, SyntheticSet  # noqa: E402
from openpoints_dd.engine.evaluate import evaluation_settings, format_mean_std, summarize  # noqa: E402
from openpoints_dd.engine.pipeline import evaluate_set, random_baseline, synthetic_sampler, test_pool  # noqa: E402
from openpoints_dd.registry import build_rotator  # noqa: E402
from openpoints_dd.utils.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cfg', required=True)
    parser.add_argument('--artifact', action='append', default=[], help='label=path')
    parser.add_argument('--resample', choices=['yes', 'no'], default='yes')
    parser.add_argument('--out', default=None, help='JSON output path')
    args, overrides = parser.parse_known_args(argv)
    cfg = load_config(args.cfg, overrides)
    settings = evaluation_settings(cfg.get('evaluation'))
    train = RealPool.from_dataset_cfg(cfg['dataset'], split='train', num_points=int(settings['num_points']))
    test = test_pool(cfg['dataset'], int(settings['num_points']))
    rotator = build_rotator(cfg['distill'].get('rotator'))
    seeds = list(settings.get('seeds') or [0])
    rows, cpc = {}, None
    for item in args.artifact:
        label, path = item.split('=', 1)
        synthetic = SyntheticSet(path)
        cpc = synthetic.cpc
        start = time.perf_counter()
        runs = evaluate_set(synthetic_sampler(synthetic, settings['num_points'], args.resample == 'yes'), test,
                            settings, seeds, rotator, 'cpu')
        rows[label] = {'final': summarize(runs), 'runs': runs, 'artifact': path,
                       'iterations_done': synthetic.metadata.get('iterations_done'),
                       'distill_seconds': synthetic.metadata.get('seconds'), 'eval_seconds': time.perf_counter() - start}
    selections = list(range(int(settings.get('random_selections') or 5)))
    runs = random_baseline(train, test, cpc or int(cfg['distill']['cpc']), settings, selections, rotator, 'cpu')
    rows[f'random ({len(selections)} selections)'] = {'final': summarize(runs), 'runs': runs}
    print(f'| set | final-epoch OA % (mean ± std) | runs | updates |\n|---|---|---|---|')
    for label, row in rows.items():
        print(f"| {label} | {format_mean_std(row['final'])} | {row['final']['values']} | {row.get('iterations_done', '-')} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
