"""The distillation PointNet of DD3D (spec §6.1) and its part-segmentation sibling (spec §6.2).

Both run their per-point layers as matrix multiplies on a points-last (B, N, C) layout: on CPU this is
markedly faster than the equivalent 1×1 Conv1d on (B, C, N) (see benchmarks/bm_models.py, which times
both). `pointnet_conv1d_forward` is the Conv1d twin with the same parameters, kept for tests and timing.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openpoints.loss import build_criterion_from_cfg
from openpoints.models.build import MODELS


def centred_moments(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-cloud mean (B, 1, C), centred points (B, N, C) and covariance (B, C, C) of a (B, N, C) map."""
    mean = h.mean(dim=1, keepdim=True)
    centred = h - mean
    return mean, centred, torch.matmul(centred.transpose(1, 2), centred) / h.shape[1]


def projected_variance(weight: Tensor, covariance: Tensor) -> Tensor:
    """(B, C_out) variance over the points of h @ weight.T, from h's covariance (B, C_in, C_in).

    var[b, o] = sum_cd w[o, c] w[o, d] cov[b, c, d]. From B = C_in clouds on, as one plain (B, C_in²) x (C_in², C_out)
    matrix multiply against the weight's per-channel outer products (C_out·C_in² floats, whatever B): this op
    ran 2x (first order) to 3.5x (second order) faster so at 256 clouds. Fewer clouds take W Cov W^T row by row
    (B·C_out·C_in), cheaper there: the outer products made a 32-cloud double backward ~40 % slower.
    """
    B, C_in, _ = covariance.shape
    if B < C_in:
        # einsum over the shared (C_out, C_in) weight runs as a batched matmul: ~3x faster than mul + sum here
        return torch.einsum('boc,oc->bo', torch.matmul(weight, covariance), weight)
    outer = (weight.unsqueeze(2) * weight.unsqueeze(1)).reshape(weight.shape[0], C_in * C_in)
    return torch.matmul(covariance.reshape(B, C_in * C_in), outer.t())


def fp32_statistics(h: Tensor) -> torch.autocast:
    """Autocast off for a layer's per-cloud statistics, so that under a bf16 autocast they stay fp32.

    A variance is a difference (E[h h^T] - mean mean^T) or a quadratic form w^T Cov w whose terms cancel: with
    bf16's 8-bit mantissa it can come out negative and rsqrt makes it NaN (observed: DD3D at 1 cloud per class,
    16 iterations into a 30-minute run). Only the per-point products and the max-point search, the bulk of
    the work, are rounded; everything inside this region reads its input as at least fp32 (`at_least_fp32`).
    """
    return torch.autocast(h.device.type, enabled=False)


def at_least_fp32(h: Tensor) -> Tensor:
    """h as fp32 if it is a reduced-precision (autocast) output; fp32 and fp64 stay as they are."""
    return h.to(torch.promote_types(h.dtype, torch.float32))


