"""Time and peak memory of one outer matching step: our engine against a straightforward loop, in one run.

    python benchmarks/distill_step.py                       # the full grid (long: tens of minutes)
    python benchmarks/distill_step.py --cpc 10 --points 1024 --classes-scan 10 40 --out step.json

One outer step = for every class a real batch and the class's synthetic clouds through gradient
matching, back-propagated into the synthesizer, then one synthesizer update. Measured for

- `ours`: `Distiller.accumulate_matching_gradients` (every class of a chunk in one grouped pass per side: the
  per-class gradients of DistillPointNet from its explicit backward, `models/class_gradients.py`; graphs freed
  chunk by chunk) + the optimizer step; the same with one class per pass (`chunk_points: 1`, what batching the
  classes buys); and its bf16 variants (`BF16_VARIANTS`: the max-point search in bf16, the real pass under
  bf16 autocast, both passes), each one's first step compared with fp32's (distance, gradient) and with the
  yardstick of fp32's own step-to-step noise (the same step on another real batch and noise draw);
- `baseline`: the DD3D reference's way, written here: a Conv1d PointNet with InstanceNorm and max-pool,
  per-class forwards in fp32, every class's graph kept until one backward.

Both use the same synthesizer (DD3D's generator or explicit points = GM/DC) and the same distance.
Throughput is given in *model* GFLOP/s: the matmul/conv FLOPs of the baseline network for the same
step (counted once with `torch.utils.flop_counter`) divided by the step time, beside this machine's
fp32 matrix-multiply peak measured in the same run. Ours does fewer FLOPs than the baseline (the pooled layer's
backward only at the max points), so its model GFLOP/s is the speed-up in other units, not how well it uses the
CPU: its own FLOPs (counted the same way) over its time, against the peak, are; the ratio to the baseline is the
figure that matters. Each measurement runs in a fresh subprocess, so its peak resident memory (VmHWM minus the
resident memory before the first step) is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bf16 options of our step, measured only on CPUs whose bf16 matmul is faster than fp32 (spec keys of `_measure`)
BF16_VARIANTS = {
    'bf16 search': {'argmax_dtype': 'bfloat16'},                                   # DistillPointNet(argmax_dtype)
    'bf16 real pass': {'argmax_dtype': 'bfloat16', 'autocast': 'real'},           # GradientMatching(autocast)
    'bf16 both passes': {'autocast': 'all'},
}


# ------------------------------------------------------------------------------------------ one measurement
def _rss_kib(field: str) -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1])
    return 0


def _measure(spec: dict) -> dict:
    """Run in a subprocess: build one configuration, time `repeats` steps after a warm-up, report memory."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    sys.path.insert(0, str(REPO))
    import openpoints_dd  # noqa: F401
    from openpoints_dd.utils.memory import keep_freed_memory
    keep_freed_memory()   # both sides run with the allocator the CLIs set
    from openpoints.utils import EasyConfig
    from openpoints_dd.data.real_pool import RealPool
    from openpoints_dd.engine.distill import Distiller
    from openpoints_dd.objectives.gradient_matching import gradient_distance
    from openpoints_dd.utils.geometry import normalize_to_unit_sphere
    from safetensors.torch import save_file

    torch.manual_seed(0)
    classes, cpc, points, real = spec['classes'], spec['cpc'], spec['points'], spec['real']
    pos = normalize_to_unit_sphere(torch.randn(classes * (real + 1), points, 3))
    pool = RealPool(pos, torch.arange(classes).repeat_interleave(real + 1), [f'c{i}' for i in range(classes)], 'random')
    synthesizer = ({'NAME': 'PointGenerator', 'hidden_dim': 256, 'w0_initial': 100, 'init': 'noise'}
                   if spec['synthesizer'] == 'PointGenerator' else {'NAME': 'ExplicitPoints', 'num_points': points, 'init': 'noise'})
    # the pool is handed to the Distiller directly: the dataset section only names a registered dataset, as the
    # schema asks of every config
    cfg = EasyConfig({'seed': 0, 'device': 'cpu', 'dataset': {'common': {'NAME': 'EmbeddedShapes'}}, 'distill': {
        'cpc': cpc, 'iterations': 10, 'outer_loop': 1, 'inner_loop': 1, 'batch_real': real, 'num_points': points,
        'backbone': {'NAME': 'DistillPointNet', 'argmax_dtype': spec.get('argmax_dtype', 'float32')}, 'synthesizer': synthesizer,
        'objective': {'NAME': 'GradientMatching', 'autocast': spec.get('autocast')},
        'rotator': {'NAME': 'IdentityRotator'}, 'syn_optimizer': {'NAME': 'adam', 'lr': 1e-3},
        'chunk_points': spec.get('chunk_points')}})
    distiller = Distiller(cfg, pool, '/nonexistent-unused')
    backbone = distiller.build_backbone()

    if spec['method'] == 'ours':
        first_step = {}

        def synthesizer_grad() -> torch.Tensor:
            return torch.cat([p.grad.flatten() for p in distiller.synthesizer.parameters() if p.grad is not None])

        def step(i: int) -> None:
            saved = {}
            if i == 0 and spec.get('save_first_step') and spec.get('resampled_yardstick'):
                # the same synthesizer and backbone on another real batch and noise draw: fp32's own noise
                distiller.accumulate_matching_gradients(backbone, 0, 10_000, points)
                saved['resampled'] = synthesizer_grad()
            distiller.optimizer.zero_grad(set_to_none=True)
            loss = distiller.accumulate_matching_gradients(backbone, 0, i, points)
            if i == 0 and spec.get('save_first_step'):   # the bf16 check compares these with fp32's
                save_file({**saved, 'grad': synthesizer_grad()}, spec['save_first_step'])
                first_step['loss'] = loss
            distiller.optimizer.step()
    else:
        net = ConvPointNet(classes)
        params = list(net.parameters())

        def class_loss(c: int, i: int) -> torch.Tensor:
            g_real = distiller._generator(0, 1, i, c)
            real_pos = pool.sample(c, real, points, g_real)
            syn = normalize_to_unit_sphere(distiller.synthesizer.synthesize(
                distiller.synthesizer.slots_of_class(c), points, distiller._generator(0, 2, i, c)))
            gr = torch.autograd.grad(F.cross_entropy(net(real_pos), torch.full((real,), c)), params)
            gs = torch.autograd.grad(F.cross_entropy(net(syn), torch.full((cpc,), c)), params, create_graph=True)
            return gradient_distance(gs, [g.detach() for g in gr], 'layerwise_cosine')

        def step(i: int) -> None:
            distiller.optimizer.zero_grad(set_to_none=True)
            torch.stack([class_loss(c, i) for c in range(classes)]).sum().backward()   # all graphs alive until here
            distiller.optimizer.step()

        if spec.get('count_flops'):
            from torch.utils.flop_counter import FlopCounterMode
            counter = FlopCounterMode(display=False)
            with counter:
                class_loss(0, 0).backward()
            return {'flops_per_class': counter.get_total_flops()}

    rss_before = _rss_kib('VmRSS')
    step(0)
    times = []
    for i in range(spec['repeats']):
        start = time.perf_counter()
        step(i + 1)
        times.append(time.perf_counter() - start)
    result = {'seconds': statistics.median(times) if times else float('nan'), 'peak_mib': (_rss_kib('VmHWM') - rss_before) / 1024}
    if spec['method'] == 'ours' and spec.get('save_first_step'):
        result['first_step_loss'] = first_step['loss']
    if spec['method'] == 'ours' and spec.get('count_flops'):   # after the timing, which the counter would slow
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with counter:
            step(spec['repeats'] + 1)
        result['gflop_per_step'] = counter.get_total_flops() / 1e9
    return result


