"""The two terms of a labeled loss: label-smoothed cross-entropy and the tempered teacher KL.

Both take per-cloud logits (B, K) or per-point logits (B, K, N) (part segmentation, class dimension 1 as torch's
cross-entropy takes it); per-point terms are averaged over every point of the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: the logit an excluded class takes in `distillation_kl`: its probability underflows to 0 at any temperature
EXCLUDED = -1e9


def smoothed_cross_entropy(logits: Tensor, target: Tensor, smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy against targets 1 - ε on the true class and ε / (K - 1) on each other class.

    openpoints' (and 3D-Pruner's) SmoothCrossEntropy convention, which puts no mass ε / K back on the true class
    as torch's `label_smoothing` does. ε = 0 is the plain cross-entropy.

    Args:
        logits: (B, K) or (B, K, N), computed in fp32; target: (B,) or (B, N) int64; smoothing: ε in [0, 1).
            Default 0.
    """
    logits = logits.float()
    if smoothing == 0:
        return F.cross_entropy(logits, target)
    log_probs = F.log_softmax(logits, dim=1)
    K = logits.shape[1]
    weights = log_probs.new_full(log_probs.shape, smoothing / (K - 1))
    weights.scatter_(1, target.unsqueeze(1), 1.0 - smoothing)
    return -(weights * log_probs).sum(1).mean()


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
                    allowed: Tensor | None = None) -> Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), batch mean (Hinton et al. 2015; the T² keeps the
    gradient's scale as T changes), mean over clouds, or over points for (B, K, N) logits. Zero when the two
    logit vectors are equal. Computed in fp32.

    `allowed`: a bool mask of the logits' shape (or broadcastable to it) restricting both distributions to the
    allowed classes (a shape's own parts in part segmentation); None: all classes.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f'teacher logits {tuple(teacher_logits.shape)} do not fit the student\'s '
                         f'{tuple(student_logits.shape)}: the teacher was trained for another head')
    if allowed is None:
        student = F.log_softmax(_rows(student_logits).float() / temperature, dim=-1)
        teacher = F.log_softmax(_rows(teacher_logits).float() / temperature, dim=-1)
        return F.kl_div(student, teacher, log_target=True, reduction='batchmean') * temperature ** 2
    allowed = _rows(allowed.expand_as(student_logits))
    # a finite fill (not -inf): the excluded classes get probability 0 and no NaN reaches the backward
    student = F.log_softmax(_rows(student_logits).float().masked_fill(~allowed, EXCLUDED) / temperature, dim=-1)
    teacher = F.log_softmax(_rows(teacher_logits).float().masked_fill(~allowed, EXCLUDED) / temperature, dim=-1)
    per_class = (teacher.exp() * (teacher - student)).where(allowed, torch.zeros((), device=student.device))
    return per_class.sum() / len(per_class) * temperature ** 2


def _rows(logits: Tensor) -> Tensor:
    """(B, K) as is; (B, K, N) per-point logits as (B * N, K) rows, one per point."""
    return logits if logits.dim() == 2 else logits.movedim(1, -1).reshape(-1, logits.shape[1])
