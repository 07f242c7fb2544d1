"""M3D, 3DDP's distribution matching: sorted pre-pool features, multi-scale RBF MMD, FPS partitions.

3DDP (ICLR 2026; research/packing_and_soft_labels.md, document 1, §1.4) matches a class's synthetic clouds
(P-point anchors and morphs, `MorphedClouds`) with its real 1024-point clouds cut into S sub-clouds of P points by
furthest point sampling: the first partition is the most uniform, later ones less. Every cloud is described by
phi(x) = the per-channel sorted |features| of a fresh frozen network's last point-wise map (3DDP; with `absolute:
false`, the sorted signed features; with `top_points`, only each channel's largest), so point order does not matter;
partition s of the real batch is compared with all synthetic clouds by a multi-scale RBF MMD, and the MMDs are
weighted by how close each partition's uniformity is to the whole clouds'.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..compat.point_ops import furthest_point_sample
from ..registry import OBJECTIVES
from ..utils.sorting import sort_descending
from .base import Objective
from .model_queue import QUEUE_DEFAULTS, SemiTrainedNetworks, checked_count, checked_number
from .sadm import mmd_of_distances, pairwise_squared_distances, rbf_mmd


def fps_partitions(clouds: Tensor, parts: int, points_per_part: int) -> Tensor:
    """Cut each cloud into `parts` sub-clouds of `points_per_part` points by repeated furthest point sampling.

    Partition 1 is the FPS order's first P points of the whole cloud; partition 2 the first P of the remaining
    points in FPS order (started at the first remaining point), and so on; leftover points are dropped (3DDP §1.4).

    Args:
        clouds: (B, N, 3) with N >= parts · points_per_part.

    Returns:
        (parts, B, P, 3), partition-major.
    """
    B, N, _ = clouds.shape
    if N < parts * points_per_part:
        raise ValueError(f'{parts} partitions of {points_per_part} points need clouds of at least '
                         f'{parts * points_per_part} points, got {N}. Raise distill.num_points.')
    remaining = torch.arange(N, device=clouds.device).expand(B, N)
    out = []
    for _ in range(parts):
        pool = clouds.gather(1, remaining.unsqueeze(-1).expand(-1, -1, 3))
        picked = furthest_point_sample(pool.contiguous(), points_per_part).long()          # (B, P) into `pool`
        out.append(pool.gather(1, picked.unsqueeze(-1).expand(-1, -1, 3)))
        keep = torch.ones_like(remaining, dtype=torch.bool).scatter_(1, picked, False)
        remaining = remaining[keep].view(B, -1)
    return torch.stack(out)


def uniformity(clouds: Tensor, neighbours: int = 16) -> Tensor:
    """(B,) mean over points of std / mean of the distances to the `neighbours` nearest points (itself included).

    Low for evenly spread points. The unbiased std, as 3DDP's `pc_ops.py`.
    """
    distances = torch.cdist(clouds, clouds).topk(neighbours, dim=-1, largest=False).values      # (B, N, k)
    return (distances.std(dim=-1) / (distances.mean(dim=-1) + 1e-8)).mean(dim=-1)


def point_map(backbone: nn.Module, clouds: Tensor, every_layer: bool = False) -> Tensor:
    """(B, C, N) the backbone's last point-wise map (or, `every_layer`, all its point-wise maps concatenated over
    the channels), channel-major: `point_features(clouds, channels_first=True)`."""
    # passed only when asked, so a backbone whose point_features gives the last map alone still serves layers: last
    keywords = {'every_layer': True} if every_layer else {}
    return backbone.point_features(clouds, channels_first=True, **keywords)


def sorted_channels(feature_map: Tensor, absolute: bool = True, largest: int | None = None) -> Tensor:
    """(B, C·N) each channel of a (B, C, N) map sorted over the points: its absolute values (3DDP), or with
    `absolute` False its signed values (the channel's whole quantile function); flattened channel-major (the MMD
    does not depend on the order of the dimensions; sorting contiguous rows is faster). With `largest` = K, only
    each channel's K largest values: (B, C·K)."""
    return sort_descending(feature_map.abs() if absolute else feature_map, largest).flatten(1)


