"""Gradient matching (Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021)."""
from __future__ import annotations

from contextlib import AbstractContextManager
from functools import partial
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

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
    if distance == 'layerwise_cosine':
        total = syn_grads[0].new_zeros(())
        for g_syn, g_real in zip(syn_grads, real_grads):
            if g_syn.dim() < 2:
                continue
            g_syn, g_real = g_syn.reshape(g_syn.shape[0], -1), g_real.reshape(g_real.shape[0], -1)
            dot = (g_syn * g_real).sum(-1)
            total = total + (1 - dot / (g_syn.norm(dim=-1) * g_real.norm(dim=-1) + eps)).sum()
        return total
    flat_syn = torch.cat([g.reshape(-1) for g in syn_grads])
    flat_real = torch.cat([g.reshape(-1) for g in real_grads])
    if distance == 'mse':
        return (flat_syn - flat_real).square().sum()
    if distance == 'cos':
        return 1 - (flat_syn * flat_real).sum() / (flat_syn.norm() * flat_real.norm() + eps)
    raise ValueError(f'unknown gradient distance {distance!r}; choose one of {_DISTANCES}')


@OBJECTIVES.register_module()
class GradientMatching(Objective):
    """Match the cross-entropy gradients of a backbone on synthetic and real clouds of one class.

    The synthetic gradient is built with `create_graph=True` so the distance can be back-propagated to
    the synthesizer (a second-order backward). Used by DD3D and GM/DC.

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

    def match_classes(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, labels: Tensor) -> Tensor:
        """Per-class losses of several classes in one vectorised call (torch.func.vmap over classes).

        Equal to `[self(backbone, syn_pos[k], real_pos[k], labels[k]) for k]` up to float error, but every
        matrix multiply is batched over the classes. Needs a backbone whose forward is per-sample
        separable (no BatchNorm in train mode), such as DistillPointNet.

        Args:
            syn_pos: (K, S, N, 3); real_pos: (K, B, N', 3); labels: (K,) int64.

        Returns:
            (K,) losses, differentiable w.r.t. `syn_pos`.
        """
        params = {name: p.detach() for name, p in backbone.named_parameters() if p.requires_grad}

        def class_loss(weights, pos, label, synthetic):
            with self._precision(pos.device, synthetic):
                logits = functional_call(backbone, weights, (pos,))
            return F.cross_entropy(logits.float(), label.expand(pos.shape[0]))

        def per_class_grad(pos, synthetic):
            return vmap(grad(partial(class_loss, synthetic=synthetic)), in_dims=(None, 0, 0))(params, pos, labels)
        real_grads = per_class_grad(real_pos.detach(), synthetic=False)
        syn_grads = per_class_grad(syn_pos, synthetic=True)
        names = list(params)
        return vmap(lambda g_syn, g_real: gradient_distance([g_syn[n] for n in names], [g_real[n] for n in names],
                                                            self.distance))(syn_grads, real_grads)

    def __call__(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, label: int) -> Tensor:
        params = [p for p in backbone.parameters() if p.requires_grad]

        def class_grads(pos: Tensor, synthetic: bool) -> tuple[Tensor, ...]:
            """One pass: the cross-entropy gradient of `pos`, all labelled `label`; a graph only for the synthetic."""
            with self._precision(pos.device, synthetic):
                logits = backbone(pos)
            target = torch.full((pos.shape[0],), label, dtype=torch.long, device=pos.device)
            # a parameter may not reach the loss (DistillPointNet's last bias cancels under InstanceNorm): gradient 0
            return torch.autograd.grad(F.cross_entropy(logits.float(), target), params, create_graph=synthetic,
                                       allow_unused=True, materialize_grads=True)
        real_grads = class_grads(real_pos, synthetic=False)
        syn_grads = class_grads(syn_pos, synthetic=True)
        return gradient_distance(syn_grads, [g.detach() for g in real_grads], self.distance)
