"""IdentityRotator: leaves clouds as they are (the default when a config has no rotator section)."""
from __future__ import annotations

import torch
from torch import Tensor

from openpoints.models.build import MODELS

from ..registry import ROTATORS
from .base import Rotator, check_points


@MODELS.register_module()
@ROTATORS.register_module()
class IdentityRotator(Rotator):
    """No rotation and no centring: `forward(pos)` returns `pos` itself (aligned-data setting of DD3D)."""

    def __init__(self):
        super().__init__()

    def frame(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Zero origin and identity basis: (B, 1, 3) and (B, 3, 3), same dtype and device as `pos`."""
        check_points(pos, type(self).__name__)
        batch = pos.shape[0]
        origin = pos.new_zeros(batch, 1, 3)
        basis = torch.eye(3, dtype=pos.dtype, device=pos.device).expand(batch, 3, 3)
        return origin, basis

    def forward(self, pos: Tensor, slots: Tensor | None = None) -> Tensor:
        """Return `pos` unchanged (same object): (B, N, 3) → (B, N, 3)."""
        check_points(pos, type(self).__name__)
        return pos