def instance_norm_linear(h: Tensor, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """InstanceNorm (no affine) over the points of h @ weight.T + bias, as one batched matrix multiply.

    Per cloud, IN(W h + b) = W (h - mean h) / sqrt(diag(W Cov(h) W^T) + eps): the statistics come from the
    small (C_in, C_in) covariance and the scale folds into per-cloud weights, so the (B, N, C_out) map is
    written once by the matmul instead of being re-read by var_mean, sub and mul (and again, twice over, in
    backward and double backward): on CPU those memory-bound passes cost more than the matmul itself.
    The bias cancels; it stays in the graph with gradient exactly 0, as in the plain layer. Under a bf16
    autocast the statistics stay fp32 (`fp32_statistics`) and only the per-point product is rounded.
    """
    with fp32_statistics(h):
        _, centred, covariance = centred_moments(at_least_fp32(h))
        scale = torch.rsqrt(projected_variance(weight, covariance) + eps)               # (B, C_out)
        folded = weight * scale.unsqueeze(-1)                                            # (B, C_out, C_in)
        if bias is not None:
            folded = folded + 0 * bias.unsqueeze(-1)
    return torch.matmul(centred, folded.transpose(1, 2))


def _input_points(data: Tensor | Mapping[str, Tensor], in_channels: int) -> Tensor:
    """(B, N, C) per-point input from a tensor or an openpoints batch dict (`pos` (B,N,3), `x` (B,C,N))."""
    if torch.is_tensor(data):
        points = data
    elif in_channels == 3 and 'pos' in data:
        points = data['pos']
    else:
        points = data['x'].transpose(1, 2)
    if points.dim() != 3 or points.shape[-1] < in_channels:
        raise ValueError(f'expected points (B, N, >={in_channels}), got {tuple(points.shape)}. '
                         f'Did you pass features in (B, C, N)?')
    return points[..., :in_channels]


def _build_criterion(criterion_args: Mapping[str, Any] | None) -> nn.Module:
    if criterion_args is None:
        return nn.CrossEntropyLoss()
    return build_criterion_from_cfg(dict(criterion_args))


@MODELS.register_module()
class DistillPointNet(nn.Module):
    """Per-point linear 64/128/1024 with InstanceNorm (no affine), ReLU on the first two, max-pool, linear head.

    DD3D's distillation and evaluation network (`networks.PointNet` of the reference code). It has no
    T-Nets, no dropout and no multi-layer head; InstanceNorm right after the first linear layer makes it
    invariant to translation and positive isotropic scaling of its input.

    Args:
        num_classes: K, the head's output size. Default 40.
        in_channels: input channels per point (3 = xyz). Default 3.
        widths: per-point layer widths. Default (64, 128, 1024).
        eps: InstanceNorm epsilon. Default 1e-5 (torch's).
        criterion_args: openpoints criterion cfg for `get_logits_loss`; default plain cross-entropy.
        argmax_dtype: 'float32' (default, exact) or 'bfloat16': the dtype of the gradient-free matrix
            multiply that finds each channel's max point. bf16 is several times faster on CPUs with AMX
            (and on GPUs), but near-ties may then pick a point whose value is within bf16 rounding of the max.
            A CPU without bf16 units (AVX2 only) emulates it some 50x slower than fp32: keep float32 there.
    """

    def __init__(self, *, num_classes: int = 40, in_channels: int = 3, widths: Sequence[int] = (64, 128, 1024),
                 eps: float = 1e-5, criterion_args: Mapping[str, Any] | None = None, argmax_dtype: str = 'float32'):
        super().__init__()
        if argmax_dtype not in ('float32', 'bfloat16'):
            raise ValueError(f"DistillPointNet: argmax_dtype must be 'float32' or 'bfloat16', got {argmax_dtype!r}")
        channels = [in_channels, *widths]
        self.in_channels, self.eps, self.argmax_dtype = in_channels, eps, getattr(torch, argmax_dtype)
        self.layers = nn.ModuleList(nn.Linear(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.head = nn.Linear(channels[-1], num_classes)
        self.criterion = _build_criterion(criterion_args)

    def point_features(self, points: Tensor) -> Tensor:
        """(B, N, C_in) -> (B, N, 1024): the last per-point map, normalised, before the max-pool (no ReLU)."""
        h = points
        for i, layer in enumerate(self.layers):
            h = instance_norm_linear(h, layer.weight, layer.bias, self.eps)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return h

    def embed(self, data: Tensor | Mapping[str, Tensor]) -> Tensor:
        """(B, 1024) max-pooled global feature.

        Equal to `point_features(points).amax(1)`, but the last per-point map is never kept for autograd:
        InstanceNorm is increasing per channel, so max_n IN(h3) = (max_n h3 - mean h3) / sqrt(var h3 + eps),
        where mean and variance of h3 = W3 h2 follow from the mean and covariance of h2, and max_n h3 needs
        h2 only at the argmax point of each channel (found without gradient). Forward, backward and
        double backward then cost O(N·C2²) instead of O(N·C2·C3) memory-bound work.
        """
        h = _input_points(data, self.in_channels)
        *hidden, last = self.layers
        for layer in hidden:
            h = F.relu(instance_norm_linear(h, layer.weight, layer.bias, self.eps))
        if not hidden:   # raw coordinates: centre them (exact under InstanceNorm), see pooled_instance_norm_linear
            h = h - h.mean(dim=1, keepdim=True)
        return pooled_instance_norm_linear(h, last.weight, last.bias, self.eps, self.argmax_dtype)

    def forward(self, data: Tensor | Mapping[str, Tensor]) -> Tensor:
        """Logits (B, K) from points (B, N, 3) or an openpoints batch dict."""
        return self.head(self.embed(data))

    def get_logits_loss(self, data: Mapping[str, Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.forward(data)
        return logits, self.criterion(logits, target.long())

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, widths={[l.out_features for l in self.layers]}, eps={self.eps}'


def pooled_instance_norm_linear(h: Tensor, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-5,
                                argmax_dtype: torch.dtype = torch.float32) -> Tensor:
    """max over points of InstanceNorm(h @ weight.T + bias), without the (B, N, C_out) map in the graph.

    The bias cancels under InstanceNorm; it is kept in the graph (its gradient is exactly 0) so that
    `torch.autograd.grad` over all parameters works as with the plain layer.

    Args:
        h: (B, N, C_in) per-point features with values of order 1 around the origin (a ReLU of normalised features,
            or centred coordinates): the covariance is taken as E[h h^T] - mean mean^T.
        weight: (C_out, C_in) linear weight; bias: (C_out,) or None.
        argmax_dtype: dtype of the gradient-free search for each channel's max point (see DistillPointNet).

    Returns:
        (B, C_out) pooled, normalised features; differentiable (twice) w.r.t. `h`, `weight` and `bias`.
        Under a bf16 autocast only the max-point search is rounded (`fp32_statistics`).
    """
    B, N, C_in = h.shape
    argmax = max_point_search(h, weight, argmax_dtype)                                 # (B, C_out)
    with fp32_statistics(h):
        h = at_least_fp32(h)
        # E[h h^T] - mean mean^T: no centred (B, N, C_in) copy to write and back-propagate through; for h of order 1
        # around the origin the subtraction loses no significant digits
        mean = h.mean(dim=1, keepdim=True)
        covariance = torch.matmul(h.transpose(1, 2), h) / N - mean.transpose(1, 2) * mean
        variance = projected_variance(weight, covariance)                                # (B, C_out)
        # the rows at the max points as one index_select over all clouds' points: ~1.5x faster than gather with
        # an expanded (B, C_out, C_in) index, forward and backward
        rows = (argmax + torch.arange(B, device=h.device).unsqueeze(1) * N).reshape(-1)
        at_max = h.reshape(B * N, C_in).index_select(0, rows).view(B, -1, C_in)        # (B, C_out, C_in)
        max_value, mean_value = (at_max * weight).sum(-1), torch.matmul(mean.squeeze(1), weight.t())
        if bias is not None:
            max_value, mean_value = max_value + bias, mean_value + bias
        return (max_value - mean_value) * torch.rsqrt(variance + eps)


@torch.no_grad()
def max_point_search(h: Tensor, weight: Tensor, dtype: torch.dtype = torch.float32, chunk_rows: int = 4096) -> Tensor:
    """(B, C_out) index of the point where each channel of h @ weight.T is largest (the first one on ties).

    Run a few clouds at a time (about `chunk_rows` points): each (chunk, C_out) product then stays in cache
    and no (B, N, C_out) map is ever allocated, which on this CPU halves the time of the search (a fresh
    multi-hundred-MB output is written once through page faults and then read back from memory). On a GPU the
    whole batch goes in one product: there, fewer and larger kernels are what is fast.
    """
    B, N, _ = h.shape
    weight_t = weight.detach().to(dtype).t()
    clouds = B if h.is_cuda else max(1, chunk_rows // N)
    return torch.cat([first_argmax_over_points(torch.matmul(h[i:i + clouds].detach().to(dtype), weight_t))
                      for i in range(0, B, clouds)])


def first_argmax_over_points(values: Tensor, block: int = 32) -> Tensor:
    """`values.argmax(dim=1)` for a (B, N, C) map, in two levels: the same (first) index, 2-6x faster on CPU.

    Torch's argmax is a scalar loop here (about 6x slower than `amax` over the last dim and slower still over
    dim 1), while `amax` over blocks of points vectorises over the channels. So: the max of each block of
    `block` points, the first block that holds the overall max (argmax over N / block entries only), then the
    first point inside that block. The first block reaching the max holds the first point reaching it, so
    ties resolve exactly as `argmax` does. N not divisible by `block` falls back to plain argmax.
    """
    B, N, C = values.shape
    if N % block or N == block:
        return values.argmax(dim=1)
    blocks = values.view(B, N // block, block, C)
    block_index = blocks.amax(dim=2).argmax(dim=1, keepdim=True)                  # (B, 1, C)
    winner = blocks.gather(1, block_index.unsqueeze(2).expand(B, 1, block, C)).squeeze(1)  # (B, block, C)
    return block_index.squeeze(1) * block + winner.argmax(dim=1)


def pointnet_conv1d_forward(model: DistillPointNet, points: Tensor) -> Tensor:
    """The same network run as Conv1d(kernel 1) + InstanceNorm1d on (B, C, N): the reference layout."""
    h = points.transpose(1, 2)
    for i, layer in enumerate(model.layers):
        h = F.instance_norm(F.conv1d(h, layer.weight.unsqueeze(-1), layer.bias), eps=model.eps)
        if i < len(model.layers) - 1:
            h = F.relu(h)
    return model.head(h.amax(dim=2))


@MODELS.register_module()
class DistillPointNetSeg(nn.Module):
    """DD3D's part-segmentation PointNet (spec §6.2).

    Per-point linear 64/128/1024 with BatchNorm (ReLU on the first two); the 1024-d max-pooled global
    feature is concatenated with a one-hot shape category and with the 64- and 128-d per-point features,
    and one linear layer maps the 1024 + num_shape_classes + 192 channels to part logits.

    Args:
        num_classes: number of part labels over all categories. Default 50 (ShapeNet-part).
        num_shape_classes: number of object categories (one-hot input). Default 16.
        in_channels: input channels per point. Default 3.
        widths: per-point widths. Default (64, 128, 1024).
        criterion_args: openpoints criterion cfg; default plain cross-entropy.

    Input: a dict with `pos` (B, N, 3) (or `x` (B, C, N)) and `cls` (B,) or (B, 1) category ids.
    Output: part logits (B, num_classes, N), openpoints' segmentation convention.
    """

    def __init__(self, *, num_classes: int = 50, num_shape_classes: int = 16, in_channels: int = 3,
                 widths: Sequence[int] = (64, 128, 1024), criterion_args: Mapping[str, Any] | None = None):
        super().__init__()
        channels = [in_channels, *widths]
        self.in_channels, self.num_shape_classes = in_channels, num_shape_classes
        self.layers = nn.ModuleList(nn.Linear(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(c) for c in widths)
        self.head = nn.Linear(widths[-1] + num_shape_classes + sum(widths[:-1]), num_classes)
        self.criterion = _build_criterion(criterion_args)

    def forward(self, data: Mapping[str, Tensor]) -> Tensor:
        points = _input_points(data, self.in_channels)
        B, N, _ = points.shape
        h, skips = points, []
        for i, (layer, norm) in enumerate(zip(self.layers, self.norms)):
            h = norm(layer(h).reshape(B * N, -1)).reshape(B, N, -1)
            if i < len(self.layers) - 1:
                h = F.relu(h)
                skips.append(h)
        category = F.one_hot(data['cls'].reshape(B).long(), self.num_shape_classes).to(h.dtype)
        global_feature = torch.cat([h.amax(dim=1), category], dim=-1).unsqueeze(1).expand(B, N, -1)
        return self.head(torch.cat([global_feature, *skips], dim=-1)).transpose(1, 2)

    def get_logits_loss(self, data: Mapping[str, Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.forward(data)
        return logits, self.criterion(logits, target.long())
