"""The two interfaces an objective implements: per class (`Objective`) or the whole set at once (`SetObjective`).

The engine tells them apart by type, and calls every hook of `ObjectiveBase` on both: an objective without state
of its own inherits the no-op defaults.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn


#: size -> (clouds (size, N, 3), labels (size,)): real clouds as the engine's matching sees them
RealBatch = Callable[[int], tuple[Tensor, Tensor]]


class ObjectiveBase(ABC):
    """What the engine asks of every objective.

    Class attributes:
        trains_backbone: True if the backbone is trained between matching steps (the inner loop of gradient
            matching); False for a fresh, frozen random backbone (distribution matching).
        task: 'classification' (the Distiller) or 'segmentation' (SegDistiller in engine/tasks/part_segmentation.py,
            per-point parts).
    """

    trains_backbone: bool = True
    task: str = 'classification'

    def prepare(self, pool, cfg: Mapping[str, Any], run_dir: str | os.PathLike, device: torch.device | str,
                make_backbone: Callable[[], nn.Module]) -> float:
        """One-off set-up before the first iteration (trajectory matching trains its experts); returns its
        seconds, which the engine logs and does not count in the budget."""
        return 0.0

    def check_cloud_sizes(self, real_points: int, synthetic_points: int) -> None:
        """Refuse real clouds of `real_points` (`distill.num_points`) or synthetic training clouds of
        `synthetic_points` that this objective cannot compare; the engine calls it at construction, before any
        selection network or set-up. Any size by default."""

    def backbone_methods(self) -> tuple[str, ...]:
        """The methods of the backbone this objective calls besides its forward (`embed`, `classify`,
        `point_features`); the engine refuses a `distill.backbone` without them before any work."""
        return ()

    def backbone_keywords(self) -> dict[str, tuple[str, ...]]:
        """The keyword arguments this objective passes to those methods, per method; the engine refuses a backbone
        whose method does not take them, before any work."""
        return {}

    def iteration_backbone(self, backbone: nn.Module, iteration: int, real_batch: RealBatch) -> nn.Module:
        """The network iteration `iteration` matches through: the engine's fresh `backbone` by default.

        An objective that keeps networks of its own across iterations (distribution matching's semi-trained
        queue) returns one of them; `real_batch(size)` draws real clouds and their labels as matching sees them.
        """
        return backbone

    def parameters(self) -> list[Tensor]:
        """Learnable tensors of the objective itself (trajectory matching's step size); none by default."""
        return []

    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer of `parameters()`, stepped with the synthesizer's; None when there are none."""
        return None

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the objective beyond its optimizer."""
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore `state_dict()`."""

    def __repr__(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in vars(self).items() if not k.startswith('_'))
        return f'{type(self).__name__}({args})'


class Objective(ObjectiveBase):
    """Compares the synthetic and real clouds of one class through a backbone: the engine matches the classes in
    chunks through `match_classes`."""

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


class SetObjective(ObjectiveBase):
    """Compares the whole synthetic set at once (trajectory matching): the engine calls `match_all` once per outer
    step, with every synthetic cloud and its label."""

    @abstractmethod
    def match_all(self, backbone: nn.Module, syn_pos: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Scalar loss of the whole set: `syn_pos` (S, N, 3) differentiable, `labels` (S,) int64."""