def sorted_features(backbone: nn.Module, clouds: Tensor, every_layer: bool = False, absolute: bool = True,
                    largest: int | None = None) -> Tensor:
    """(B, C·N) M3D's descriptor of each cloud (C·K with `largest` = K): `sorted_channels` of its `point_map`."""
    return sorted_channels(point_map(backbone, clouds, every_layer), absolute, largest)


def partition_mmds(real: Tensor, syn: Tensor, multipliers: Sequence[float]) -> Tensor:
    """(G, S) `rbf_mmd(real[s, g], syn[g])` for every partition s and class g, from one Gram matrix per class.

    The synthetic clouds are the same in every partition's MMD: their distances are computed once with all the
    partitions' instead of once per partition (at 10 clouds per class, 80 synthetic clouds against 8 real ones,
    they are most of the work). Each partition's MMD then reads its real clouds' and the synthetic clouds' block.

    Args:
        real: (S, G, B, D) the partitions' feature vectors; syn: (G, M, D).
    """
    S, G, B, _ = real.shape
    if S == 1:
        return rbf_mmd(real[0], syn, multipliers).unsqueeze(1)
    squared = pairwise_squared_distances(torch.cat([real.transpose(0, 1).flatten(1, 2), syn], dim=1))
    synthetic = torch.arange(S * B, S * B + syn.shape[1], device=syn.device)
    mmds = []
    for s in range(S):
        index = torch.cat([torch.arange(s * B, (s + 1) * B, device=syn.device), synthetic])
        mmds.append(mmd_of_distances(squared[:, index][:, :, index], B, multipliers))
    return torch.stack(mmds, dim=1)


