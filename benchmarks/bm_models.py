"""Times every cfgs/models model, the point ops and DistillPointNet's two layouts on one device.

    python benchmarks/bm_models.py [--device cpu] [--models pointnet pct] [--repeats 3] [--out FILE]

Each number is the mean of `--repeats` runs after one warm-up run (the naive twins: one run, no
warm-up, on small inputs). Prints a table and writes JSON with the device, torch version and threads.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

import openpoints_dd  # noqa: F401  (point-op fallbacks, registers our models)
from openpoints.models import build_model_from_cfg
from openpoints.utils import EasyConfig
from openpoints_dd.compat import point_ops
from openpoints_dd.models import DistillPointNet, pointnet_conv1d_forward

REPO = Path(__file__).resolve().parents[1]


def _timer(device: torch.device, repeats: int, warmup: int = 1) -> Callable[[Callable[[], object]], float]:
    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    def measure(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.mean(times)
    return measure


def bench_models(device: torch.device, names: list[str] | None, repeats: int) -> dict[str, dict]:
    """Forward+backward (train mode, loss from `get_logits_loss`) on (8, 1024, 3) for every model YAML."""
    measure = _timer(device, repeats)
    results = {}
    for path in sorted((REPO / 'cfgs' / 'models').glob('*.yaml')):
        if names and path.stem not in names:
            continue
        cfg = EasyConfig()
        cfg.load(str(path), recursive=False)
        if cfg.model.get('criterion_args') is None:
            cfg.model.criterion_args = cfg.criterion_args
        model = build_model_from_cfg(cfg.model).to(device).train()
        pos = torch.rand(8, 1024, 3, device=device)
        target = torch.arange(8, device=device) % 40

        def step():
            model.zero_grad(set_to_none=True)
            _, loss = model.get_logits_loss({'pos': pos, 'x': pos.transpose(1, 2).contiguous()}, target)
            loss.backward()

        results[path.stem] = {'forward_backward_s': measure(step),
                              'params': sum(p.numel() for p in model.parameters())}
    return results


def bench_ops(device: torch.device, repeats: int) -> dict[str, float]:
    """The torch point ops at the sizes PointNeXt-S / PointNet++ use, and the naive twins on small inputs."""
    measure = _timer(device, repeats)
    naive = _timer(torch.device('cpu'), repeats=1, warmup=0)
    xyz32, xyz8 = torch.rand(32, 1024, 3, device=device), torch.rand(8, 1024, 3, device=device)
    centres = xyz8[:, :512].contiguous()
    features = torch.randn(8, 64, 1024, device=device)
    idx = point_ops.ball_query(0.15, 32, xyz8, centres)
    known, known_features = xyz8[:, :256].contiguous(), torch.randn(8, 64, 256, device=device)
    _, nn_idx = point_ops.three_nn(xyz8, known)
    weight = torch.rand(8, 1024, 3, device=device)
    small = torch.rand(1, 256, 3)
    small_idx = point_ops.ball_query(0.2, 16, small, small[:, :64])
    small_features = torch.randn(1, 16, 256)
    small_nn_idx = point_ops.three_nn(small, small[:, :64].contiguous())[1]
    small_weight = torch.rand(1, 256, 3)
    return {
        'fps_32x1024_to_512_s': measure(lambda: point_ops.furthest_point_sample(xyz32, 512)),
        'fps_8x1024_to_512_s': measure(lambda: point_ops.furthest_point_sample(xyz8, 512)),
        'ball_query_8x512q_1024s_k32_s': measure(lambda: point_ops.ball_query(0.15, 32, xyz8, centres)),
        'grouping_8x64x1024_to_512x32_s': measure(lambda: point_ops.group_points(features, idx)),
        'three_nn_8x1024u_256k_s': measure(lambda: point_ops.three_nn(xyz8, known)),
        'three_interpolate_8x64_256_to_1024_s': measure(
            lambda: point_ops.three_interpolate(known_features, nn_idx, weight)),
        'naive_vs_vectorised_small': {
            'fps_1x256_to_32': [naive(lambda: point_ops.furthest_point_sample_naive(small, 32)),
                                naive(lambda: point_ops.furthest_point_sample(small, 32))],
            'ball_query_1x64q_256s_k16': [naive(lambda: point_ops.ball_query_naive(0.2, 16, small, small[:, :64])),
                                          naive(lambda: point_ops.ball_query(0.2, 16, small, small[:, :64]))],
            'grouping_1x16x256_to_64x16': [naive(lambda: point_ops.group_points_naive(small_features, small_idx)),
                                           naive(lambda: point_ops.group_points(small_features, small_idx))],
            'three_nn_1x256u_64k': [naive(lambda: point_ops.three_nn_naive(small, small[:, :64])),
                                    naive(lambda: point_ops.three_nn(small, small[:, :64]))],
            'three_interpolate_1x16_64_to_256': [
                naive(lambda: point_ops.three_interpolate_naive(small_features[..., :64], small_nn_idx, small_weight)),
                naive(lambda: point_ops.three_interpolate(small_features[..., :64], small_nn_idx, small_weight))],
        },
    }


def bench_pointnet_layouts(device: torch.device, repeats: int) -> dict[str, float]:
    """DistillPointNet forward+backward on (8, 1024, 3): points-last matmul vs Conv1d, fp32 and bf16 autocast."""
    measure = _timer(device, repeats)
    model = DistillPointNet(num_classes=40).to(device)
    pos = torch.rand(8, 1024, 3, device=device)
    target = torch.arange(8, device=device)
    forwards = {'points_last': lambda: model(pos), 'conv1d': lambda: pointnet_conv1d_forward(model, pos)}
    results = {}
    for precision in ('fp32', 'bf16'):
        for layout, forward in forwards.items():
            def step(forward=forward, precision=precision):
                model.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == 'bf16'):
                    logits = forward()
                torch.nn.functional.cross_entropy(logits.float(), target).backward()
            results[f'{layout}_{precision}_s'] = measure(step)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--models', nargs='*', help='YAML stems in cfgs/models (default: all)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--out', default=str(REPO / 'runs' / 'benchmarks' / 'bm_models.json'))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    report = {'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu',
              'device_type': device.type, 'torch': torch.__version__, 'threads': torch.get_num_threads(),
              'repeats': args.repeats}
    print(f"device {report['device']} ({device.type}) | torch {report['torch']} | threads {report['threads']} | "
          f"mean of {args.repeats} after 1 warm-up")

    report['ops'] = bench_ops(device, args.repeats)
    print('\npoint ops')
    for name, value in report['ops'].items():
        if name != 'naive_vs_vectorised_small':
            print(f'  {name:40s} {value:8.4f} s')
    print('  naive vs vectorised (one run each, small inputs, CPU)')
    for name, (slow, fast) in report['ops']['naive_vs_vectorised_small'].items():
        print(f'    {name:38s} {slow:8.4f} s  vs {fast:8.5f} s')

    report['distill_pointnet'] = bench_pointnet_layouts(device, args.repeats)
    print('\nDistillPointNet forward+backward, (8, 1024, 3)')
    for name, value in report['distill_pointnet'].items():
        print(f'  {name:40s} {value:8.4f} s')

    report['models'] = bench_models(device, args.models, args.repeats)
    print('\nmodels (cfgs/models) forward+backward, (8, 1024, 3), train mode')
    for name, result in report['models'].items():
        print(f"  {name:40s} {result['forward_backward_s']:8.4f} s   {result['params'] / 1e6:7.3f} M params")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f'\nwrote {out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
