"""Distribution matching (Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import OBJECTIVES
from .base import Objective


@OBJECTIVES.register_module()
class DistributionMatching(Objective):
    """Squared L2 distance between the class-mean embeddings of real and synthetic clouds (DM, spec §B.3).

    L_c = || mean_i embed(real_i) - mean_j embed(syn_j) ||^2 with `backbone.embed`, a linear-kernel MMD.
    The backbone is fresh and frozen every iteration (`trains_backbone = False`: the engine turns off its
    gradients and skips the inner loop). Departures from the reference code, and why:
      * the embedding is the backbone's pooled global feature (1024-d for DistillPointNet, which has no
        penultimate layer); SADM's DM used PointNet's 256-d penultimate activation;
      * no DSA augmentation (the image augmentations do not carry over to point clouds) and no BatchNorm
        warm-up (DistillPointNet uses InstanceNorm, whose statistics are per cloud).
    """

    trains_backbone = False

    def __init__(self):
        pass

    def __call__(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, label: int) -> Tensor:
        return self.match_classes(backbone, syn_pos.unsqueeze(0), real_pos.unsqueeze(0), torch.tensor([label]))[0]

    def match_classes(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, labels: Tensor) -> Tensor:
        """(G,) losses from one forward over all classes' real clouds and one over their synthetic clouds; the class
        means by index. Classes go one at a time through a backbone whose batches share statistics (BatchNorm)."""
        if len(labels) > 1 and not getattr(backbone, 'per_sample_separable', False):
            return super().match_classes(backbone, syn_pos, real_pos, labels)
        with torch.no_grad():
            real_mean = _embed(backbone, real_pos).mean(dim=1)
        return (real_mean - _embed(backbone, syn_pos).mean(dim=1)).square().sum(-1)


def _embed(backbone: nn.Module, pos: Tensor) -> Tensor:
    """(G, B, N, 3) -> (G, B, D) embeddings, in one forward."""
    return backbone.embed(pos.flatten(0, 1)).view(*pos.shape[:2], -1)
