"""Train (or resume, or test) a classifier or a part segmenter from a PointNeXt-style YAML.

    python tools/train.py --cfg cfgs/train/modelnet40-pointnet.yaml [key=value ...]
    python tools/train.py --cfg cfgs/train/modelnet40-pointnet.yaml mode=resume pretrained_path=runs/<run>
    python tools/train.py --cfg cfgs/train/modelnet40-pointnet.yaml mode=test pretrained_path=runs/<run>
    python tools/train.py --cfg cfgs/train/partseg/distilled-pointnet-cpu.yaml artifact=runs/<run>/artifact.safetensors

Part segmentation (instance/class mIoU) runs for `task: segmentation`, or without a `task` key when the model
or dataset is a part-segmentation one (BasePartSeg, DistillPointNetSeg; ShapeNetPartNormal, EmbeddedShapesPart),
so PointNeXt's cfgs/shapenetpart YAMLs run unchanged.

The trainer's own keys (run_dir, root_dir, artifact, val_per_class, max_train_batches, amp, device, ...; all of
`train_cls.TRAIN_DEFAULTS`) are known to every YAML, so PointNeXt's YAMLs take them without a `+`:

    python tools/train.py --cfg PointNeXt/cfgs/modelnet40ply2048/pointnext-s.yaml \
        artifact=runs/<run>/artifact.safetensors dataset.common.data_dir=../shared/data/ModelNet40Ply2048 epochs=10

A run writes to `run_dir` if given, else to `<root_dir>/<cfg file stem>/<date-time>-<cfg hash>/` (root_dir `runs`
unless the YAML sets it: PointNeXt's cfgs/default.yaml sets `log/`); relative paths are relative to the directory
you run from. The first log line gives the absolute path.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import openpoints_dd  # noqa: E402,F401  (registers everything, fixes openpoints on this machine)
from openpoints_dd.engine.tasks import task_of  # noqa: E402
from openpoints_dd.engine.train_checkpoint import resume_run_dir  # noqa: E402
from openpoints_dd.engine.train_cls import load_train_config  # noqa: E402
from openpoints_dd.utils.run import start_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument('--cfg', required=True, help='experiment YAML (cfgs/train/*.yaml)')
    args, overrides = parser.parse_known_args(argv)
    cfg = load_train_config(args.cfg, overrides)   # unknown keys and changes of kind fail here
    task = task_of(cfg)                          # an unknown `task` fails here
    resumed = resume_run_dir(cfg)                # mode=resume without run_dir continues in the checkpoint's run
    if resumed is not None:
        cfg.run_dir = str(resumed)
    with start_run(cfg, args.cfg, overrides) as run_dir:
        task.train(cfg, run_dir)                 # start_run already logged the overrides to log.txt
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