def ConvPointNet(num_classes: int):
    """DD3D's reference PointNet as it is usually written: Conv1d on (B, C, N), InstanceNorm, max-pool."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [3, 64, 128, 1024]
            self.convs = nn.ModuleList(nn.Conv1d(a, b, 1) for a, b in zip(widths, widths[1:]))
            self.norm = nn.InstanceNorm1d(1024)
            self.head = nn.Linear(1024, num_classes)

        def forward(self, pos):
            x = pos.transpose(1, 2)
            for k, conv in enumerate(self.convs):
                x = conv(x)
                x = nn.functional.instance_norm(x)
                if k < 2:
                    x = x.relu()
            return self.head(x.max(dim=2).values)
    return Net()


def _matmul_peak(dtype_name: str, n: int = 4096, repeats: int = 5, seconds: float = 0.5) -> float:
    """GFLOP/s of an n×n×n matrix multiply (best of `repeats`), on this process's threads.

    A 512³ probe first shrinks n to what runs in about `seconds`: a CPU without bf16 units (AVX2 only) emulates
    bf16 at under 1 GFLOP/s, where a 4096³ product would take minutes.
    """
    import torch
    dtype = getattr(torch, dtype_name)
    probe = torch.randn(512, 512).to(dtype)
    probe_gflops = 2 * 512 ** 3 / min(_timed(lambda: torch.mm(probe, probe)) for _ in range(2)) / 1e9
    n = max(512, min(n, int((seconds * probe_gflops * 1e9 / 2) ** (1 / 3)) // 256 * 256))
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux): figures from different machines are not comparable."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _in_subprocess(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, '--one', json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or ['no output']
        return {'error': f'exit {out.returncode}: {tail[0][:200]}'}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ the grid
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--one', help=argparse.SUPPRESS)
    parser.add_argument('--classes', type=int, default=40)
    parser.add_argument('--cpc', type=int, nargs='+', default=[1, 10, 50])
    parser.add_argument('--points', type=int, nargs='+', default=[1024, 256])
    parser.add_argument('--real', type=int, default=32, help='real clouds per class per step')
    parser.add_argument('--synthesizers', nargs='+', default=['PointGenerator', 'ExplicitPoints'])
    parser.add_argument('--repeats', type=int, default=2, help='timed steps after one warm-up (median)')
    parser.add_argument('--baseline-max-gib', type=float, default=16.0,
                        help='skip the baseline where its estimated memory exceeds this (it keeps every graph)')
    parser.add_argument('--classes-scan', type=int, nargs='*', default=[10, 40],
                        help="class counts for ours' peak memory at the largest cpc/points of the grid")
    parser.add_argument('--out', default='distill_step.json')
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_measure(json.loads(args.one))))
        return 0

    import torch
    peak = {'fp32': _matmul_peak('float32'), 'bf16': _matmul_peak('bfloat16')}
    print(f'matmul peak on {torch.get_num_threads()} threads: fp32 {peak["fp32"]:.0f} GFLOP/s, bf16 {peak["bf16"]:.1f} GFLOP/s',
          flush=True)
    rows = []
    for points in args.points:
        for cpc in args.cpc:
            flops = _in_subprocess({'method': 'baseline', 'classes': 1, 'cpc': cpc, 'points': points, 'real': args.real,
                                    'synthesizer': 'ExplicitPoints', 'repeats': 0, 'count_flops': True})
            step_gflop = flops.get('flops_per_class', float('nan')) * args.classes / 1e9
            # the baseline keeps the synthetic graphs of every class alive (~6 fp32 maps per point): a rough bound
            baseline_gib = 6 * 4 * args.classes * cpc * points * (64 + 128 + 1024) / 2 ** 30
            for synthesizer in args.synthesizers:
                row = {'synthesizer': synthesizer, 'cpc': cpc, 'points': points, 'classes': args.classes,
                       'real': args.real, 'model_gflop_per_step': round(step_gflop, 1)}
                spec = {'classes': args.classes, 'cpc': cpc, 'points': points, 'real': args.real,
                        'synthesizer': synthesizer, 'repeats': args.repeats}
                row['bf16'], row['bf16_check'] = {}, {}
                with tempfile.TemporaryDirectory() as tmp:
                    row['ours'] = _in_subprocess({**spec, 'method': 'ours', 'save_first_step': f'{tmp}/fp32.safetensors',
                                                  'resampled_yardstick': True, 'count_flops': True})
                    row['one_class'] = _in_subprocess({**spec, 'method': 'ours', 'chunk_points': 1})
                    for k, (name, options) in enumerate(BF16_VARIANTS.items()):
                        if peak['bf16'] <= peak['fp32']:   # bf16 options are for CPUs (AVX512-BF16, AMX) and GPUs
                            row['bf16'][name] = {'error': f'skipped: bf16 matmul {peak["bf16"]:.1f} GFLOP/s, slower '
                                                          f'than fp32 ({peak["fp32"]:.0f}) on this CPU'}
                            continue
                        row['bf16'][name] = _in_subprocess({**spec, **options, 'method': 'ours',
                                                            'save_first_step': f'{tmp}/bf16_{k}.safetensors'})
                        row['bf16_check'][name] = bf16_check(row['ours'], row['bf16'][name], f'{tmp}/fp32.safetensors',
                                                             f'{tmp}/bf16_{k}.safetensors')
                row['baseline'] = (_in_subprocess({**spec, 'method': 'baseline'}) if baseline_gib <= args.baseline_max_gib
                                   else {'error': f'skipped: estimated {baseline_gib:.0f} GiB > --baseline-max-gib'})
                for side in _measurements(row):
                    if 'seconds' in side:
                        side['model_gflops'] = step_gflop / side['seconds']
                        side['of_fp32_peak'] = side['model_gflops'] / peak['fp32']
                        if 'seconds' in row['baseline']:
                            side['speedup'] = row['baseline']['seconds'] / side['seconds']
                        if 'gflop_per_step' in side:
                            side['own_gflops'] = side['gflop_per_step'] / side['seconds']
                            side['own_of_fp32_peak'] = side['own_gflops'] / peak['fp32']
                rows.append(row)
                print(_row_line(row), flush=True)
    storage = synthesizer_storage(args.classes, args.cpc, max(args.points))
    for line in storage:
        print(line)
    scan = []
    for classes in args.classes_scan:
        spec = {'method': 'ours', 'classes': classes, 'cpc': max(args.cpc), 'points': max(args.points), 'real': args.real,
                'synthesizer': args.synthesizers[0], 'repeats': 1}
        scan.append({**spec, **_in_subprocess(spec)})
        print(f'ours, {classes} classes, cpc {spec["cpc"]}, {spec["points"]} points: {scan[-1]}', flush=True)
    report = {'machine': _cpu_name(), 'threads': torch.get_num_threads(),
              'torch': torch.__version__, 'matmul_peak_gflops': peak, 'rows': rows, 'memory_vs_classes': scan,
              'synthesizer_storage': storage,
              'command': ' '.join(sys.argv)}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print('\n' + markdown(report))
    failed = [m['error'] for row in rows for m in _measurements(row)
              if m.get('error', '').startswith('exit')] + [m['error'] for m in scan if 'error' in m]
    if failed:   # a skipped measurement (too slow or too large by design) is not a failure
        print(f'{len(failed)} measurement(s) failed; the first: {failed[0]}', file=sys.stderr)
    return 1 if failed else 0


def _measurements(row: dict) -> list[dict]:
    """A row's timed runs: ours, one class a pass, the baseline and the bf16 variants."""
    return [row['ours'], row['one_class'], row['baseline'], *row['bf16'].values()]


