"""How far the first synthesizer steps of a distill config move the clouds: a step-size check.

An image method's learning rate does not carry over to point coordinates by itself (DM's lr 1.0 throws points far
out, and the unit-sphere normalisation then squeezes the rest of the cloud towards its centre:
docs/results/baselines_cpu30m.md). This runs the config's own engine for a few iterations from its own start and
prints, per step, the matching loss and how far the exported clouds moved, so a learning rate can be checked in
seconds instead of a 30-minute run and its evaluation.

    .venv/bin/python tools/first_steps.py --cfg cfgs/distill/modelnet40/dm-cpc10-cpu30m.yaml
    .venv/bin/python tools/first_steps.py --cfg cfgs/distill/modelnet40/dm-cpc10-cpu30m.yaml distill.syn_optimizer.lr=0.01
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openpoints_dd  # noqa: E402,F401  (registers everything, fixes openpoints on this machine)
from openpoints_dd.data import RealPool  # noqa: E402
from openpoints_dd.engine.distill import Distiller  # noqa: E402
from openpoints_dd.engine.evaluate import evaluation_settings  # noqa: E402
from openpoints_dd.settings import load_distill_config  # noqa: E402


def exported_clouds(distiller: Distiller, num_points: int) -> torch.Tensor:
    """Every slot as matching and training see it (synthesized with a fixed draw, normalised, canonicalised)."""
    with torch.no_grad():
        slots = torch.arange(distiller.synthesizer.num_slots)
        return distiller.synthetic_clouds(slots, num_points, torch.Generator().manual_seed(0)).cpu()


def cloud_shape(clouds: torch.Tensor) -> dict:
    """The median distance of a point from its cloud's centroid: it falls when a cloud collapses inwards."""
    radius = (clouds - clouds.mean(dim=1, keepdim=True)).norm(dim=-1)
    return {'median_radius': round(radius.median().item(), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cfg', required=True, help='distill YAML')
    parser.add_argument('--steps', type=int, default=3, help='iterations to run. Default 3')
    parser.add_argument('--json', default=None, help='also write the rows to this JSON file')
    args, overrides = parser.parse_known_args(argv)
    if args.steps < 1:
        parser.error(f'--steps must be >= 1, got {args.steps}')
    cfg = load_distill_config(args.cfg, overrides)
    d = cfg['distill']
    num_points = int(evaluation_settings(cfg.get('evaluation'))['num_points'])   # the exported resolution
    pool = RealPool.from_dataset_cfg(cfg['dataset'], split='train', num_points=num_points)
    rows = []
    with tempfile.TemporaryDirectory() as run_dir:
        distiller = Distiller(cfg, pool, run_dir)
        distiller.initialize()
        before = exported_clouds(distiller, num_points)
        rows.append({'step': 0, 'loss_before': None, 'seconds': 0.0, **cloud_shape(before)})
        start = before
        for step in range(1, args.steps + 1):
            t0 = time.perf_counter()
            loss = distiller.run_iteration(step - 1, int(d['outer_loop']), int(d['inner_loop']))
            seconds = time.perf_counter() - t0
            after = exported_clouds(distiller, num_points)
            moved = (after - before).norm(dim=-1)
            rows.append({'step': step, 'loss_before': round(loss, 4), 'seconds': round(seconds, 2),
                         'moved_median': round(moved.median().item(), 5), 'moved_mean': round(moved.mean().item(), 5),
                         'moved_max': round(moved.max().item(), 4),
                         'from_start_mean': round((after - start).norm(dim=-1).mean().item(), 5), **cloud_shape(after)})
            before = after
    lr = d['syn_optimizer'].get('lr')
    print(f'{args.cfg}  (synthesizer lr {lr}, {d["synthesizer"]["NAME"]}, objective {d["objective"]["NAME"]}, '
          f'{num_points} exported points)')
    print(f'{"step":>4} {"loss before":>12} {"s":>6} {"moved: median":>14} {"mean":>9} {"max":>8} '
          f'{"from start":>11} {"median radius":>14}')
    print(f'{0:>4} {"start":>12} {"":>6} {"":>14} {"":>9} {"":>8} {"":>11} {rows[0]["median_radius"]:>14.4f}')
    for r in rows[1:]:
        print(f'{r["step"]:>4} {r["loss_before"]:>12.4g} {r["seconds"]:>6.1f} {r["moved_median"]:>14.5f} '
              f'{r["moved_mean"]:>9.5f} {r["moved_max"]:>8.4f} {r["from_start_mean"]:>11.5f} {r["median_radius"]:>14.4f}')
    if args.json:
        Path(args.json).write_text(json.dumps({'cfg': args.cfg, 'overrides': overrides, 'rows': rows}, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
