"""Times every cfgs/models model, the point ops and DistillPointNet's two layouts on one device.

    python benchmarks/bm_models.py [--device cpu] [--models pointnet pct] [--repeats 3] [--out FILE]
    # one train step (batch 32) and one test batch (64) at 256 points of the cross-architecture table's models,
    # with the top ops of each model's step
    python benchmarks/bm_models.py --models-only --train-cfgs cfgs/train/xarch-cpc10-cpu90m --points 256 \
        --batch 32 --val-batch 64 --profile

Each number is the mean of `--repeats` runs after one warm-up run (the naive twins: one run, no
warm-up, on small inputs). Prints a table and writes JSON with the device, torch version and threads.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import openpoints_dd  # noqa: F401  (point-op fallbacks, registers our models)
from openpoints.models import build_model_from_cfg
from openpoints.utils import EasyConfig
from openpoints_dd.compat import point_ops
from openpoints_dd.models import DistillPointNet, pointnet_conv1d_forward
from openpoints_dd.utils.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_step import _matmul_peak  # noqa: E402  (the same peak measurement as the distill-step benchmark)

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


def bench_models(device: torch.device, names: list[str] | None, repeats: int, points: int = 1024, batch: int = 8,
                 val_batch: int = 0, profile: bool = False, train_cfgs: Path | None = None) -> dict[str, dict]:
    """Forward+backward (train mode, loss from `get_logits_loss`) on (batch, points, 3) for every model YAML;
    with `val_batch`, also a no-grad eval-mode forward on (val_batch, points, 3); with `profile`, the ops that
    take the most CPU time in one train step and the step's matmul/conv FLOPs (torch's FlopCounterMode) over
    its measured time. `train_cfgs`: a folder of train YAMLs whose model sections (with their bases) are timed
    instead of cfgs/models, e.g. a table's CPU-scale configs."""
    measure = _timer(device, repeats)
    results = {}
    for path in sorted((train_cfgs or REPO / 'cfgs' / 'models').glob('*.yaml')):
        if names and path.stem not in names:
            continue
        if train_cfgs:
            cfg = load_config(str(path), [])
            if not cfg.get('model'):      # a file of shared keys (a table's scale.yaml), not a model's config
                continue
        else:
            cfg = EasyConfig()
            cfg.load(str(path), recursive=False)
            if 'points' in cfg.model:       # PointMLP sizes its stages by the input's point count
                cfg.model.points = points
        if cfg.model.get('criterion_args') is None:
            cfg.model.criterion_args = cfg.criterion_args
        model = build_model_from_cfg(cfg.model).to(device).train()
        pos = torch.rand(batch, points, 3, device=device)
        target = torch.arange(batch, device=device) % 40

        def step():
            model.zero_grad(set_to_none=True)
            _, loss = model.get_logits_loss({'pos': pos, 'x': pos.transpose(1, 2).contiguous()}, target)
            loss.backward()

        result = {'forward_backward_s': measure(step), 'params': sum(p.numel() for p in model.parameters())}
        if val_batch:
            val_pos = torch.rand(val_batch, points, 3, device=device)
            val_target = torch.arange(val_batch, device=device) % 40

            def infer():
                with torch.no_grad():
                    model.get_logits_loss({'pos': val_pos, 'x': val_pos.transpose(1, 2).contiguous()}, val_target)
            model.eval()
            result['eval_forward_s'] = measure(infer)
            model.train()
        if profile:
            with FlopCounterMode(display=False) as flops:   # matmul/conv FLOPs of one train step
                step()
            result['step_gflop'] = flops.get_total_flops() / 1e9
            result['achieved_gflops_per_s'] = result['step_gflop'] / result['forward_backward_s']
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                step()
            total = sum(e.self_cpu_time_total for e in prof.key_averages())
            top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
            result['profile_top_ops'] = [{'op': e.key, 'self_cpu_share': round(e.self_cpu_time_total / total, 3),
                                          'calls': e.count} for e in top]
        results[path.stem] = result
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
    parser.add_argument('--points', type=int, default=1024, help='points per cloud for the models. Default 1024')
    parser.add_argument('--batch', type=int, default=8, help='train batch for the models. Default 8')
    parser.add_argument('--val-batch', type=int, default=0, help='also time an eval forward of this batch')
    parser.add_argument('--profile', action='store_true', help="each model's top ops in one train step")
    parser.add_argument('--models-only', action='store_true', help='skip the point ops and DistillPointNet layouts')
    parser.add_argument('--train-cfgs', default=None, help='time the model sections of the train YAMLs in this folder')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    report = {'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu',
              'device_type': device.type, 'torch': torch.__version__, 'threads': torch.get_num_threads(),
              'repeats': args.repeats}
    print(f"device {report['device']} ({device.type}) | torch {report['torch']} | threads {report['threads']} | "
          f"mean of {args.repeats} after 1 warm-up")

    if not args.models_only:
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

    report['models'] = bench_models(device, args.models, args.repeats, args.points, args.batch, args.val_batch,
                                    args.profile, Path(args.train_cfgs) if args.train_cfgs else None)
    report['model_inputs'] = {'points': args.points, 'batch': args.batch, 'val_batch': args.val_batch}
    if args.profile and device.type == 'cpu':
        report['matmul_peak_fp32_gflops'] = _matmul_peak('float32')
        print(f"\nfp32 matmul peak on {report['threads']} thread(s): {report['matmul_peak_fp32_gflops']:.1f} GFLOP/s")
    print(f'\nmodels (cfgs/models) forward+backward, ({args.batch}, {args.points}, 3), train mode'
          + (f'; eval forward ({args.val_batch}, {args.points}, 3)' if args.val_batch else ''))
    for name, result in report['models'].items():
        evaluation = f"   eval {result['eval_forward_s']:8.4f} s" if 'eval_forward_s' in result else ''
        print(f"  {name:40s} {result['forward_backward_s']:8.4f} s{evaluation}   {result['params'] / 1e6:7.3f} M params")
        if 'step_gflop' in result:
            print(f"      {result['step_gflop']:.1f} GFLOP (matmul/conv) per train step: "
                  f"{result['achieved_gflops_per_s']:.1f} GFLOP/s")
        for op in result.get('profile_top_ops', []):
            print(f"      {op['op']:50s} {100 * op['self_cpu_share']:5.1f} %  ({op['calls']} calls)")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f'\nwrote {out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