def bf16_check(fp32: dict, bf16: dict, fp32_file: str, bf16_file: str) -> dict:
    """Does a bf16 option keep the matching? Same first step (same data, same synthesizer): relative change of
    the matching distance, cosine between the synthesizer gradients, and the yardstick: the cosine between
    fp32's gradient and fp32's on another real batch and noise draw (what every step varies by anyway)."""
    if 'first_step_loss' not in fp32 or 'first_step_loss' not in bf16:
        return {'error': 'a measurement failed'}
    import torch
    from safetensors.torch import load_file
    ref, other = load_file(fp32_file), load_file(bf16_file)
    a, b = ref['grad'].double(), other['grad'].double()
    cosine = (lambda x, y: float(torch.nn.functional.cosine_similarity(x, y, dim=0)))
    return {'distance_fp32': fp32['first_step_loss'], 'distance_bf16': bf16['first_step_loss'],
            'distance_relative_change': abs(bf16['first_step_loss'] - fp32['first_step_loss']) / abs(fp32['first_step_loss']),
            'gradient_cosine': cosine(a, b), 'gradient_relative_change': float((a - b).norm() / a.norm()),
            'fp32_resampled_gradient_cosine': cosine(a, ref['resampled'].double()) if 'resampled' in ref else None}


def synthesizer_storage(classes: int, cpcs: list[int], points: int) -> list[str]:
    """What the distilled set costs to store: DD3D's generator against explicit clouds (the paper: ~4x at 10)."""
    sys.path.insert(0, str(REPO))
    import openpoints_dd  # noqa: F401
    from openpoints_dd.registry import build_synthesizer
    lines = []
    for cpc in cpcs:
        sizes = {}
        for name, cfg in (('generator', {'NAME': 'PointGenerator', 'hidden_dim': 256, 'init': 'noise'}),
                          ('explicit', {'NAME': 'ExplicitPoints', 'num_points': points, 'init': 'noise'})):
            module = build_synthesizer(cfg, num_classes=classes, cpc=cpc)
            sizes[name] = sum(t.numel() for t in module.state_dict().values())
        lines.append(f'storage at cpc {cpc}, {points} points: generator {sizes["generator"] / 1e6:.2f} M floats, '
                     f'explicit {sizes["explicit"] / 1e6:.2f} M floats ({sizes["explicit"] / sizes["generator"]:.1f}x)')
    return lines


