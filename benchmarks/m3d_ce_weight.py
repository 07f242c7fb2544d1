"""How large M3D's cross-entropy term is against M3D itself, through networks trained as the queue trains them.

    OMP_NUM_THREADS=1 python benchmarks/m3d_ce_weight.py \
        --cfg cfgs/distill/modelnet40/m3d-ce-falling-mean-herding-cpc10-cpu30m.yaml \
        --artifact runs/x48/start-s0/artifact.safetensors --steps 0 25 50 100 --classes 0 7 22 31

`ce_weight` is a ratio of two gradients: the term should steer the points, not replace M3D's pull. For each number
of training steps, a fresh network of the config's backbone (seeded) takes that many Adam steps of cross-entropy on
`queue_batch` real clouds drawn as matching draws them, at `queue_lr` (what a slot of the queue has had when it
embeds), then, for each class, against `batch_real` real clouds of the class: the norm of M3D's gradient with
respect to the class's synthetic points, and that of the class's mean cross-entropy (the term at weight 1). Their
ratio, M3D over the term, times the share wanted gives the weight. `queue_batch` and `queue_lr` are read from the
run's own objective (the Distiller's), so that a default the config leaves out is the one the run uses.

The real and synthetic clouds are taken as stored: a config with a rotator (which matching applies to both) is
refused.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import openpoints_dd  # noqa: E402,F401  (registers everything, fixes openpoints on this machine)
from openpoints_dd.data.real_pool import RealPool  # noqa: E402
from openpoints_dd.data.synthetic_set import SyntheticSet  # noqa: E402
from openpoints_dd.engine.distill import Distiller  # noqa: E402
from openpoints_dd.objectives.model_queue import SemiTrainedQueue, class_cross_entropy, without_queue  # noqa: E402
from openpoints_dd.registry import build_objective  # noqa: E402
from openpoints_dd.settings import load_distill_config  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cfg', required=True, help='an M3D distill YAML with a queue: its data, backbone, objective')
    parser.add_argument('--artifact', required=True, help='a points artifact of that dataset (e.g. a start)')
    parser.add_argument('--steps', type=int, nargs='+', default=[0, 25, 50, 100], help='training steps per network')
    parser.add_argument('--classes', type=int, nargs='+', default=[0, 7, 22, 31])
    args = parser.parse_args(argv)
    cfg = load_distill_config(args.cfg)
    d = cfg['distill']
    settings = dict(d['objective'])
    if settings['NAME'] != 'M3D' or not settings.get('queue_size'):
        parser.error(f'{args.cfg}: distill.objective must be M3D with a queue (queue_size > 0)')
    rotator = (d.get('rotator') or {}).get('NAME', 'IdentityRotator')
    if rotator != 'IdentityRotator':
        parser.error(f'{args.cfg}: distill.rotator is {rotator}; this benchmark takes the real and synthetic clouds '
                     f'as stored, not as the rotator turns them for matching. Use a config without a rotator')
    pool = RealPool.from_dataset_cfg(cfg['dataset'], 'train', num_points=int(d['num_points']))
    synthetic = SyntheticSet(args.artifact, expect_dataset=pool.name, expect_num_classes=pool.num_classes)
    # the run's own backbone and batches, built as a run builds them; the Distiller writes nothing until it runs
    distiller = Distiller(cfg, pool, run_dir=Path('/nonexistent'))
    run = distiller.objective   # the run's M3D, every default resolved: its queue's batch and rate
    m3d = build_objective(without_queue(settings))   # its matching term alone, through the network it is given
    generator = torch.Generator().manual_seed(0)
    for steps in args.steps:
        torch.manual_seed(steps)
        backbone = distiller.build_backbone().requires_grad_(False)
        # one slot of the run's own queue, trained `steps` steps as the run trains it
        queue = SemiTrainedQueue(size=1, lifetime=max(steps, 1), batch=run.queue_batch, lr=run.queue_lr)
        for iteration in range(steps):
            backbone = queue.next_model(backbone, iteration,
                                        lambda size: distiller.real_batch(size, int(d['num_points']), generator))
        loss = queue.last_loss[0]
        ratios = []
        for c in args.classes:
            real = pool.sample(c, int(d['batch_real']), int(d['num_points']), torch.Generator().manual_seed(c))
            points = synthetic.pos[synthetic.labels == c].clone().requires_grad_(True)
            label = torch.tensor([c])
            m3d_gradient, = torch.autograd.grad(m3d.match_classes(backbone, points[None], real[None], label).sum(), points)
            ce = class_cross_entropy(backbone, backbone.embed(points)[None], label).sum()   # the term at weight 1
            ce_gradient, = torch.autograd.grad(ce, points)
            ratios.append(m3d_gradient.norm().item() / ce_gradient.norm().item())
            print(f'  {steps} steps, class {c}: M3D gradient norm {m3d_gradient.norm().item():.4g}, cross-entropy '
                  f'{ce.item():.3f} with gradient norm {ce_gradient.norm().item():.4g}')
        print(f'{steps} steps (last training loss {loss:.3f}): M3D / cross-entropy gradient norms, median over '
              f'the classes {statistics.median(ratios):.4g} (range {min(ratios):.4g}-{max(ratios):.4g})')


if __name__ == '__main__':
    main()
