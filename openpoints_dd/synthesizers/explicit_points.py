"""Explicit synthetic clouds: one learnable (S, N, 3) tensor (the DC / DM / MTT / SADM parameterisation)."""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from ..registry import SYNTHESIZERS
from . import coresets
from .base import Synthesizer, checked_max_radius, project_into_ball_

_INITS = ('random', 'real', 'herding', 'kcenter', 'facility', 'noise')


@SYNTHESIZERS.register_module()
class ExplicitPoints(Synthesizer):
    """A fixed tensor of K·cpc clouds, initialised from real clouds of each class or from noise.

    The real initialisations are the coreset rules of baselines spec §B.6 (`coresets.py`), applied per
    class: 'random' (uniform draw, the DC / DM / SADM default), 'herding', 'kcenter' or 'facility' (greedy, in
    the embedding of a DistillPointNet trained briefly on the real set). With `distill.iterations: 0` the
    selection is exported as it is: the Random / Herding / K-Center / facility-location baselines.

    When asked for fewer points than it stores, it returns one random subset of point indices shared by
    the requested clouds (only those points receive a gradient in that step).

    Args:
        num_classes, cpc: see `Synthesizer`.
        num_points: points stored per cloud. Default 1024.
        init: 'random' (alias 'real', kept for old configs), 'herding', 'kcenter', 'facility' (facility
            location, 3D-Pruner's rule) or 'noise' (uniform in the unit ball). Default 'random'.
        kcenter_first: first K-Center pick, 'mean' (the cloud nearest the class mean, as SADM: K-Center
            then equals Herding at cpc 1) or 'random' (DeepCore). Default 'mean'.
        embed_steps: Adam steps of the selection network on the whole real set (batches of `embed_batch`
            drawn pass after pass: E epochs of M clouds are E·ceil(M / embed_batch) steps). Default 500.
        embed_points: points per cloud while training it and embedding. Default 256.
        embed_batch: its batch size. Default 64.
        embed_lr: its Adam learning rate. Default 1e-3.
        embed_widths: its per-point widths. Default [64, 128, 1024].
        facility_sigma: the RBF width of facility location. Default 0.5.
        embed_cache: a folder keeping the selection network per (dataset, settings, seed), shared by the rules,
            with its training seconds (a run that loads it is charged them); None: trained every run. Default None.
        max_radius: after every optimizer step, points farther than this from the origin are put back on the
            sphere of this radius (`project_into_ball_`; 1.0 keeps them in the unit ball real starts lie in).
            None: no projection. Default None.
    """

    def __init__(self, *, num_classes: int, cpc: int, num_points: int = 1024,
                 init: Literal['random', 'real', 'herding', 'kcenter', 'facility', 'noise'] = 'random',
                 kcenter_first: Literal['mean', 'random'] = 'mean', embed_steps: int = 500,
                 embed_points: int = 256, embed_batch: int = 64, embed_lr: float = 1e-3,
                 embed_widths: Sequence[int] | None = None, facility_sigma: float = 0.5,
                 embed_cache: str | None = None, max_radius: float | None = None):
        super().__init__(num_classes=num_classes, cpc=cpc)
        self.max_radius = checked_max_radius('ExplicitPoints', max_radius)
        if init not in _INITS:
            raise ValueError(f'ExplicitPoints: init must be one of {_INITS}, got {init!r}')
        self.init = 'random' if init == 'real' else init
        selection = coresets.CoresetSelection(
            'random' if self.init == 'noise' else self.init, kcenter_first=kcenter_first, embed_steps=embed_steps,
            embed_points=embed_points, embed_batch=embed_batch, embed_lr=embed_lr,
            embed_widths=embed_widths if embed_widths is not None else (64, 128, 1024), facility_sigma=facility_sigma,
            embed_cache=embed_cache)
        self.selection = None if self.init == 'noise' else selection   # built for 'noise' too: bad keys fail alike
        self.num_points = int(num_points)
        self.max_points = self.num_points   # matching subsamples the stored points; it cannot add any
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
        return {'init': self.init}

    def project_(self) -> None:
        project_into_ball_(self.points, self.max_radius)

    def extra_repr(self) -> str:
        text = f'{super().extra_repr()}, num_points={self.num_points}'
        return text if self.max_radius is None else f'{text}, max_radius={self.max_radius}'


def _uniform_in_ball(num_clouds: int, num_points: int) -> Tensor:
    direction = torch.nn.functional.normalize(torch.randn(num_clouds, num_points, 3), dim=-1)
    return direction * torch.rand(num_clouds, num_points, 1).pow(1 / 3)