def _row_line(row: dict) -> str:
    def side(r):
        return r.get('error') or (f'{r["seconds"]:.2f} s, {r["peak_mib"]:.0f} MiB, {r["model_gflops"]:.0f} GFLOP/s'
                                  + (f', {r["speedup"]:.1f}x' if 'speedup' in r else ''))
    return (f'{row["synthesizer"]:14s} cpc {row["cpc"]:3d} {row["points"]:5d} pts | baseline {side(row["baseline"])} | '
            + ' | '.join(f'{name} {side(r)}' for name, r in (('ours', row['ours']), ('ours, one class a pass', row['one_class']),
                                                              *row['bf16'].items())))


def markdown(report: dict) -> str:
    peak = report['matmul_peak_gflops']['fp32']
    lines = [f'{report["machine"]}: fp32 matmul peak {peak:.0f} GFLOP/s (bf16 {report["matmul_peak_gflops"]["bf16"]:.1f}), '
             f'{report["threads"]} threads, torch {report["torch"]}', '',
             '| synthesizer | cpc | points | model GFLOP/step | baseline s | baseline MiB | ours s | ours MiB | speed-up '
             '| ours model GFLOP/s (% of fp32 peak) | ours GFLOP/step, own | ours own GFLOP/s (% of fp32 peak) '
             '| ours, one class a pass: s (speed-up) | '
             + ' | '.join(f'ours, {name}: s (speed-up)' for name in BF16_VARIANTS) + ' |',
             '|---' * (13 + len(BF16_VARIANTS)) + '|']
    cell = (lambda x, k, f: f.format(x[k]) if k in x else x.get('error', '-'))
    for r in report['rows']:
        b, o = r['baseline'], r['ours']
        gf = f'{o["model_gflops"]:.0f} ({100 * o["of_fp32_peak"]:.0f} %)' if 'model_gflops' in o else '-'
        own = f'{o["own_gflops"]:.0f} ({100 * o["own_of_fp32_peak"]:.0f} %)' if 'own_gflops' in o else '-'
        variants = [cell(v, 'seconds', '{:.2f}') + (f' ({v["speedup"]:.1f}x)' if 'speedup' in v else '')
                    for v in (r.get('one_class', {'error': '-'}), *r['bf16'].values())]
        lines.append(f'| {r["synthesizer"]} | {r["cpc"]} | {r["points"]} | {r["model_gflop_per_step"]} | '
                     f'{cell(b, "seconds", "{:.2f}")} | {cell(b, "peak_mib", "{:.0f}")} | {cell(o, "seconds", "{:.2f}")} | '
                     f'{cell(o, "peak_mib", "{:.0f}")} | {cell(o, "speedup", "{:.1f}x")} | {gf} | '
                     f'{cell(o, "gflop_per_step", "{:.1f}")} | {own} | ' + ' | '.join(variants) + ' |')
    lines += ['', 'bf16 options against fp32, same first step: relative change of the matching distance / cosine and '
              "relative change of the synthesizer gradient; yardstick: cosine of fp32's gradient with fp32's on "
              'another real batch and noise draw']
    for r in report['rows']:
        for name, c in r['bf16_check'].items():
            lines.append(f'- {r["synthesizer"]} cpc {r["cpc"]}, {r["points"]} points, {name}: ' + (
                c['error'] if 'error' in c else
                f'{c["distance_relative_change"]:.2e} / {c["gradient_cosine"]:.4f}, {c["gradient_relative_change"]:.3f}; '
                f'yardstick {c["fp32_resampled_gradient_cosine"]:.4f}'))
    lines += [''] + report['synthesizer_storage']
    if report['memory_vs_classes']:
        lines += ['', 'ours, peak memory against the number of classes: ' + ', '.join(
            f'{s["classes"]} classes {s.get("peak_mib", float("nan")):.0f} MiB ({s.get("seconds", float("nan")):.2f} s)'
            for s in report['memory_vs_classes'])]
    return '\n'.join(lines)


if __name__ == '__main__':
    raise SystemExit(main())
