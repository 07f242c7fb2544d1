"""Removes hard `.cuda()` calls from openpoints code on the paths openpoints_dd uses.

* `SmoothCrossEntropy(ignore_index=..., weight=...)` built its lookup tensors with `.cuda()` (and the
  deprecated `torch.range`); here they are built on the CPU and follow the logits' device.

Dataset pre-sampling caches (`ScanObjectNNHardest(uniform_sample=True)`, `ShapeNetPartNormal(
presample=True)`) also call `.cuda()` and write pickles; our configs switch them off instead.
"""
from __future__ import annotations

import numpy as np
import torch


def install() -> None:
    from openpoints.loss.build import SmoothCrossEntropy
    if getattr(SmoothCrossEntropy, '_openpoints_dd_patched', False):
        return
    original_forward = SmoothCrossEntropy.forward

    def __init__(self, label_smoothing=0.2, ignore_index=None, num_classes=None, weight=None,
                 return_valid=False):
        torch.nn.Module.__init__(self)
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index
        self.return_valid = return_valid
        if ignore_index is not None:
            if num_classes is None:
                raise ValueError('SmoothCrossEntropy: ignore_index needs num_classes')
            # maps labels above ignore_index one down, as upstream does (upstream: torch.range(0, C), C+1 entries)
            reducing = torch.arange(num_classes + 1, dtype=torch.long)
            self.reducing_list = torch.cat([reducing[:ignore_index], reducing.new_zeros(1), reducing[ignore_index:]])
        self.weight = None if weight is None else torch.as_tensor(np.asarray(weight), dtype=torch.float32).squeeze()

    def forward(self, pred, gt):
        if self.ignore_index is not None:
            self.reducing_list = self.reducing_list.to(pred.device)
        if self.weight is not None:
            self.weight = self.weight.to(pred.device)
        return original_forward(self, pred, gt)

    SmoothCrossEntropy.__init__ = __init__
    SmoothCrossEntropy.forward = forward
    SmoothCrossEntropy._openpoints_dd_patched = True
