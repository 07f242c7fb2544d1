"""The interface every rotator implements: an origin and an orthogonal basis per cloud."""
from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
from torch import Tensor, nn


class Rotator(nn.Module, metaclass=ABCMeta):
    """Puts each cloud of a batch in a canonical pose: `forward(pos) = (pos - origin) @ basis`.

    Subclasses implement `frame`, which returns the per-cloud origin and orthogonal basis; `forward`
    applies them. The basis acts on row vectors: column `a` of `basis` is the input-space direction that
    becomes output axis `a`. Rotators are placed in front of a backbone (in the distillation engine, or
    in an openpoints model YAML, since each is also registered in openpoints' MODELS).
    """

    @abstractmethod
    def frame(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """The canonical frame of each cloud.

        Args:
            pos: (B, N, 3) floating point clouds.

        Returns:
            origin: (B, 1, 3) point that moves to the origin, same dtype as `pos`.
            basis: (B, 3, 3) orthogonal matrix (det +1 or -1, as the subclass documents), same dtype.
        """

    #: True if the rotator holds parameters per synthetic cloud and needs `slots` (e.g. EulerRotator); the
    #: engine then passes `num_slots` to its constructor and bakes its poses into the exported clouds
    per_slot: bool = False

    def forward(self, pos: Tensor, slots: Tensor | None = None) -> Tensor:
        """Canonicalise a batch of clouds.

        Args:
            pos: (B, N, 3) floating point clouds.
            slots: (B,) int64 synthetic slot of each cloud, or None for real clouds. Ignored by rotators
                whose frame depends on the cloud only; used by per-slot rotators.

        Returns:
            (B, N, 3) clouds in their canonical frames, `(pos - origin) @ basis`.

        Raises:
            ValueError: if `pos` is not a floating (B, N, 3) tensor.
        """
        check_points(pos, type(self).__name__)
        origin, basis = self.frame(pos)
        return (pos - origin) @ basis


def check_points(pos: Tensor, owner: str) -> None:
    """Raise a ValueError naming `owner` unless `pos` is a floating (B, N, 3) tensor."""
    if not torch.is_tensor(pos) or pos.ndim != 3 or pos.shape[-1] != 3:
        shape = tuple(pos.shape) if torch.is_tensor(pos) else type(pos).__name__
        raise ValueError(f'{owner} expects pos (B, N, 3), got {shape}. Did you pass features in (B, C, N)?')
    if not pos.is_floating_point():
        raise ValueError(f'{owner} expects floating point coordinates, got {pos.dtype}.')
