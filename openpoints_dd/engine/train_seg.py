"""Supervised part segmentation on openpoints, driven by PointNeXt's ShapeNet-part YAML keys.

`train_segmenter(cfg, run_dir)` is PointNeXt's `examples/shapenetpart/main.py` on the machinery of
`train_cls` (run dir, log, safetensors checkpoints best/last, resume, val/test modes, progress bars): only
the batch (per-point part targets, `cls` the category, features from `feature_keys`), the model check and the
evaluation differ. The evaluation is `evaluate_seg`'s: instance and class mIoU with logits restricted to
the category's parts (the standard protocol, which picks the best epoch) and unrestricted beside.
"""
from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .evaluate_seg import predict_parts, shape_ious, summarize_ious
from .train_cls import capped_batches, run_log_file, Trainer
from ..utils.progress import bar_disabled

logger = logging.getLogger(__name__)

#: Models and datasets that make a config without `task:` a part-segmentation config (PointNeXt's
#: cfgs/shapenetpart YAMLs carry no task key: PointNeXt picks the script by folder).
SEG_MODELS = ('BasePartSeg', 'DistillPointNetSeg')
SEG_DATASETS = ('ShapeNetPartNormal', 'EmbeddedShapesPart')
TASKS = ('classification', 'segmentation')
SEG_BEST_NOTE = ("best epoch = papers' protocol: the validated epoch with the highest instance mIoU on the "
                 "evaluation split (optimistic when that split is the test set); `last_*` is the final epoch")


def task_of(cfg: Mapping[str, Any]) -> str:
    """'segmentation' or 'classification': the top-level `task` key (as in cfgs/distill), else inferred from
    a part-segmentation model (`model.NAME` in `SEG_MODELS`) or dataset (`dataset.common.NAME`, or its
    `real_dataset` for DistilledDataset, in `SEG_DATASETS`), so PointNeXt's ShapeNet-part YAMLs run as they are."""
    task = cfg.get('task')
    if task is not None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        return str(task)
    model = (cfg.get('model') or {}).get('NAME')
    common = ((cfg.get('dataset') or {}).get('common') or {})
    if model in SEG_MODELS or common.get('NAME') in SEG_DATASETS or common.get('real_dataset') in SEG_DATASETS:
        return 'segmentation'
    return 'classification'


