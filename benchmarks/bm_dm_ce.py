"""DM's cross-entropy term: logits from the embedding pass (`DistributionMatching`) against a second forward.

    OMP_NUM_THREADS=1 python benchmarks/bm_dm_ce.py

One matching call of `DistributionMatching(queue_size=1, ce_weight=100)` over 40 classes (8 real clouds per class,
256 points, DistillPointNet), forward and backward into the synthetic clouds, at each `--cpc`; the other side is the
same loss with the logits from `backbone(syn)`, a second pass over the synthetic clouds. Both alternate in one run;
prints the median of `--repeats` timings, the ratio, the losses and the gradients' largest difference, and the CPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from distill_step import _cpu_name  # noqa: E402
from openpoints_dd.models import DistillPointNet  # noqa: E402
from openpoints_dd.objectives import DistributionMatching  # noqa: E402

CE_WEIGHT = 100.0


def second_forward(backbone, syn, real, labels):
    """The loss with the term's logits from a second forward over the synthetic clouds."""
    with torch.no_grad():
        real_mean = backbone.embed(real.flatten(0, 1)).view(*real.shape[:2], -1).mean(1)
    syn_mean = backbone.embed(syn.flatten(0, 1)).view(*syn.shape[:2], -1).mean(1)
    logits = backbone(syn.flatten(0, 1))
    ce = F.cross_entropy(logits, labels.repeat_interleave(syn.shape[1]), reduction='none').view(syn.shape[:2]).mean(1)
    return (real_mean - syn_mean).square().sum(-1) + CE_WEIGHT * ce


def timed(match, backbone, syn, real, labels):
    syn = syn.clone().requires_grad_(True)
    start = time.perf_counter()
    loss = match(backbone, syn, real, labels).sum()
    loss.backward()
    return time.perf_counter() - start, loss.item(), syn.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cpc', type=int, nargs='+', default=[1, 10])
    parser.add_argument('--classes', type=int, default=40)
    parser.add_argument('--real', type=int, default=8)
    parser.add_argument('--points', type=int, default=256)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = DistillPointNet(num_classes=args.classes).requires_grad_(False)
    one_pass = DistributionMatching(queue_size=1, ce_weight=CE_WEIGHT).match_classes
    print(f'{_cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.classes} classes, '
          f'{args.real} real clouds per class, {args.points} points, median of {args.repeats}')
    print('| cpc | second forward s | embedding pass s | ratio | loss (both) | max gradient difference |')
    print('|---|---|---|---|---|---|')
    labels = torch.arange(args.classes)
    for cpc in args.cpc:
        real = torch.randn(args.classes, args.real, args.points, 3)
        syn = torch.randn(args.classes, cpc, args.points, 3)
        seconds = {'second': [], 'one': []}
        for repeat in range(args.repeats + 1):   # the first round warms up
            t_two, loss_two, grad_two = timed(second_forward, backbone, syn, real, labels)
            t_one, loss_one, grad_one = timed(one_pass, backbone, syn, real, labels)
            if repeat:
                seconds['second'].append(t_two)
                seconds['one'].append(t_one)
        two, one = statistics.median(seconds['second']), statistics.median(seconds['one'])
        print(f'| {cpc} | {two:.2f} | {one:.2f} | {two / one:.2f}x | {loss_two:.6g} / {loss_one:.6g} | '
              f'{(grad_two - grad_one).abs().max().item():.2e} |')


if __name__ == '__main__':
    main()
