"""Explicit synthetic clouds: one learnable (S, N, 3) tensor (the DC / DM / MTT / SADM parameterisation)."""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..registry import SYNTHESIZERS
from .base import Synthesizer


@SYNTHESIZERS.register_module()
class ExplicitPoints(Synthesizer):
    """A fixed tensor of K·cpc clouds, initialised from random real clouds of each class or from noise.

    When asked for fewer points than it stores, it returns one random subset of point indices shared by
    the requested clouds (only those points receive a gradient in that step).

    Args:
        num_classes, cpc: see `Synthesizer`.
        num_points: points stored per cloud. Default 1024.
        init: 'real' (random real clouds, the baselines' standard) or 'noise' (uniform in the unit
            ball). Default 'real'.
    """

    def __init__(self, *, num_classes: int, cpc: int, num_points: int = 1024,
                 init: Literal['real', 'noise'] = 'real'):
        super().__init__(num_classes=num_classes, cpc=cpc)
        if init not in ('real', 'noise'):
            raise ValueError(f"ExplicitPoints: init must be 'real' or 'noise', got {init!r}")
        self.init, self.num_points = init, int(num_points)
        self.points = nn.Parameter(_uniform_in_ball(self.num_slots, self.num_points))

    def synthesize(self, slots: Tensor, num_points: int, generator: torch.Generator | None = None) -> Tensor:
        clouds = self.points[slots]
        if num_points == self.num_points:
            return clouds
        if num_points > self.num_points:
            raise ValueError(f'ExplicitPoints stores {self.num_points} points per cloud; '
                             f'{num_points} were requested. Raise synthesizer.num_points.')
        keep = torch.randperm(self.num_points, generator=generator)[:num_points].to(clouds.device)
        return clouds[:, keep]

    def initialize_from_real(self, clouds: Tensor) -> dict:
        if clouds.shape[0] != self.num_slots or clouds.shape[1] < self.num_points:
            raise ValueError(f'need ({self.num_slots}, >={self.num_points}, 3) real clouds, got {tuple(clouds.shape)}')
        with torch.no_grad():
            self.points.copy_(clouds[:, :self.num_points])
        return {'init': 'real'}

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, num_points={self.num_points}'


def _uniform_in_ball(num_clouds: int, num_points: int) -> Tensor:
    direction = torch.nn.functional.normalize(torch.randn(num_clouds, num_points, 3), dim=-1)
    return direction * torch.rand(num_clouds, num_points, 1).pow(1 / 3)