def train_segmenter(cfg: Mapping[str, Any], run_dir: str | os.PathLike, *,
                    overrides: Sequence[str] | None = None) -> dict:
    """Train (or resume, or test) a part-segmentation network as PointNeXt's ShapeNet-part `main.py` does.

    Config keys: those of `train_classifier` with `num_classes` = the number of part labels (50 for
    ShapeNet-part) and, as PointNeXt: `shape_classes` (the number of categories; checked against the
    dataset), `feature_keys` (default 'pos': the input channels, e.g. 'pos,x,heights' with normals; a
    distilled set has only xyz). Batches are openpoints' part items: `pos`, `x`, `cls` (B, 1), `y` (B, N).
    Training clouds with more than `num_points` points keep a random subset (labels with them); evaluation
    uses every point the dataset gives.

    Returns:
        `metrics.json`: as `train_classifier` with `{last,best}_{instance_miou, class_miou,
        unrestricted_instance_miou, unrestricted_class_miou, point_acc, miou_per_class}`; the best epoch
        is the one with the highest (restricted) instance mIoU.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_log_file(run_dir / 'log.txt'):
        return SegTrainer(cfg, run_dir, overrides).run()


class SegTrainer(Trainer):
    """`train_cls.Trainer` with part targets and mIoU evaluation."""

    TASK = 'segmentation'
    METRIC = 'instance_miou'
    HEADLINE = ('instance_miou', 'class_miou', 'unrestricted_instance_miou', 'unrestricted_class_miou')
    BEST_NOTE = SEG_BEST_NOTE

    def __init__(self, cfg: Mapping[str, Any], run_dir: Path, overrides: Sequence[str] | None):
        super().__init__(cfg, run_dir, overrides)
        self.feature_keys = str(self.cfg.get('feature_keys') or 'pos')
        self.cls2parts: list[list[int]] | None = None

    @torch.no_grad()
    def _check_head(self, model: nn.Module) -> None:
        """2 random clouds of category 0 through the model: it must give (2, num_classes, N) part logits."""
        generator = torch.Generator().manual_seed(0)
        points = torch.randn(2, self.num_points, 3, generator=generator).to(self.device)
        data = {'pos': points, 'x': torch.randn(2, self.in_channels, self.num_points, generator=generator).to(self.device),
                'cls': torch.zeros(2, 1, dtype=torch.long, device=self.device)}
        model.eval()
        logits = model(data)
        model.train()
        if tuple(logits.shape) != (2, self.num_classes, self.num_points):
            raise ValueError(f'the model {self.cfg.model.get("NAME")} outputs {tuple(logits.shape)} for 2 clouds of '
                             f'{self.num_points} points; part segmentation needs (2, num_classes={self.num_classes}, '
                             f'{self.num_points}): set the head size (model.num_classes, or model.cls_args.num_classes '
                             f'for BasePartSeg) to the number of part labels')

    def _check_same_classes(self, train, val) -> None:
        """Part datasets are compared by their parts per category in `_check_dataset` (ShapeNetPartNormal keeps its
        category names in a form of its own)."""

    def _check_dataset(self, dataset, split: str) -> list[str]:
        cls2parts = getattr(dataset, 'cls2parts', None)
        if cls2parts is None:
            raise ValueError(f'the {split} dataset {type(dataset).__name__} has no cls2parts (category -> part ids): '
                             f'part segmentation needs a part dataset (EmbeddedShapesPart, ShapeNetPartNormal, or a '
                             f'DistilledDataset of a segmentation artifact)')
        cls2parts = [[int(p) for p in ids] for ids in cls2parts]
        num_parts = 1 + max(max(ids) for ids in cls2parts)
        if num_parts != self.num_classes:
            raise ValueError(f'num_classes is {self.num_classes} but the {split} dataset {type(dataset).__name__} has '
                             f'{num_parts} part labels. Set num_classes={num_parts} (and the model head to match).')
        shape_classes = self.cfg.get('shape_classes')
        if shape_classes is not None and int(shape_classes) != len(cls2parts):
            raise ValueError(f'shape_classes is {shape_classes} but the {split} dataset has {len(cls2parts)} '
                             f'categories. Set shape_classes={len(cls2parts)} (and the decoder/one-hot size).')
        if self.cls2parts is not None and cls2parts != self.cls2parts:
            raise ValueError(f'the {split} dataset lists other parts per category than the train split: the '
                             f'distilled set was made from another dataset than the one it is tested on')
        self.cls2parts = cls2parts
        names = getattr(dataset, 'classes', None) or self.cfg.get('classes') or range(len(cls2parts))
        return [str(n) for n in names]

    def _prepare(self, data: Mapping[str, Any], training: bool) -> tuple[dict, Tensor]:
        """Move a batch to the device: `pos` (B, N, 3), `x` (B, C, N) from `feature_keys`, `cls` (B, 1), and the
        part targets (B, N); training clouds with more than num_points points keep a random subset."""
        data = {k: v.to(self.device, non_blocking=True) for k, v in data.items() if torch.is_tensor(v)}
        target = data['y'].long()
        if target.dim() != 2 or target.shape != data['pos'].shape[:2]:
            raise ValueError(f'part segmentation needs per-point labels y (B, N) beside pos (B, N, 3), got '
                             f'{tuple(target.shape)} and {tuple(data["pos"].shape)}: is this a classification dataset?')
        missing = [k for k in self.feature_keys.split(',') if k not in data]
        if missing:
            raise ValueError(f'feature_keys {self.feature_keys!r}: the batch has no {missing} (it has '
                             f'{sorted(data)}); a distilled set has only pos: use feature_keys=pos')
        features = torch.cat([data[k] if data[k].dim() == 3 else data[k].unsqueeze(-1)
                              for k in self.feature_keys.split(',')], -1)
        if features.shape[-1] != self.in_channels:
            raise ValueError(f'feature_keys {self.feature_keys!r} give {features.shape[-1]} channels but the model '
                             f'takes in_channels={self.in_channels} (model.in_channels or encoder_args.in_channels)')
        pos = data['pos']
        if training and pos.shape[1] > self.num_points:
            keep = torch.randperm(pos.shape[1])[:self.num_points].to(self.device)
            pos, features, target = pos[:, keep], features[:, keep], target[:, keep]
        batch = {'pos': pos.contiguous(), 'x': features.transpose(1, 2).contiguous(),
                 'cls': data['cls'].reshape(-1, 1).long()}
        return batch, target

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader) -> dict:
        """Restricted and unrestricted instance/class mIoU (%), point accuracy, per-category mIoU (restricted)."""
        model.eval()
        ious: dict[str, list[Tensor]] = {'': [], 'unrestricted_': []}
        categories, correct, seen = [], 0, 0
        total_batches = capped_batches(len(loader), self.cfg.max_val_batches)
        for data in tqdm(itertools.islice(loader, total_batches), total=total_batches, desc='eval', leave=False,
                         dynamic_ncols=True, disable=bar_disabled(self.cfg.progress)):
            data, target = self._prepare(data, training=False)
            with self._forward_precision():
                logits = model(data)
            logits, category = logits.float().cpu(), data['cls'].reshape(-1).cpu()
            target = target.cpu()
            for prefix, restricted in (('', True), ('unrestricted_', False)):
                pred = predict_parts(logits, category, self.cls2parts, restricted)
                ious[prefix].append(shape_ious(pred, target, category, self.cls2parts))
                if restricted:
                    correct, seen = correct + int((pred == target).sum()), seen + target.numel()
            categories.append(category)
        model.train()
        categories = torch.cat(categories)
        result = {}
        for prefix, values in ious.items():
            summary = summarize_ious(torch.cat(values), categories)
            result[f'{prefix}instance_miou'] = summary['instance_miou']
            result[f'{prefix}class_miou'] = summary['class_miou']
            if not prefix:
                result['miou_per_class'] = {self.classes[c] if c < len(getattr(self, 'classes', [])) else str(c):
                                            round(v, 4) for c, v in summary['per_class'].items()}
        result['point_acc'] = 100 * correct / max(seen, 1)
        return result


__all__ = ['train_segmenter', 'task_of', 'SEG_MODELS', 'SEG_DATASETS', 'TASKS']
