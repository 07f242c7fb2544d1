"""SmoothCrossEntropy with ignore_index / weight runs on CPU after `cuda_fixes.install()`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import openpoints_dd  # noqa: F401  (applies the fix)
from openpoints.loss import build_criterion_from_cfg


def _smooth_targets(gt, num_classes, smoothing):
    one_hot = F.one_hot(gt, num_classes).float()
    return one_hot * (1 - smoothing) + (1 - one_hot) * smoothing / (num_classes - 1)


def test_smooth_cross_entropy_with_ignore_index_and_weight_on_cpu():
    torch.manual_seed(0)
    weight = np.array([1.0, 2.0, 0.5, 1.5, 3.0], dtype=np.float32)
    criterion = build_criterion_from_cfg({'NAME': 'SmoothCrossEntropy', 'label_smoothing': 0.2,
                                          'ignore_index': 2, 'num_classes': 5, 'weight': weight})
    pred = torch.randn(6, 5, requires_grad=True)
    gt = torch.tensor([0, 1, 2, 3, 4, 2])
    loss = criterion(pred, gt)
    # rows with label 2 are dropped; labels above 2 move one down (openpoints' reducing list)
    kept, mapped = pred[[0, 1, 3, 4]], torch.tensor([0, 1, 2, 3])
    expected = -(_smooth_targets(mapped, 5, 0.2) * F.log_softmax(kept, 1) * torch.from_numpy(weight)).sum(1).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[[2, 5]] == 0).all()


@pytest.mark.parametrize('weight', [None, [1.0, 0.5, 2.0]])
def test_smooth_cross_entropy_without_smoothing_is_weighted_cross_entropy(weight):
    criterion = build_criterion_from_cfg({'NAME': 'SmoothCrossEntropy', 'label_smoothing': 0.0, 'weight': weight})
    pred, gt = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    expected = F.cross_entropy(pred, gt, weight=None if weight is None else torch.tensor(weight))
    torch.testing.assert_close(criterion(pred, gt), expected)
