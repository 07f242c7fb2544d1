"""Run PointNeXt's own, unmodified examples/classification/main.py on a distilled set (one epoch by default).

    python tools/pointnext_main.py --pointnext /path/to/PointNeXt --cfg cfgs/modelnet40ply2048/pointnext-s.yaml \
        --artifact runs/<run>/artifact.safetensors --data-dir ../shared/data/ModelNet40Ply2048 [key=value ...]

`--cfg` is relative to the checkout (as PointNeXt's README runs it); `--artifact` and `--data-dir` are relative to
the current directory; `key=value` options go to main.py as they are. `import openpoints_dd` runs first (it
registers DistilledDataset and makes a missing data folder an error instead of a download). main.py runs from the
checkout's root, so its run lands where PointNeXt puts it: <checkout>/log/<cfg folder>/<run name>/.

Before running, the PointNeXt lines that need CUDA and the imports that fail here are listed. Without CUDA the
list is the result (exit code 3): PointNeXt's scripts move the model and every batch to the GPU. Missing packages
(wandb, tensorboard) stop the run with exit code 2. Checked against PointNeXt 02341db on a CPU only.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import openpoints_dd  # noqa: E402,F401  (before PointNeXt's code: registers DistilledDataset, fixes openpoints)
import torch  # noqa: E402
from openpoints.utils import EasyConfig  # noqa: E402
from openpoints_dd.engine import pointnext_main as pn  # noqa: E402
from openpoints_dd.engine.train_data import available_cores  # noqa: E402
from openpoints_dd.utils.config import resolve_path  # noqa: E402

NO_CUDA, MISSING_PACKAGES = 3, 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--pointnext', required=True, help='a PointNeXt checkout (git clone of guochengqian/PointNeXt)')
    parser.add_argument('--cfg', required=True, help='a classification YAML of the checkout, e.g. '
                                                     'cfgs/modelnet40ply2048/pointnext-s.yaml')
    parser.add_argument('--artifact', required=True, help='the distilled set (.safetensors) to train on')
    parser.add_argument('--data-dir', default=None, help="the real dataset's folder (val/test), for "
                                                          "dataset.common.data_dir. Default: the YAML's")
    parser.add_argument('--epochs', type=int, default=1, help='epochs of the run. Default 1')
    args, options = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S')
    log = logging.getLogger('openpoints_dd.pointnext_main')

    checkout = pn.checkout_files(args.pointnext)
    if not (checkout / args.cfg).is_file():
        raise FileNotFoundError(f'--cfg {args.cfg} not found in the checkout {checkout} (give it relative to the '
                                f'checkout, e.g. cfgs/modelnet40ply2048/pointnext-s.yaml)')
    artifact = str(Path(resolve_path(args.artifact)).absolute())
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None

    cfg = EasyConfig()
    cfg.load(str(checkout / args.cfg), recursive=True)    # as main.py loads it
    options = pn.main_overrides(cfg, artifact=artifact, data_dir=data_dir, epochs=args.epochs,
                                num_workers=min(int((cfg.get('dataloader') or {}).get('num_workers') or 0),
                                                available_cores())) + list(options)
    cfg.update(options)
    folder = pn.data_dir_of(cfg, checkout)
    if folder is not None and not folder.is_dir():
        raise FileNotFoundError(f'dataset.common.data_dir {cfg.dataset.common.data_dir!r} does not exist (resolved '
                                f'from the checkout {checkout}: {folder}). Give --data-dir /path/to/the/real/dataset.')

    missing = pn.missing_imports(checkout)
    cuda = pn.cuda_lines(checkout)
    for finding in missing:
        log.error('missing package: %s', finding)
    if not torch.cuda.is_available():
        log.error('PointNeXt %s needs CUDA on these lines (no CUDA device here, so it is not run):\n  %s',
                  Path(pn.MAIN).parent, '\n  '.join(map(str, cuda)) or '(none found)')
        log.error('On a GPU machine the same command runs it; on a CPU, train the same YAML with our trainer: '
                  'python tools/train.py --cfg %s artifact=%s%s', checkout / args.cfg, artifact,
                  f' dataset.common.data_dir={data_dir}' if data_dir else '')
        return NO_CUDA
    if missing:
        log.error('install the missing packages (e.g. pip install wandb tensorboard), then run again')
        return MISSING_PACKAGES
    try:
        result = pn.run_main(checkout, args.cfg, options)
    except BaseException as error:
        where = pn.pointnext_frame(error, checkout)
        if where:
            log.error('PointNeXt failed at %s (%s: %s)', where, type(error).__name__, error)
        raise
    log.info('PointNeXt run finished: %s (log %s)', result['run_dir'], result['log_path'])
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
