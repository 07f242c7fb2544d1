"""Where M3D's kernel widths sit among the distances they compare, and how a shift of them scales the gradient.

    OMP_NUM_THREADS=1 python benchmarks/m3d_bandwidth.py \
        --cfg cfgs/distill/modelnet40/m3d-falling-mean-herding-cpc10-cpu30m.yaml \
        --artifact runs/x48/start-s0/artifact.safetensors --classes 0 7 22 --shifts 1 4 16

For each class, through a fresh network of the config's backbone (one per class, seeded by the class) and against
`batch_real` real clouds of the class at `num_points`: the pairwise squared distances of the real and synthetic
descriptors (M3D's sorted features: each channel's |values| with the config's `absolute: true`, its signed values
with `absolute: false`) as multiples of the bandwidth M3D uses (their mean, off the diagonal), the 5th–95th
percentiles and each synthetic cloud's nearest real one; then M3D's loss and the norm of its gradient with respect to
the synthetic points with the config's widths divided by each shift. The loss is M3D's matching term alone, through
the fresh network: the config's semi-trained networks and cross-entropy term (queue_*, ce_weight) are left out.

The descriptors are of whole clouds, as M3D's are for the explicit-cloud configs (one partition of every point,
`num_points` = `points_per_partition`, no rotator): a config with partitions > 1, other sizes or a rotator is
refused, rather than printing numbers M3D never uses.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import openpoints_dd  # noqa: E402,F401  (registers everything, fixes openpoints on this machine)
from openpoints_dd.data.real_pool import RealPool  # noqa: E402
from openpoints_dd.data.synthetic_set import SyntheticSet  # noqa: E402
from openpoints_dd.engine.distill import Distiller  # noqa: E402
from openpoints_dd.registry import build_objective  # noqa: E402
from openpoints_dd.objectives.m3d import sorted_features  # noqa: E402
from openpoints_dd.objectives.model_queue import without_queue  # noqa: E402
from openpoints_dd.objectives.sadm import pairwise_squared_distances, rbf_bandwidth  # noqa: E402
from openpoints_dd.settings import load_distill_config  # noqa: E402

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cfg', required=True, help='an M3D distill YAML: its dataset, backbone and objective')
    parser.add_argument('--artifact', required=True, help='a points artifact of that dataset (e.g. a start)')
    parser.add_argument('--classes', type=int, nargs='+', default=[0, 7, 22])
    parser.add_argument('--shifts', type=float, nargs='+', default=[1, 4, 16], help='divide every width by these')
    args = parser.parse_args(argv)
    cfg = load_distill_config(args.cfg)
    d = cfg['distill']
    if d['objective']['NAME'] != 'M3D':
        parser.error(f"{args.cfg}: distill.objective is {d['objective']['NAME']}, not M3D")
    # M3D's matching term alone, its defaults resolved: the same objective as the run's, less the queue and the term
    plain = build_objective(without_queue(d['objective']))
    if plain.partitions > 1 or int(d['num_points']) != plain.points_per_partition:
        parser.error(f"{args.cfg}: objective.partitions {plain.partitions}, objective.points_per_partition "
                     f"{plain.points_per_partition}, distill.num_points {d['num_points']}: this benchmark describes "
                     f'whole clouds, which M3D matches only with one partition of every point (partitions: 1, '
                     f'points_per_partition = num_points, as the explicit-cloud configs)')
    rotator = (d.get('rotator') or {}).get('NAME', 'IdentityRotator')
    if rotator != 'IdentityRotator':
        parser.error(f'{args.cfg}: distill.rotator is {rotator}; this benchmark describes the clouds as stored, '
                     f'not as the rotator turns them for matching. Use a config without a rotator')
    pool = RealPool.from_dataset_cfg(cfg['dataset'], 'train', num_points=int(d['num_points']))
    synthetic = SyntheticSet(args.artifact, expect_dataset=pool.name, expect_num_classes=pool.num_classes)
    if synthetic.pos.shape[1] != plain.points_per_partition:
        parser.error(f'{args.artifact}: clouds of {synthetic.pos.shape[1]} points; M3D would match their '
                     f'{plain.points_per_partition} furthest-point-sampled points, not the whole clouds described here')
    # the run's own backbone and objective, built as a run builds them; the Distiller writes nothing until it runs
    distiller = Distiller(cfg, pool, run_dir=Path('/nonexistent'))
    base = list(distiller.objective.bandwidth_multipliers)
    for c in args.classes:
        torch.manual_seed(c)
        backbone = distiller.build_backbone()
        real = pool.sample(c, int(d['batch_real']), int(d['num_points']), torch.Generator().manual_seed(c))
        syn = synthetic.pos[synthetic.labels == c]
        with torch.no_grad():
            features = sorted_features(backbone, torch.cat([real, syn]), distiller.objective.every_layer,
                                       distiller.objective.absolute)
        squared = pairwise_squared_distances(features.unsqueeze(0))
        ratio = (squared / rbf_bandwidth(squared))[0]    # in units of the bandwidth M3D's MMD uses
        n, b = ratio.shape[0], real.shape[0]
        off_diagonal = ratio[~torch.eye(n, dtype=torch.bool)]
        print(f'class {c}: squared distance / bandwidth, percentiles {QUANTILES}: '
              + ', '.join(f'{q:.2f}' for q in off_diagonal.quantile(torch.tensor(QUANTILES)).tolist())
              + '; each synthetic cloud to its nearest real one: '
              + ', '.join(f'{v:.2f}' for v in ratio[b:, :b].min(dim=1).values.tolist()))
        for shift in args.shifts:
            objective = build_objective({**without_queue(d['objective']),
                                         'bandwidth_multipliers': [m / shift for m in base]})
            points = syn.clone().requires_grad_(True)
            loss = objective(backbone, points, real, c)
            gradient, = torch.autograd.grad(loss, points)
            print(f'  widths / {shift:g}: loss {loss.item():.5f}, gradient norm {gradient.norm().item():.4g}')


if __name__ == '__main__':
    main()
