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
        with torch.no_grad():
            real_mean = backbone.embed(real_pos).mean(dim=0)
        syn_mean = backbone.embed(syn_pos).mean(dim=0)
        return (real_mean - syn_mean).square().sum()
