"""Pictures: a distilled set's clouds as a PNG grid, or a run's loss and accuracy curves.

    python tools/visualize.py clouds runs/<run>/artifact.safetensors --out clouds.png --max-classes 10 \
        --real-cfg cfgs/distill/modelnet40/default.yaml      # real train clouds of the same classes beside them
    python tools/visualize.py curves runs/<run> --out curves.png   # metrics.json (or log.txt) of a distill/train run
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import openpoints_dd  # noqa: E402,F401  (registers everything, fixes openpoints on this machine)
from openpoints_dd.data.artifact import ArtifactError  # noqa: E402
from openpoints_dd.utils.config import load_config, resolve_path  # noqa: E402
from openpoints_dd.utils.plots import plot_curves, render_clouds  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)
    clouds = commands.add_parser('clouds', help='a PNG grid of an artifact\'s clouds, one panel per slot')
    clouds.add_argument('artifact', help='.safetensors artifact (points or generator)')
    clouds.add_argument('--out', required=True, help='output .png')
    clouds.add_argument('--num-points', type=int, default=1024, help='points drawn per cloud. Default 1024')
    clouds.add_argument('--classes', default=None, help='comma-separated class names or indices to draw')
    clouds.add_argument('--max-classes', type=int, default=None, help='draw the first K classes. Default all')
    clouds.add_argument('--real-cfg', default=None,
                        help='a config whose dataset section gives the real data: real train clouds of each class '
                             'are drawn beside the synthetic ones')
    clouds.add_argument('--real-per-class', type=int, default=None, help='default: the artifact\'s clouds per class')
    clouds.add_argument('--seed', type=int, default=0)
    clouds.add_argument('--panel-inches', type=float, default=2.0)
    clouds.add_argument('--dpi', type=int, default=80)
    curves = commands.add_parser('curves', help='loss and accuracy curves of a tools/distill.py or tools/train.py run')
    curves.add_argument('run_dir')
    curves.add_argument('--out', required=True, help='output .png')
    curves.add_argument('--dpi', type=int, default=80)
    args = parser.parse_args(argv)

    if args.command == 'clouds':
        real = None
        if args.real_cfg:
            real = dict(load_config(args.real_cfg)['dataset'])
            common = dict(real['common'])
            if isinstance(common.get('data_dir'), str):
                common['data_dir'] = resolve_path(common['data_dir'])
            real['common'] = common
        try:
            info = render_clouds(args.artifact, args.out, num_points=args.num_points,
                                 classes=args.classes.split(',') if args.classes else None,
                                 max_classes=args.max_classes, real_dataset_cfg=real,
                                 real_per_class=args.real_per_class, seed=args.seed, panel_inches=args.panel_inches,
                                 dpi=args.dpi)
        except ArtifactError as e:
            raise SystemExit(f'visualize clouds: cannot read the artifact: {e}') from e
        print(f"wrote {info['path']}: {info['rows']} x {info['cols']} panels ({info['synthetic_panels']} synthetic, "
              f"{info['real_panels']} real), {info['width']} x {info['height']} px")
    else:
        info = plot_curves(args.run_dir, args.out, dpi=args.dpi)
        print(f"wrote {info['path']} from {info['source']} ({info['width']} x {info['height']} px)")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
