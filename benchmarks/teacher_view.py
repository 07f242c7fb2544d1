"""What a classification set's teacher says about its clouds: does it still see each cloud's class?

    .venv/bin/python benchmarks/teacher_view.py --cfg cfgs/distill/modelnet40/m3d-herding-cpc1-cpu30m.yaml \
        --set start=runs/<start>/artifact.safetensors --set m3d=runs/<run>/artifact.safetensors

Teacher labels train the student towards the teacher's distribution on each synthetic cloud; matching that moves a
cloud away from what a trained network recognises can help hard labels and still hurt teacher labels. Per set: how
often the teacher's top class is the cloud's label, the mean probability of the label, and the mean entropy, plain
and at the temperature the teacher labels use (the clouds as the protocol trains on them: one fixed draw at the
evaluation's points).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import openpoints_dd  # noqa: E402,F401  (registers everything, fixes openpoints on this machine)
from openpoints_dd.data.synthetic_set import SyntheticSet  # noqa: E402
from openpoints_dd.engine.evaluate import evaluation_settings  # noqa: E402
from openpoints_dd.labels import TeacherLabels  # noqa: E402
from openpoints_dd.labels.teacher import dataset_identity  # noqa: E402
from openpoints_dd.settings import load_distill_config  # noqa: E402


def label_view(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict:
    """Top-1 agreement with `labels` (%), mean p(label) and mean entropy (nats), plain and tempered."""
    rows = torch.arange(len(labels))
    view = {'top1_is_label': 100 * (logits.argmax(-1) == labels).float().mean().item()}
    for name, scaled in (('', logits), ('tempered_', logits / temperature)):
        p = scaled.float().softmax(-1)
        view[f'{name}p_label'] = p[rows, labels].mean().item()
        view[f'{name}entropy'] = -(p * p.clamp_min(1e-12).log()).sum(-1).mean().item()
    return view


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cfg', required=True, help='distill YAML: its dataset and evaluation sections')
    parser.add_argument('--set', action='append', required=True, metavar='LABEL=PATH', help='an artifact; repeatable')
    parser.add_argument('--teacher', default='cfgs/train/teacher-pointnet-modelnet40.yaml')
    args = parser.parse_args(argv)
    cfg = load_distill_config(args.cfg, [])
    num_points = int(evaluation_settings(cfg['evaluation'])['num_points'])
    teacher = TeacherLabels(teacher=args.teacher)
    teacher.prepare(dataset_identity(cfg['dataset']), 'cpu')
    print(f'teacher {args.teacher} ({teacher.report()["teacher"].get("test_oa", "?")} % test OA), '
          f'temperature {teacher.temperature}; clouds drawn at up to {num_points} points')
    print(f'{"set":24s} {"points":>6s} {"top-1 = label %":>16s} {"p(label)":>9s} {"entropy":>8s} {"tempered p(label)":>18s} '
          f'{"tempered entropy":>17s}')
    for item in args.set:
        label, path = item.split('=', 1)
        pos, labels = SyntheticSet(path).sample(num_points, torch.Generator().manual_seed(0))
        view = label_view(teacher.teacher_logits(pos), labels, teacher.temperature)   # teacher_logits: no gradient
        print(f'{label:24s} {pos.shape[1]:6d} {view["top1_is_label"]:16.1f} {view["p_label"]:9.3f} {view["entropy"]:8.3f} '
              f'{view["tempered_p_label"]:18.3f} {view["tempered_entropy"]:17.3f}')


if __name__ == '__main__':
    main()
