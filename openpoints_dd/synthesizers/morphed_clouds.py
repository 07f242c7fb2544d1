"""3DDP's packed slots: S low-resolution real anchors with point correspondence plus M learned morphs of them.

3DDP (ICLR 2026; research/packing_and_soft_labels.md, document 1, §1.2-1.3) spends one 1024-point cloud's budget
per slot on S anchor clouds of P points (4 × 255) and M blend-logit vectors of length S. Anchor point n of every
anchor of a slot corresponds (a linear assignment aligns them to the first), so morph m, point n, is the convex
combination Σ_j softmax(β_m)_j · a_j[n] of the slot's anchors. A slot therefore trains as S + M clouds of P points.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ..compat.point_ops import furthest_point_sample
from ..registry import SYNTHESIZERS
from . import coresets
from .base import Synthesizer, checked_max_radius, project_into_ball_

_INITS = ('random', 'herding', 'kcenter', 'facility', 'noise')


@SYNTHESIZERS.register_module()
class MorphedClouds(Synthesizer):
    """Per slot: `anchors` clouds of `points` points (learned coordinates) and `morphs` learned convex blends of them.

    `synthesize` returns, per slot, its anchors then its morphs: `anchors + morphs` clouds of `points` points
    (`clouds_per_slot`), whatever number of points is asked for (the slot's resolution is its own). Storage per
    slot: anchors · points · 3 + morphs · anchors floats (3DDP: 3060 + 16, against 3072 for one 1024-point cloud).

    Args:
        num_classes, cpc: see `Synthesizer`.
        anchors: S, anchor clouds per slot. Default 4.
        morphs: M, learned blends per slot. Default 4.
        points: P, points per anchor (and morph). Default 255 (4 · 255 + 4 blends = 1024 "points" of budget).
        init: 'random' (3DDP: S random real clouds of the class per slot), 'herding', 'kcenter' or 'facility' (the
            coreset rules, `coresets.CoresetSelection`, asked for cpc · S clouds per class), or 'noise' (tanh of N(0, 1)
            coordinates). Real clouds are reduced to P points by furthest point sampling and aligned to the slot's
            first anchor by a linear assignment of points (Hungarian, on Euclidean distances). Default 'random'.
        blend_lr_scale: the blend logits' learning rate as a multiple of the synthesizer's (3DDP: 10 / 100).
            Default 0.1.
        kcenter_first, embed_steps, embed_points, embed_batch, embed_lr, embed_widths, facility_sigma, embed_cache:
            the selection of the coreset rules (`coresets.CoresetSelection`).
        max_radius: after every optimizer step, anchor points farther than this from the origin are put back on
            the sphere of this radius (`project_into_ball_`; the morphs, convex blends, then stay inside too).
            None: no projection. Default None.
    """

    def __init__(self, *, num_classes: int, cpc: int, anchors: int = 4, morphs: int = 4, points: int = 255,
                 init: Literal['random', 'herding', 'kcenter', 'facility', 'noise'] = 'random',
                 blend_lr_scale: float = 0.1, kcenter_first: Literal['mean', 'random'] = 'mean', embed_steps: int = 500,
                 embed_points: int = 256, embed_batch: int = 64, embed_lr: float = 1e-3,
                 embed_widths: Sequence[int] = (64, 128, 1024), facility_sigma: float = 0.5,
                 embed_cache: str | None = None, max_radius: float | None = None):
        super().__init__(num_classes=num_classes, cpc=cpc)
        self.max_radius = checked_max_radius('MorphedClouds', max_radius)
        if init not in _INITS:
            raise ValueError(f'MorphedClouds: init must be one of {_INITS}, got {init!r}')
        if int(anchors) < 1 or int(morphs) < 0 or int(points) < 1:
            raise ValueError(f'MorphedClouds: anchors >= 1, morphs >= 0 and points >= 1 are needed, got anchors='
                             f'{anchors}, morphs={morphs}, points={points}')
        if float(blend_lr_scale) <= 0:
            raise ValueError(f'MorphedClouds: blend_lr_scale must be > 0, got {blend_lr_scale!r}')
        self.num_anchors, self.num_morphs, self.points = int(anchors), int(morphs), int(points)
        self.init, self.blend_lr_scale = init, float(blend_lr_scale)
        rule = {'noise': 'random', 'random': 'random'}.get(init, init)
        built = coresets.CoresetSelection(rule, kcenter_first=kcenter_first, embed_steps=embed_steps,
                                          embed_points=embed_points, embed_batch=embed_batch, embed_lr=embed_lr,
                                          embed_widths=embed_widths, facility_sigma=facility_sigma,
                                          embed_cache=embed_cache)   # built for 'noise' too: bad values fail alike
        self.selection = None if init == 'noise' else built
        self.anchor_points = nn.Parameter(torch.tanh(torch.randn(self.num_slots, self.num_anchors, self.points, 3)))
        self.blend_logits = nn.Parameter(torch.randn(self.num_slots, self.num_morphs, self.num_anchors))

    @property
    def clouds_per_slot(self) -> int:
        return self.num_anchors + self.num_morphs

    @property
    def resolution(self) -> int:
        return self.points

    def param_groups(self) -> list[dict]:
        """The anchors at the synthesizer's learning rate, the blend logits at `blend_lr_scale` times it."""
        return [{'params': [self.anchor_points]}, {'params': [self.blend_logits], 'lr_scale': self.blend_lr_scale}]

    def blend_weights(self, slots: Tensor) -> Tensor:
        """(len(slots), M, S) convex weights (softmax over the anchors)."""
        return torch.softmax(self.blend_logits[slots], dim=-1)

    def synthesize(self, slots: Tensor, num_points: int, generator: torch.Generator | None = None) -> Tensor:
        """(len(slots) · (S + M), P, 3): each slot's anchors, then its morphs. `num_points` is not used."""
        anchors = self.anchor_points[slots]                                          # (n, S, P, 3)
        morphs = torch.einsum('nms,nspc->nmpc', self.blend_weights(slots), anchors)  # (n, M, P, 3)
        return torch.cat([anchors, morphs], dim=1).flatten(0, 1)

    def select_from_pool(self, pool, generator: torch.Generator) -> tuple[Tensor, Tensor] | None:
        """cpc · S real clouds per class (class-major), slot i taking clouds i·S .. i·S + S - 1."""
        if self.selection is None:
            return None
        return self.selection.select(pool, self.cpc * self.num_anchors, generator, device=self.labels.device)

    def initialize_from_real(self, clouds: Tensor) -> dict:
        """Anchors from (K·cpc·S, N, 3) real clouds: each reduced to P points by furthest point sampling, and every
        slot's anchors aligned point by point to its first one (`align_points`). Returns the mean per-point
        distance to the first anchor before and after the alignment."""
        if clouds.shape[0] != self.num_slots * self.num_anchors or clouds.shape[1] < self.points:
            raise ValueError(f'need ({self.num_slots * self.num_anchors}, >={self.points}, 3) real clouds (S per '
                             f'slot), got {tuple(clouds.shape)}')
        index = furthest_point_sample(clouds.contiguous(), self.points).long()
        reduced = clouds.gather(1, index.unsqueeze(-1).expand(-1, -1, 3)).view(self.num_slots, self.num_anchors,
                                                                              self.points, 3)
        before = (reduced - reduced[:, :1]).norm(dim=-1).mean().item()
        aligned = torch.stack([align_points(slot[0], slot) for slot in reduced])
        with torch.no_grad():
            self.anchor_points.copy_(aligned)
        after = (aligned - aligned[:, :1]).norm(dim=-1).mean().item()
        return {'init': self.init, 'correspondence_distance_before': before, 'correspondence_distance_after': after}

    def accounting(self, num_points: int) -> dict:
        """Both of 3DDP's accountings: stored floats per class, and the clouds per class a trainer sees (of P
        points, whatever `num_points` the export asks for)."""
        per_slot = self.num_anchors * self.points * 3 + self.num_morphs * self.num_anchors
        return {'floats_per_class': self.cpc * per_slot, 'training_clouds_per_class': self.cpc * self.clouds_per_slot,
                'points_per_training_cloud': self.points}

    def project_(self) -> None:
        project_into_ball_(self.anchor_points, self.max_radius)

    def extra_repr(self) -> str:
        text = (f'{super().extra_repr()}, anchors={self.num_anchors}, morphs={self.num_morphs}, points={self.points}, '
                f'init={self.init!r}, blend_lr_scale={self.blend_lr_scale}')
        return text if self.max_radius is None else f'{text}, max_radius={self.max_radius}'


def align_points(reference: Tensor, clouds: Tensor) -> Tensor:
    """Each cloud's points re-ordered so that point n is matched to the reference's point n.

    A linear assignment (Hungarian, scipy) on the Euclidean distances between the reference's and the cloud's
    points: the order with the least total distance, so that blending clouds point by point blends matched parts.

    Args:
        reference: (P, 3); clouds: (S, P, 3).

    Returns:
        (S, P, 3): permutations of `clouds`' points; a cloud equal to the reference keeps its order.
    """
    out = []
    for cloud in clouds:
        cost = torch.cdist(reference.double(), cloud.double()).cpu().numpy()
        rows, cols = linear_sum_assignment(cost)
        order = np.empty_like(cols)
        order[rows] = cols
        out.append(cloud[torch.from_numpy(order).to(cloud.device)])
    return torch.stack(out)
