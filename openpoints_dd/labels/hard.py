"""Hard labels: the class of every cloud, as every first-wave table trained."""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from ..registry import LABELERS
from .base import Labeler
from .losses import smoothed_cross_entropy


@LABELERS.register_module()
class HardLabels(Labeler):
    """Cross-entropy against each cloud's class, optionally label-smoothed.

    Args:
        smoothing: ε of `smoothed_cross_entropy`. Default 0 (the plain cross-entropy of the CPU protocol).
    """

    def __init__(self, *, smoothing: float = 0.0):
        if not 0 <= float(smoothing) < 1:
            raise ValueError(f'HardLabels: smoothing must be in [0, 1), got {smoothing!r}')
        self.smoothing = float(smoothing)

    def loss(self, logits: Tensor, target: Tensor, inputs: Tensor | Mapping[str, Any]) -> Tensor:
        return smoothed_cross_entropy(logits, target, self.smoothing)

    def describe(self) -> str:
        return 'hard labels' + (f' (smoothing {self.smoothing:g})' if self.smoothing else '')
