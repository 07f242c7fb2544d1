"""EulerRotator: a learnable pose per synthetic cloud (SADM's joint rotation optimisation)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from openpoints.models.build import MODELS

from ..registry import ROTATORS
from .base import Rotator, check_points


def euler_matrices(angle_x: Tensor, angle_y: Tensor, angle_z: Tensor) -> Tensor:
    """M = Rz · Ry · Rx from (S,) angles in radians: (S, 3, 3), right-handed elementary rotations.

    Differentiable in the angles; same dtype and device as them.
    """
    cx, sx, cy, sy, cz, sz = angle_x.cos(), angle_x.sin(), angle_y.cos(), angle_y.sin(), angle_z.cos(), angle_z.sin()
    one, zero = torch.ones_like(angle_x), torch.zeros_like(angle_x)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], dim=-1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], dim=-1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], dim=-1).view(-1, 3, 3)
    return rz @ ry @ rx


@MODELS.register_module()
@ROTATORS.register_module()
class EulerRotator(Rotator):
    """Three learnable Euler angles per synthetic cloud, all starting at 0 (SADM, baselines spec §A.4).

    Synthetic clouds of slots `slots` become `pos @ M[slots]` with M = Rz·Ry·Rx: points are row vectors
    multiplied on the right, as in the SADM release, so the applied rotation is M^T (it only matters when
    comparing angles with that code). Real clouds (`slots=None`) pass unchanged. The engine optimises the
    base clouds and the angles jointly and exports the rotated clouds.

    The release wraps the angles into [-pi, pi) in place every iteration; M is 2pi-periodic, so that
    changes nothing here and is left out (`wrapped_angles()` reports them wrapped).

    Args:
        num_slots: number of synthetic clouds (the engine passes K·cpc). Default 1.
        lr_scale: per-axis multipliers (x, y, z) of `distill.rotator_optimizer.lr`. Default (1, 10, 1):
            the spec's 0.5 / 5.0 / 0.5, y being the up axis of ModelNet / ShapeNet files.
    """

    per_slot = True

    def __init__(self, *, num_slots: int = 1, lr_scale: Sequence[float] = (1.0, 10.0, 1.0)):
        super().__init__()
        if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1:
            raise ValueError(f'EulerRotator: num_slots must be an int >= 1, got {num_slots!r}.')
        if len(lr_scale) != 3 or any(float(v) < 0 for v in lr_scale):
            raise ValueError(f'EulerRotator: lr_scale must be three non-negative numbers (x, y, z), got {lr_scale!r}.')
        self.num_slots, self.lr_scale = num_slots, tuple(float(v) for v in lr_scale)
        self.angle_x = nn.Parameter(torch.zeros(num_slots))
        self.angle_y = nn.Parameter(torch.zeros(num_slots))
        self.angle_z = nn.Parameter(torch.zeros(num_slots))

    def extra_repr(self) -> str:
        return f'num_slots={self.num_slots}, lr_scale={self.lr_scale}'

    def param_groups(self) -> list[dict]:
        """One optimizer group per axis, with its `lr_scale` (read by the engine's `rotator_optimizer`)."""
        return [{'params': [angle], 'lr_scale': scale}
                for angle, scale in zip((self.angle_x, self.angle_y, self.angle_z), self.lr_scale)]

    def rotation_matrices(self, slots: Tensor) -> Tensor:
        """(S,) int64 slots -> (S, 3, 3) matrices Rz·Ry·Rx, differentiable in the angles."""
        if slots.min() < 0 or slots.max() >= self.num_slots:
            raise IndexError(f'EulerRotator holds {self.num_slots} slots; got slot indices up to {int(slots.max())}')
        slots = slots.to(self.angle_x.device)
        return euler_matrices(self.angle_x[slots], self.angle_y[slots], self.angle_z[slots])

    def wrapped_angles(self) -> Tensor:
        """(num_slots, 3) angles (x, y, z) wrapped into [-pi, pi), detached."""
        angles = torch.stack([self.angle_x, self.angle_y, self.angle_z], dim=1).detach()
        return torch.remainder(angles + math.pi, 2 * math.pi) - math.pi

    def frame(self, pos: Tensor, slots: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Zero origin (B, 1, 3) and basis (B, 3, 3): M[slots], or the identity for real clouds (det +1)."""
        check_points(pos, type(self).__name__)
        origin = pos.new_zeros(pos.shape[0], 1, 3)
        if slots is None:
            return origin, torch.eye(3, dtype=pos.dtype, device=pos.device).expand(pos.shape[0], 3, 3)
        if slots.shape != (pos.shape[0],):
            raise ValueError(f'EulerRotator: slots must be ({pos.shape[0]},), one per cloud, got {tuple(slots.shape)}')
        return origin, self.rotation_matrices(slots).to(pos.dtype)

    def forward(self, pos: Tensor, slots: Tensor | None = None) -> Tensor:
        """(B, N, 3) -> (B, N, 3): synthetic clouds rotated by their slot's angles; real clouds unchanged."""
        check_points(pos, type(self).__name__)
        if slots is None:
            return pos
        _, basis = self.frame(pos, slots)
        return pos @ basis
