"""Gradient matching (Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021)."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.pointnet import at_least_fp32
from ..registry import OBJECTIVES
from .base import Objective

_DISTANCES = ('layerwise_cosine', 'mse', 'cos')
_AUTOCASTS = (None, 'real', 'all')


def gradient_distance(syn_grads: Sequence[Tensor], real_grads: Sequence[Tensor],
                      distance: str = 'layerwise_cosine', eps: float = 1e-6) -> Tensor:
    """Distance between two lists of parameter gradients (DC's `match_loss`, DD3D spec §4).

    Args:
        syn_grads, real_grads: the same parameters' gradients, in the same order.
        distance: 'layerwise_cosine' (DC's "ours": every weight tensor reshaped to (out, -1), the sum over
            output rows of 1 - cos; 1-D tensors such as biases contribute 0), 'mse' (sum of squared
            differences over all gradients) or 'cos' (one cosine distance over all gradients).
        eps: added to the product of norms, as in DC.

    Returns:
        Scalar distance.
    """
    return grouped_gradient_distance([g.unsqueeze(0) for g in syn_grads], [g.unsqueeze(0) for g in real_grads],
                                     distance, eps)[0]


def grouped_gradient_distance(syn_grads: Sequence[Tensor], real_grads: Sequence[Tensor],
                              distance: str = 'layerwise_cosine', eps: float = 1e-6) -> Tensor:
    """`gradient_distance` of G groups at once: gradients (G, *shape) in, distances (G,) out."""
    if distance == 'layerwise_cosine':
        total = syn_grads[0].new_zeros(syn_grads[0].shape[0])
        for g_syn, g_real in zip(syn_grads, real_grads):
            if g_syn.dim() < 3:   # a group of 1-D tensors (biases)
                continue
            g_syn, g_real = g_syn.flatten(2), g_real.flatten(2)                     # (G, out, -1)
            dot = (g_syn * g_real).sum(-1)
            total = total + (1 - dot / (g_syn.norm(dim=-1) * g_real.norm(dim=-1) + eps)).sum(-1)
        return total
    flat_syn = torch.cat([g.flatten(1) for g in syn_grads], dim=1)
    flat_real = torch.cat([g.flatten(1) for g in real_grads], dim=1)
    if distance == 'mse':
        return (flat_syn - flat_real).square().sum(-1)
    if distance == 'cos':
        return 1 - (flat_syn * flat_real).sum(-1) / (flat_syn.norm(dim=-1) * flat_real.norm(dim=-1) + eps)
    raise ValueError(f'unknown gradient distance {distance!r}; choose one of {_DISTANCES}')


def per_group_gradients(backbone: nn.Module, summed_losses: Callable[[dict[str, Tensor]], Tensor], groups: int,
                        create_graph: bool) -> list[Tensor]:
    """Each group's gradient from one pass: every trainable parameter of `backbone` enters as `groups` copies
    (autograd leaves, (G, *shape)); `summed_losses(copies)` must run group g through copy g (a per-sample
    separable backbone's `grouped_forward`) and return the sum of the groups' losses, whose gradient w.r.t.
    copy g is then group g's own gradient. Returns them in `backbone.parameters()` order."""
    copies = {name: p.detach().unsqueeze(0).expand(groups, *p.shape).requires_grad_()
              for name, p in backbone.named_parameters() if p.requires_grad}
    return list(torch.autograd.grad(summed_losses(copies), list(copies.values()), create_graph=create_graph,
                                    allow_unused=True, materialize_grads=True))


@OBJECTIVES.register_module()
class GradientMatching(Objective):
    """Match the cross-entropy gradients of a backbone on synthetic and real clouds of one class.

    The synthetic gradient is built with `create_graph=True` so the distance can be back-propagated to
    the synthesizer (a second-order backward). Used by DD3D and GM/DC. With a per-sample separable backbone
    (DistillPointNet) `match_classes` matches every class in one grouped pass (`class_gradients`).

    Args:
        distance: 'layerwise_cosine' (default, DC/DD3D "ours"), 'mse' or 'cos'. See `gradient_distance`.
        autocast: None (default: fp32), 'real' or 'all': run the real clouds' pass ('real'), or both passes
            ('all'), under `torch.autocast(bfloat16)`. The real pass is first order and only gives the target,
            the cheapest place to round. In DistillPointNet the per-point products and the max-point search
            are then rounded while every per-cloud statistic (covariance, variance) stays fp32: in bf16 a
            variance can cancel below zero, and a DD3D run with 'all' did turn NaN before that guard.
            Parameters, their gradients and the distance stay fp32. Worth it only on hardware with bf16 units
            (AVX512-BF16, AMX, GPUs); an AVX2-only CPU emulates bf16 far slower than fp32. Speed and how far
            the gradient moves: docs/results/distill_step.md.
    """

    trains_backbone = True

    def __init__(self, *, distance: Literal['layerwise_cosine', 'mse', 'cos'] = 'layerwise_cosine',
                 autocast: Literal['real', 'all'] | None = None):
        if distance not in _DISTANCES:
            raise ValueError(f'GradientMatching: distance must be one of {_DISTANCES}, got {distance!r}')
        if autocast not in _AUTOCASTS:
            raise ValueError(f'GradientMatching: autocast must be one of {_AUTOCASTS} (null = fp32), got {autocast!r}')
        self.distance, self.autocast = distance, autocast

    def _precision(self, device: torch.device, synthetic: bool) -> AbstractContextManager:
        """The bf16 autocast region of one pass (real or synthetic), enabled as `autocast` says."""
        enabled = self.autocast == 'all' or (self.autocast == 'real' and not synthetic)
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)

    def class_gradients(self, backbone: nn.Module, pos: Tensor, labels: Tensor, synthetic: bool) -> list[Tensor]:
        """Each class's cross-entropy gradient from one pass over all classes' clouds.

        A backbone with its own `class_gradients` (DistillPointNet: an explicit backward) computes them; any
        other per-sample separable one (`grouped_forward`) runs with every trainable parameter as G per-class
        copies (autograd leaves), class g's clouds through copy g, so that the gradient of the summed per-class
        losses w.r.t. copy g is class g's gradient. Either way: what a per-class loop computes, in one pass.

        Args:
            pos: (G, B, N, 3) clouds, B per class; labels: (G,) int64.
            synthetic: build the graph of the gradients (create_graph) so a distance on them reaches `pos`.

        Returns:
            (G, *shape) gradients of the trainable parameters, in `backbone.parameters()` order.
        """
        if hasattr(backbone, 'class_gradients'):
            with torch.set_grad_enabled(synthetic), self._precision(pos.device, synthetic):
                grads = backbone.class_gradients(pos, labels)
            return [g for g, p in zip(grads, backbone.parameters()) if p.requires_grad]
        G, B = pos.shape[:2]

        def summed_class_losses(copies: dict[str, Tensor]) -> Tensor:
            with self._precision(pos.device, synthetic):
                logits = backbone.grouped_forward(pos, copies)                              # (G, B, K)
            # the sum over classes of each class's mean cross-entropy (every class has B clouds)
            return F.cross_entropy(at_least_fp32(logits).flatten(0, 1), labels.repeat_interleave(B), reduction='sum') / B
        return per_group_gradients(backbone, summed_class_losses, G, create_graph=synthetic)

    def match_classes(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, labels: Tensor) -> Tensor:
        """(G,) per-class distances; one grouped pass per side when the backbone is per-sample separable."""
        if not getattr(backbone, 'per_sample_separable', False):
            return super().match_classes(backbone, syn_pos, real_pos, labels)
        real_grads = self.class_gradients(backbone, real_pos.detach(), labels, synthetic=False)
        syn_grads = self.class_gradients(backbone, syn_pos, labels, synthetic=True)
        return grouped_gradient_distance(syn_grads, real_grads, self.distance)

    def __call__(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, label: int) -> Tensor:
        params = [p for p in backbone.parameters() if p.requires_grad]

        def class_grads(pos: Tensor, synthetic: bool) -> tuple[Tensor, ...]:
            """One pass: the cross-entropy gradient of `pos`, all labelled `label`; a graph only for the synthetic."""
            with self._precision(pos.device, synthetic):
                logits = backbone(pos)
            target = torch.full((pos.shape[0],), label, dtype=torch.long, device=pos.device)
            # a parameter may not reach the loss (DistillPointNet's last bias cancels under InstanceNorm): gradient 0
            return torch.autograd.grad(F.cross_entropy(at_least_fp32(logits), target), params, create_graph=synthetic,
                                       allow_unused=True, materialize_grads=True)
        real_grads = class_grads(real_pos, synthetic=False)
        syn_grads = class_grads(syn_pos, synthetic=True)
        return gradient_distance(syn_grads, [g.detach() for g in real_grads], self.distance)