@OBJECTIVES.register_module()
class M3D(SemiTrainedNetworks, Objective):
    """3DDP's objective: Σ_s w_s · MMD²(real partition s, synthetic clouds) on sorted |pre-pool features| (3DDP) or,
    with `absolute: false`, sorted signed ones.

    The backbone is frozen (`trains_backbone = False`) and fresh every iteration, or, with `queue_size` > 0, one of
    IDM's semi-trained networks (`SemiTrainedNetworks`, as distribution matching takes them): features that tell
    the classes apart instead of random ones. DistillPointNet's last point-wise map (InstanceNorm, no ReLU) stands
    in for 3DDP's BatchNorm PointNet conv3 output, whose statistics 3DDP warms on real clouds; InstanceNorm needs
    no warm-up. w_s = weight · p_s / Σ_t p_t with
    p_s = exp(-sharpness · (ū_s - ū)²): ū_s the mean uniformity of real partition s, ū that of the whole clouds.

    Synthetic clouds of more than P points (a generator's) are reduced to their first P in furthest-point order.
    Sizes the matching cannot take (real clouds of fewer than S·P points, synthetic ones of fewer than P) are refused
    by `check_cloud_sizes` when the engine is built, before a coreset start's selection network trains.

    Args:
        partitions: S, the real sub-clouds per cloud. Default 4.
        points_per_partition: P; real clouds need at least S·P points (distill.num_points). Default 255.
        weight: the weights' sum (3DDP: 0.8), a finite number > 0: it multiplies every partition's MMD, so 0 would
            match nothing and a negative sum would maximise the MMD. Default 0.8.
        scale: the loss factor (3DDP: 0.1), a finite number > 0 for the same reason. Default 0.1.
        sharpness: of the uniformity weighting (3DDP: 1000), a finite number >= 0 (0: every partition weighted
            alike; a negative one would favour the partitions least like the whole clouds). Default 1000.
        neighbours: of the uniformity score. Default 16.
        bandwidth_multipliers: of the RBF MMD (3DDP: 2^-2 .. 2^2), finite and > 0. Default [0.25, 0.5, 1, 2, 4].
        layers: 'last' (3DDP: the last point-wise map) or 'every' (every point-wise map, concatenated: the
            hidden layers' sorted values add the standardised distribution of the points along random directions
            (InstanceNorm divides out each direction's spread) and of low-order features, which the last map's 1024
            composite features constrain only indirectly). Default 'last'.
        queue_size, queue_lifetime, queue_batch, queue_lr: the semi-trained networks, as `DistributionMatching`'s
            (0: a fresh random network every iteration, as 3DDP; then the other three must keep their defaults).
        absolute: True (3DDP) sorts each channel's absolute values; False its signed values, the channel's whole
            distribution over the points: the absolute value makes a channel and its negation the same
            description, and drops which side of its mean a cloud's extreme points lie on. Default True.
        top_points: K, or null (3DDP): describe each channel by its K largest values only, the upper tail of its
            sorted values. A PointNet classifier reads each channel of its last map through the max over the
            points, so what it sees of a cloud is that tail; over all N values the MMD weighs each of the N ranks
            alike, the bulk that the max-pool never reads with the top. At most points_per_partition.
            Default null (every value).
        ce_weight: IDM's cross-entropy term (`SemiTrainedNetworks`), as `DistributionMatching`'s: each class's mean
            cross-entropy of its synthetic clouds under the semi-trained network, their logits from the max-pool of
            the map the descriptor sorts (DistillPointNet's embedding), so no second pass. Needs the queue and
            layers: last. Default 0.
    """

    trains_backbone = False

    def __init__(self, *, partitions: int = 4, points_per_partition: int = 255, weight: float = 0.8,
                 scale: float = 0.1, sharpness: float = 1000.0, neighbours: int = 16,
                 bandwidth_multipliers: list[float] | None = None, queue_size: int = 0,
                 queue_lifetime: int = QUEUE_DEFAULTS['queue_lifetime'],
                 queue_batch: int = QUEUE_DEFAULTS['queue_batch'], queue_lr: float = QUEUE_DEFAULTS['queue_lr'],
                 layers: str = 'last', absolute: bool = True, ce_weight: float = 0.0, top_points: int | None = None):
        if int(partitions) < 1 or int(points_per_partition) < 2:
            raise ValueError(f'M3D: partitions must be >= 1 and points_per_partition >= 2, got {partitions}, '
                             f'{points_per_partition}')
        if int(neighbours) < 2 or int(neighbours) > int(points_per_partition):
            raise ValueError(f'M3D: neighbours must be in [2, points_per_partition], got {neighbours}')
        multipliers = [0.25, 0.5, 1.0, 2.0, 4.0] if bandwidth_multipliers is None else [float(m) for m in bandwidth_multipliers]
        if not multipliers or not all(math.isfinite(m) and m > 0 for m in multipliers):
            raise ValueError(f'M3D: bandwidth_multipliers must be finite positive numbers, '
                             f'got {bandwidth_multipliers!r}')
        # weight and scale multiply the loss: a sign flip would make the run maximise the MMD without an error
        weight = checked_number('M3D', 'weight', weight, positive=True)
        scale = checked_number('M3D', 'scale', scale, positive=True)
        sharpness = checked_number('M3D', 'sharpness', sharpness, positive=False)
        if layers not in ('last', 'every'):
            raise ValueError(f"M3D: layers must be 'last' or 'every', got {layers!r}")
        if not isinstance(absolute, bool):
            raise ValueError(f'M3D: absolute must be true or false, got {absolute!r}')
        if top_points is not None:
            top_points = checked_count('M3D', 'top_points', top_points, 1)
            if top_points > int(points_per_partition):
                raise ValueError(f'M3D: top_points must be at most points_per_partition ({points_per_partition}), '
                                 f'the values each channel has; got {top_points}')
        if ce_weight and layers == 'every':
            raise ValueError("M3D: ce_weight takes the logits from the last point-wise map's max-pool; with layers: "
                             "every the map the descriptor sorts holds every layer's channels. Use layers: last")
        self.every_layer, self.absolute, self.top_points = layers == 'every', absolute, top_points
        self.partitions, self.points_per_partition = int(partitions), int(points_per_partition)
        self.weight, self.scale, self.sharpness = weight, scale, sharpness
        self.neighbours, self.bandwidth_multipliers = int(neighbours), multipliers
        self._init_queue(queue_size, queue_lifetime, queue_batch, queue_lr, ce_weight)

    def check_cloud_sizes(self, real_points: int, synthetic_points: int) -> None:
        """Refuse real clouds (`distill.num_points`) of fewer than partitions · points_per_partition points and
        synthetic training clouds of fewer than points_per_partition, naming the keys to change."""
        needed = self.partitions * self.points_per_partition
        if real_points < needed:
            raise ValueError(f'M3D: objective.partitions {self.partitions} x objective.points_per_partition '
                             f'{self.points_per_partition} need real clouds of at least {needed} points; '
                             f'distill.num_points is {real_points}. Raise distill.num_points or lower those.')
        if synthetic_points < self.points_per_partition:
            raise ValueError(f'M3D: distill.synthesizer makes training clouds of {synthetic_points} points, fewer '
                             f'than objective.points_per_partition ({self.points_per_partition}), the points of the '
                             f"real partitions they are compared with. Raise the synthesizer's points per cloud "
                             f'(MorphedClouds: synthesizer.points) or lower objective.points_per_partition.')

    def backbone_methods(self) -> tuple[str, ...]:
        """`point_features`: the last point-wise map, before max-pooling; `classify`: the logits of its max-pool,
        for the cross-entropy term."""
        return ('point_features', 'classify') if self.ce_weight else ('point_features',)

    def backbone_keywords(self) -> dict[str, tuple[str, ...]]:
        # the map as (clouds, channels, points), the layout it sorts in; every point-wise map with layers: every
        return {'point_features': ('channels_first', 'every_layer') if self.every_layer else ('channels_first',)}

    def partition_weights(self, real_pos: Tensor, partitions: Tensor) -> Tensor:
        """(S,) w_s from the whole real clouds (B, N, 3) and their partitions (S, B, P, 3); they sum to `weight`."""
        if self.partitions == 1:   # the one weight is `weight` whatever the uniformity: skip its (B, N, N) distances
            return partitions.new_full((1,), self.weight)
        whole = uniformity(real_pos, self.neighbours).mean()
        per_partition = uniformity(partitions.flatten(0, 1), self.neighbours).view(self.partitions, -1).mean(dim=1)
        closeness = torch.exp(-self.sharpness * (per_partition - whole).square())
        return self.weight * closeness / closeness.sum()

    def __call__(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, label: int) -> Tensor:
        return self.match_classes(backbone, syn_pos.unsqueeze(0), real_pos.unsqueeze(0), torch.tensor([label]))[0]

    def match_classes(self, backbone: nn.Module, syn_pos: Tensor, real_pos: Tensor, labels: Tensor) -> Tensor:
        """(G,) losses; every class's real partitions and synthetic clouds through the network in two forwards
        (one class at a time for a backbone whose batches share statistics)."""
        if len(labels) > 1 and not getattr(backbone, 'per_sample_separable', False):
            return super().match_classes(backbone, syn_pos, real_pos, labels)
        G, B = real_pos.shape[:2]
        S = syn_pos.shape[1]
        if syn_pos.shape[2] > self.points_per_partition:   # a generator's clouds: their most uniform P points
            syn_pos = fps_partitions(syn_pos.flatten(0, 1), 1, self.points_per_partition)[0].view(G, S, -1, 3)
        with torch.no_grad():
            if self.partitions == 1 and real_pos.shape[2] == self.points_per_partition:
                # one partition of every point is the cloud itself: the features are sorted and the uniformity is
                # a mean over points, so the order furthest point sampling would give does not matter
                partitions = real_pos.flatten(0, 1).unsqueeze(0)
            else:
                partitions = fps_partitions(real_pos.flatten(0, 1), self.partitions, self.points_per_partition)
            partitions = partitions.view(self.partitions, G, B, self.points_per_partition, 3)
            weights = torch.stack([self.partition_weights(real_pos[g], partitions[:, g]) for g in range(G)])  # (G, S)
            real = sorted_features(backbone, partitions.flatten(0, 2), self.every_layer, self.absolute,
                                   self.top_points)
            real = real.view(self.partitions, G, B, -1)
        syn_map = point_map(backbone, syn_pos.flatten(0, 1), self.every_layer)
        syn = sorted_channels(syn_map, self.absolute, self.top_points).view(G, S, -1)
        losses = self.scale * (weights * partition_mmds(real, syn, self.bandwidth_multipliers)).sum(dim=1)
        if self.ce_weight:   # the max over the points of the last map is the network's pooled embedding
            losses = losses + self.cross_entropy_term(backbone, syn_map.amax(dim=-1).view(G, S, -1), labels)
        return losses
