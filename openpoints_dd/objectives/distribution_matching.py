"""Distribution matching (Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import OBJECTIVES
from .base import Objective
from .model_queue import QUEUE_DEFAULTS, SemiTrainedNetworks


@OBJECTIVES.register_module()
class DistributionMatching(SemiTrainedNetworks, Objective):
    """Squared L2 distance between the class-mean embeddings of real and synthetic clouds (DM, spec §B.3).

    L_c = || mean_i embed(real_i) - mean_j embed(syn_j) ||^2 with `backbone.embed`, a linear-kernel MMD.
    The backbone is fresh and frozen every iteration (`trains_backbone = False`: the engine turns off its
    gradients and skips the inner loop). Departures from the reference code, and why:
      * the embedding is the backbone's pooled global feature (1024-d for DistillPointNet, which has no
        penultimate layer); SADM's DM used PointNet's 256-d penultimate activation;
      * no DSA augmentation (the image augmentations do not carry over to point clouds) and no BatchNorm
        warm-up (DistillPointNet uses InstanceNorm, whose statistics are per cloud).

    Two of IDM's levers (Zhao et al., CVPR 2023), off by default:
      * `queue_size` > 0 embeds through semi-trained networks (`SemiTrainedQueue`) instead of a fresh random one:
        features that tell the classes apart, so matching their means moves the clouds along what a classifier uses;
      * `ce_weight` > 0 adds the synthetic clouds' cross-entropy under that network (IDM's class-aware
        regularisation): a cloud that matches its class's mean feature but sits near another class's is penalised.

    Args:
        queue_size: semi-trained networks kept (0: a fresh random network every iteration, DM as published).
        queue_lifetime: training steps of the longest-lived network before it is replaced. Default 200.
        queue_batch: real clouds per training step of a network. Default 64.
        queue_lr: the networks' Adam learning rate. Default 1e-3.
            The three have no effect without the queue: with queue_size 0 another value than the default is
            refused (`QUEUE_DEFAULTS`).
        ce_weight: weight of the cross-entropy term (per class: the mean over the class's synthetic clouds), a
            finite number >= 0; needs the queue.
    """

    trains_backbone = False

    def __init__(self, *, queue_size: int = 0, queue_lifetime: int = QUEUE_DEFAULTS['queue_lifetime'],
                 queue_batch: int = QUEUE_DEFAULTS['queue_batch'], queue_lr: float = QUEUE_DEFAULTS['queue_lr'],
                 ce_weight: float = 0.0):
        self._init_queue(queue_size, queue_lifetime, queue_batch, queue_lr, ce_weight)

    def backbone_methods(self) -> tuple[str, ...]:
        """`embed`: the pooled feature whose class means are matched; `classify`: the logits of an embedding, for
        the cross-entropy term."""
        return ('embed', 'classify') if self.ce_weight else ('embed',)

    def __call__(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, label: int) -> Tensor:
        return self.match_classes(backbone, syn_pos.unsqueeze(0), real_pos.unsqueeze(0), torch.tensor([label]))[0]

    def match_classes(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, labels: Tensor) -> Tensor:
        """(G,) losses from one forward over all classes' real clouds and one over their synthetic clouds; the class
        means by index. Classes go one at a time through a backbone whose batches share statistics (BatchNorm)."""
        if len(labels) > 1 and not getattr(backbone, 'per_sample_separable', False):
            return super().match_classes(backbone, syn_pos, real_pos, labels)
        with torch.no_grad():
            real_mean = _embed(backbone, real_pos).mean(dim=1)
        syn_embedding = _embed(backbone, syn_pos)
        losses = (real_mean - syn_embedding.mean(dim=1)).square().sum(-1)
        if self.ce_weight:   # the logits of the embeddings the mean took, not a second forward
            losses = losses + self.cross_entropy_term(backbone, syn_embedding, labels)
        return losses


def _embed(backbone: nn.Module, pos: Tensor) -> Tensor:
    """(G, B, N, 3) -> (G, B, D) embeddings, in one forward."""
    return backbone.embed(pos.flatten(0, 1)).view(*pos.shape[:2], -1)
