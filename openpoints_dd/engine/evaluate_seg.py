"""Part segmentation's test figures and batch layout (the run itself is `evaluate.train_and_test`).

Metrics (ShapeNet-part convention): per test shape, the IoU of every part of its TRUE category, where a
part absent from both prediction and ground truth counts IoU 1; the shape IoU is their mean. Instance mIoU
is the mean over shapes; class mIoU the mean over categories of their shapes' mean. Predictions are the
argmax over the category's own part logits (`restricted`, the standard protocol) and, for parity with the
DD3D reference (spec §7.5), over all part logits (`unrestricted`, stricter).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..data.part_pool import part_table
from ..utils.geometry import normalize_to_unit_sphere
from ..utils.precision import autocast

#: (epoch, generator) -> (pos (S, N, 3), parts (S, N), categories (S,))
PartSampler = Callable[[int, torch.Generator], tuple[Tensor, Tensor, Tensor]]

def part_mask(categories: Tensor, cls2parts: Sequence[Sequence[int]], num_parts: int) -> Tensor:
    """(M,) categories -> (M, num_parts) bool: the parts each shape's category owns."""
    return part_table(cls2parts, num_parts).to(categories.device)[categories]


def predict_parts(logits: Tensor, categories: Tensor, cls2parts: Sequence[Sequence[int]], restricted: bool) -> Tensor:
    """(M, P, N) logits -> (M, N) part ids: argmax over the category's parts (restricted) or all parts."""
    if restricted:
        allowed = part_mask(categories, cls2parts, logits.shape[1]).unsqueeze(-1)
        logits = logits.masked_fill(~allowed, float('-inf'))
    return logits.argmax(1)


def shape_ious(pred: Tensor, target: Tensor, categories: Tensor, cls2parts: Sequence[Sequence[int]]) -> Tensor:
    """(M,) float64: each shape's mean IoU over the parts of its category (a part absent from both
    prediction and truth counts 1), from predicted and true part ids (M, N) and categories (M,)."""
    ious = torch.empty(len(pred), dtype=torch.float64)
    for i in range(len(pred)):
        per_part = []
        for part in cls2parts[int(categories[i])]:
            p, t = pred[i] == part, target[i] == part
            union = int((p | t).sum())
            per_part.append(1.0 if union == 0 else int((p & t).sum()) / union)
        ious[i] = sum(per_part) / len(per_part)
    return ious


def summarize_ious(ious: Tensor, categories: Tensor) -> dict:
    """Instance mIoU (mean over shapes) and class mIoU (mean over categories of their shapes' mean), in %."""
    categories = categories.cpu()
    per_class = {int(c): 100 * float(ious[categories == c].mean()) for c in categories.unique().tolist()}
    return {'instance_miou': 100 * float(ious.mean()), 'class_miou': sum(per_class.values()) / len(per_class),
            'per_class': per_class}


def part_miou(pred: Tensor, target: Tensor, categories: Tensor, cls2parts: Sequence[Sequence[int]]) -> dict:
    """Instance and class mIoU (%) of predicted part ids (M, N) against the truth (M, N).

    A part of the shape's category that is absent from both prediction and truth has IoU 1.
    Returns {'instance_miou', 'class_miou', 'per_class' (category -> mIoU, categories with test shapes)}.
    """
    return summarize_ious(shape_ious(pred, target, categories, cls2parts), categories)


@torch.no_grad()
def test_miou(model: nn.Module, pos: Tensor, parts: Tensor, categories: Tensor, cls2parts: Sequence[Sequence[int]],
              batch_size: int = 64, amp: str | None = None) -> dict:
    """Restricted and unrestricted instance/class mIoU, and point accuracy, of `model` on a labelled set; `amp: bf16`
    runs the forward under bf16 autocast."""
    model.eval()
    with autocast(amp, pos.device):
        logits = torch.cat([model(part_batch(pos[s:s + batch_size], categories[s:s + batch_size])).float().cpu()
                            for s in range(0, len(pos), batch_size)])
    model.train()
    parts, categories = parts.cpu(), categories.cpu()
    result = {}
    for name, restricted in (('', True), ('unrestricted_', False)):
        pred = predict_parts(logits, categories, cls2parts, restricted)
        metrics = part_miou(pred, parts, categories, cls2parts)
        result[f'{name}instance_miou'] = metrics['instance_miou']
        result[f'{name}class_miou'] = metrics['class_miou']
        result[f'{name}point_acc'] = 100 * float((pred == parts).float().mean())
    return result


def part_batch(pos: Tensor, categories: Tensor) -> dict:
    """The openpoints part-segmentation batch: `pos` (B, N, 3), features `x` = xyz (B, 3, N) (a distilled set
    has no normals), `cls` (B, 1), as DistillPointNetSeg and openpoints' BasePartSeg (PointNeXt) take it."""
    return {'pos': pos, 'x': pos.transpose(1, 2).contiguous(), 'cls': categories.reshape(-1, 1)}


def fixed_part_sampler(pos: Tensor, parts: Tensor, categories: Tensor) -> PartSampler:
    """A sampler that always returns the same normalised clouds."""
    pos = normalize_to_unit_sphere(pos)
    return lambda epoch, generator: (pos, parts, categories)
