"""The interface every objective implements: a distance between synthetic and real batches of one class."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


class Objective(ABC):
    """Compares the synthetic and real clouds of one class through a backbone.

    Class attributes tell the engine how to drive the backbone:
        trains_backbone: True if the backbone is trained between matching steps (the inner loop of
            gradient matching); False for a fresh, frozen random backbone (distribution matching).
        matches_all_classes: True if the objective compares the whole synthetic set at once (trajectory
            matching): the engine then calls `match_all(backbone, syn_pos, labels, generator)` once per
            outer step instead of `__call__` per class, and also uses the optional hooks `prepare(...)`,
            `parameters()`, `optimizer()`, `state_dict()` / `load_state_dict()` when they exist.
        task: 'classification' (the Distiller) or 'segmentation' (engine/distill_seg.py, per-point parts).
    """

    trains_backbone: bool = True
    matches_all_classes: bool = False
    task: str = 'classification'

    @abstractmethod
    def __call__(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, label: int) -> Tensor:
        """Scalar loss for one class.

        Args:
            backbone: the network (DistillPointNet-like: `forward(pos)` logits, `embed`, `point_features`).
            syn_pos: (S, N, 3) synthetic clouds of the class, differentiable w.r.t. the synthesizer.
            real_pos: (B, N', 3) real clouds of the class, treated as constant.
            label: the class index.
        """

    def match_classes(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, labels: Tensor) -> Tensor:
        """(G,) losses of G classes: `syn_pos` (G, S, N, 3), `real_pos` (G, B, N', 3), `labels` (G,) int64.

        One class after the other here; objectives that batch the classes (one pass over all of them) override
        it, and must give the same losses up to float rounding.
        """
        return torch.stack([self(backbone, syn, real, int(label)) for syn, real, label in zip(syn_pos, real_pos, labels)])

    def __repr__(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in vars(self).items() if not k.startswith('_'))
        return f'{type(self).__name__}({args})'
