"""Gradient matching for part segmentation: whole shapes (global) or one part at a time (local), DD3D spec §7.4."""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import OBJECTIVES
from .base import Objective
from .gradient_matching import _DISTANCES, gradient_distance, grouped_gradient_distance, per_group_gradients

_IGNORE = -100


@OBJECTIVES.register_module()
class PartGradientMatching(Objective):
    """Match the per-point cross-entropy gradients of a segmentation network on synthetic and real clouds of
    one category.

    Global step: the loss is the cross-entropy over all points of the clouds. Local step: for every part of
    the category, the loss keeps only that part's points (the others ignored) and the gradient distances are
    summed over the parts. A part with no point on the real or on the synthetic side is skipped: it adds 0
    (the reference takes a mean over zero points there and gets NaN). Logits are computed once per side and
    shared by the parts.

    Args:
        distance: 'layerwise_cosine' (default, DC/DD3D "ours"), 'mse' or 'cos'; see `gradient_distance`.
        local_every: outer step s is local when `(s + 1) % local_every == 0`: 2 alternates global, local, ...
            as the reference (even steps global, odd local); 1 is local only; 0 global only. Default 2.

    The backbone takes `{'pos': (B, N, 3), 'cls': (B,)}` and returns part logits (B, num_parts, N), as
    `DistillPointNetSeg` does.
    """

    trains_backbone = True
    task = 'segmentation'   # driven by SegDistiller (engine/tasks/part_segmentation.py), with per-point part labels

    def __init__(self, *, distance: Literal['layerwise_cosine', 'mse', 'cos'] = 'layerwise_cosine',
                 local_every: int = 2):
        if distance not in _DISTANCES:
            raise ValueError(f'PartGradientMatching: distance must be one of {_DISTANCES}, got {distance!r}')
        if isinstance(local_every, bool) or not isinstance(local_every, int) or local_every < 0:
            raise ValueError(f'PartGradientMatching: local_every must be an int >= 0 (0 = global only), got '
                             f'{local_every!r}')
        self.distance, self.local_every = distance, local_every

    def is_local(self, step: int) -> bool:
        return self.local_every > 0 and (step + 1) % self.local_every == 0

    def __call__(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, label: int, *,
                 syn_parts: Tensor | None = None, real_parts: Tensor | None = None,
                 part_ids: Sequence[int] | None = None, local: bool = False) -> Tensor:
        """Scalar loss for category `label`.

        Args:
            syn_pos: (S, N, 3) synthetic clouds, differentiable; syn_parts: (S, N) their global part ids.
            real_pos: (B, N', 3) real clouds; real_parts: (B, N') their part ids.
            part_ids: the category's global part ids (needed for local matching).
            local: local (per-part) instead of global matching.
        """
        if syn_parts is None or real_parts is None:
            raise ValueError('PartGradientMatching needs syn_parts and real_parts (per-point part ids); it is '
                             'driven by the segmentation distiller (engine/tasks/part_segmentation.py), not the '
                             'classification one')
        if syn_parts.shape != syn_pos.shape[:2] or real_parts.shape != real_pos.shape[:2]:
            raise ValueError(f'part ids must be (clouds, points) like the clouds: got {tuple(syn_parts.shape)} for '
                             f'{tuple(syn_pos.shape)} and {tuple(real_parts.shape)} for {tuple(real_pos.shape)}')
        params = [p for p in backbone.parameters() if p.requires_grad]
        real_logits = _logits(backbone, real_pos.detach(), label)
        syn_logits = _logits(backbone, syn_pos, label)
        if not local:
            return self._match(params, real_logits, real_parts, syn_logits, syn_parts)
        if part_ids is None:
            raise ValueError('local matching needs part_ids, the global part ids of the category')
        total = syn_pos.sum() * 0.0    # a zero in the graph: the result is finite even when every part is skipped
        for part in part_ids:
            real_mask, syn_mask = real_parts == part, syn_parts == part
            if not real_mask.any() or not syn_mask.any():
                continue
            total = total + self._match(params, real_logits, torch.where(real_mask, real_parts, _IGNORE),
                                        syn_logits, torch.where(syn_mask, syn_parts, _IGNORE))
        return total

    def match_classes(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, labels: Tensor, *,
                      syn_parts: Tensor, real_parts: Tensor, part_ids: Sequence[Sequence[int]],
                      local: bool = False) -> Tensor:
        """(G,) losses of G categories, every matched term in one grouped pass per side.

        A term is a category (global step) or a (category, part) pair present on both sides (local step: its
        loss keeps only that part's points). With the BatchNorms frozen (`per_sample_separable`), every term is
        a group of copies of its category's clouds through its own copy of the weights (`per_group_gradients`),
        so the terms' gradients come from one pass; each category's loss is the sum of its terms' distances.
        Otherwise, one category after the other. Equal to calling the objective per category.

        Args:
            syn_pos: (G, S, N, 3); syn_parts: (G, S, N). real_pos: (G, B, N', 3); real_parts: (G, B, N').
            labels: (G,) categories; part_ids: each category's global part ids; local: as in `__call__`.
        """
        if not getattr(backbone, 'per_sample_separable', False):
            return torch.stack([self(backbone, syn, real, int(label), syn_parts=s_parts, real_parts=r_parts,
                                     part_ids=parts, local=local)
                                for syn, real, label, s_parts, r_parts, parts
                                in zip(syn_pos, real_pos, labels, syn_parts, real_parts, part_ids)])
        terms, real_targets, syn_targets = [], [], []
        for g in range(len(labels)):
            for part in (part_ids[g] if local else [None]):
                if part is None:
                    real_target, syn_target = real_parts[g], syn_parts[g]
                else:
                    real_mask, syn_mask = real_parts[g] == part, syn_parts[g] == part
                    if not real_mask.any() or not syn_mask.any():   # a part missing on one side adds 0
                        continue
                    real_target = torch.where(real_mask, real_parts[g], _IGNORE)
                    syn_target = torch.where(syn_mask, syn_parts[g], _IGNORE)
                terms.append(g)
                real_targets.append(real_target)
                syn_targets.append(syn_target)
        losses = syn_pos.sum(dim=(1, 2, 3)) * 0.0    # zeros in the graph: finite when every term is skipped
        if not terms:
            return losses
        terms = torch.tensor(terms, device=syn_pos.device)
        real_grads = _term_gradients(backbone, real_pos[terms].detach(), labels[terms], torch.stack(real_targets), False)
        syn_grads = _term_gradients(backbone, syn_pos[terms], labels[terms], torch.stack(syn_targets), True)
        return losses.index_add(0, terms, grouped_gradient_distance(syn_grads, real_grads, self.distance))

    def _match(self, params: list[Tensor], real_logits: Tensor, real_target: Tensor, syn_logits: Tensor,
               syn_target: Tensor) -> Tensor:
        real_loss = F.cross_entropy(real_logits, real_target, ignore_index=_IGNORE)
        real_grads = torch.autograd.grad(real_loss, params, retain_graph=True, allow_unused=True,
                                         materialize_grads=True)
        syn_loss = F.cross_entropy(syn_logits, syn_target, ignore_index=_IGNORE)
        syn_grads = torch.autograd.grad(syn_loss, params, create_graph=True, retain_graph=True, allow_unused=True,
                                        materialize_grads=True)
        return gradient_distance(syn_grads, [g.detach() for g in real_grads], self.distance)


def _logits(backbone: nn.Module, pos: Tensor, label: int) -> Tensor:
    category = torch.full((pos.shape[0],), int(label), dtype=torch.long, device=pos.device)
    return backbone({'pos': pos, 'cls': category})


def _term_gradients(backbone: nn.Module, pos: Tensor, categories: Tensor, targets: Tensor,
                    create_graph: bool) -> list[Tensor]:
    """Per-term gradients of the mean per-point cross-entropy over each term's unignored points, one pass.

    pos: (T, B, N, 3) each term's clouds; categories: (T,); targets: (T, B, N) part ids or -100 (ignored).
    """
    T, B = pos.shape[:2]

    def summed_term_losses(copies: dict[str, Tensor]) -> Tensor:
        logits = backbone.grouped_forward({'pos': pos, 'cls': categories.unsqueeze(1).expand(T, B)}, copies)
        per_point = F.cross_entropy(logits.flatten(0, 1), targets.flatten(0, 1), ignore_index=_IGNORE, reduction='none')
        counts = (targets != _IGNORE).flatten(1).sum(1)
        return (per_point.view(T, -1).sum(1) / counts).sum()
    return per_group_gradients(backbone, summed_term_losses, T, create_graph)
