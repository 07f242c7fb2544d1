"""How hard is EmbeddedShapes? DistillPointNet trained on 1 random cloud per class vs the whole train split.

    python benchmarks/bm_embedded_difficulty.py                      # about 3 minutes on a shared 2-core CPU
    python benchmarks/bm_embedded_difficulty.py --num-points 1024 --out bm.json   # the dataset's default size

Distillation only has room to help if (a) 1 cloud per class is clearly worse than (b) the full split.
Training follows the evaluation protocol of the project (Adam lr 1e-3, weight decay 5e-4, cosine to 1e-4,
random per-axis scale in [0.8, 1.25] and jitter sigma 0.01 clipped at 0.05) for a fixed number of epochs,
and reports the final-epoch test accuracy. Per-axis scaling is used because DistillPointNet's InstanceNorm
makes an isotropic scale a no-op.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

import openpoints_dd  # noqa: F401  (host fixes, model registration)
from openpoints_dd.data import EmbeddedShapes
from openpoints_dd.models import DistillPointNet


def augment(pos: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-axis scale in [0.8, 1.25] and clipped Gaussian jitter, on (B, N, 3)."""
    scale = 0.8 + 0.45 * torch.rand(pos.shape[0], 1, 3, generator=generator)
    jitter = (0.01 * torch.randn(pos.shape, generator=generator)).clamp_(-0.05, 0.05)
    return pos * scale + jitter


def train_and_test(train_pos: torch.Tensor, train_y: torch.Tensor, test_pos: torch.Tensor, test_y: torch.Tensor,
                   num_classes: int, epochs: int, batch_size: int, seed: int) -> float:
    """Train a fresh DistillPointNet for `epochs` epochs; return the final test accuracy in percent."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DistillPointNet(num_classes=num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    batch_size = min(batch_size, len(train_y))
    steps_per_epoch = len(train_y) // batch_size
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=1e-4)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_y), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * batch_size:(step + 1) * batch_size]
            loss = F.cross_entropy(model(augment(train_pos[batch], generator)), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in test_pos.split(100)])
    return 100.0 * (predictions == test_y).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num-points', type=int, default=256, help='points per cloud (1024 is ~4x slower)')
    parser.add_argument('--num-per-class-train', type=int, default=100)
    parser.add_argument('--num-per-class-test', type=int, default=50)
    parser.add_argument('--cpc1-epochs', type=int, default=150, help='epochs (= steps) on 1 cloud per class')
    parser.add_argument('--full-epochs', type=int, default=6, help='epochs on the whole train split')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--selections', type=int, default=3, help='random 1-cloud-per-class selections')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads; 1 is ~10x faster than 2 when other jobs share the cores')
    parser.add_argument('--out', default=None, help='also write the results as JSON here')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    begin = start = time.perf_counter()
    common = dict(num_points=args.num_points, num_per_class_train=args.num_per_class_train,
                  num_per_class_test=args.num_per_class_test)
    train, test = EmbeddedShapes(split='train', **common), EmbeddedShapes(split='test', **common)
    generation_s = time.perf_counter() - start
    train_pos, train_y = torch.from_numpy(train.points), torch.from_numpy(train.labels)
    test_pos, test_y = torch.from_numpy(test.points), torch.from_numpy(test.labels)
    print(f'EmbeddedShapes: {train.num_classes} classes, {len(train)} train / {len(test)} test clouds x '
          f'{args.num_points} points, generated in {generation_s:.1f} s')

    results = {}
    start = time.perf_counter()
    cpc1 = []
    for selection in range(args.selections):
        rng = np.random.default_rng(selection)
        pick = torch.from_numpy(np.array([rng.choice(np.flatnonzero(train.labels == label))
                                          for label in range(train.num_classes)]))
        cpc1.append(train_and_test(train_pos[pick], train_y[pick], test_pos, test_y, train.num_classes,
                                   args.cpc1_epochs, args.batch_size, seed=selection))
    results['cpc1'] = {'acc': cpc1, 'mean': float(np.mean(cpc1)), 'std': float(np.std(cpc1)),
                       'epochs': args.cpc1_epochs, 'wall_s': time.perf_counter() - start}
    start = time.perf_counter()
    full = train_and_test(train_pos, train_y, test_pos, test_y, train.num_classes, args.full_epochs,
                          args.batch_size, seed=0)
    results['full'] = {'acc': [full], 'mean': full, 'std': 0.0, 'epochs': args.full_epochs,
                       'wall_s': time.perf_counter() - start}

    print(f"{'setting':<26}{'test acc (%)':>16}{'epochs':>8}{'wall (s)':>10}")
    for name, label in (('cpc1', f'1 cloud/class x{args.selections}'), ('full', 'full train split')):
        r = results[name]
        print(f"{label:<26}{r['mean']:>9.1f} ± {r['std']:<4.1f}{r['epochs']:>8}{r['wall_s']:>10.1f}")
    print(f"1-cpc runs: {', '.join(f'{a:.1f}' for a in cpc1)}; total wall {time.perf_counter() - begin:.0f} s "
          f"({torch.get_num_threads()} torch thread(s), torch {torch.__version__})")
    if args.out:
        record = {'benchmark': 'bm_embedded_difficulty', 'args': vars(args), 'generation_s': generation_s,
                  'results': results, 'device': 'cpu', 'cpu': platform.processor() or platform.machine(),
                  'torch': torch.__version__, 'threads': torch.get_num_threads()}
        with open(args.out, 'w') as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
