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

from ..utils.gram import Gram
from .class_gradients import pointnet_class_gradients, scattered_rows, weighted_rows


def centred_moments(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-cloud mean (..., B, 1, C), centred points (..., B, N, C) and covariance (..., B, C, C) of a map."""
    mean = h.mean(dim=-2, keepdim=True)
    centred = h - mean
    return mean, centred, Gram.apply(centred, False) / h.shape[-2]


def projected_variance(weight: Tensor, covariance: Tensor) -> Tensor:
    """(..., B, C_out) variance over the points of h @ weight.T, from h's covariance (..., B, C_in, C_in).

    var[b, o] = sum_cd w[o, c] w[o, d] cov[b, c, d]. With one shared (C_out, C_in) weight and from B = C_in
    clouds on, as one plain (B, C_in²) x (C_in², C_out) matrix multiply against the weight's per-channel outer
    products (C_out·C_in² floats, whatever B): this op ran 2x (first order) to 3.5x (second order) faster so at
    256 clouds. Fewer clouds take W Cov W^T row by row (B·C_out·C_in), cheaper there: the outer products made a
    32-cloud double backward ~40 % slower. Per-group weights (G, 1, C_out, C_in) for covariances (G, B, C_in,
    C_in) go row by row too: G sets of outer products would not fit in memory.
    """
    if weight.dim() > 2:
        return torch.matmul(weight, covariance).mul(weight).sum(-1)
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


def instance_norm_linear(h: Tensor, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-5,
                         channels_first: bool = False) -> Tensor:
    """InstanceNorm (no affine) over the points of h @ weight.T + bias, as one batched matrix multiply.

    Per cloud, IN(W h + b) = W (h - mean h) / sqrt(diag(W Cov(h) W^T) + eps): the statistics come from the
    small (C_in, C_in) covariance and the scale folds into per-cloud weights, so the (B, N, C_out) map is
    written once by the matmul instead of being re-read by var_mean, sub and mul (and again, twice over, in
    backward and double backward): on CPU those memory-bound passes cost more than the matmul itself.
    The bias cancels; it stays in the graph with gradient exactly 0, as in the plain layer. Under a bf16
    autocast the statistics stay fp32 (`fp32_statistics`) and only the per-point product is rounded.

    Args:
        h: (B, N, C_in), or (G, B, N, C_in) for G groups of clouds.
        weight: (C_out, C_in), or (G, 1, C_out, C_in): one weight per group (per-class copies, whose gradients
            are then the per-class gradients). bias: (C_out,), or (G, 1, C_out), or None.
        channels_first: return (..., C_out, N), written in that layout by the matmul (no transposed copy).
    """
    with fp32_statistics(h):
        _, centred, covariance = centred_moments(at_least_fp32(h))
        scale = torch.rsqrt(projected_variance(weight, covariance) + eps)               # (..., B, C_out)
        folded = weight * scale.unsqueeze(-1)                                            # (..., B, C_out, C_in)
        if bias is not None:
            folded = folded + 0 * bias.unsqueeze(-1)
    if channels_first:
        return torch.matmul(folded, centred.transpose(-1, -2))
    return torch.matmul(centred, folded.transpose(-1, -2))


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

    #: no statistic is shared between the clouds of a batch (InstanceNorm): per-class gradients come from one
    #: pass over all classes (`grouped_forward`), which gradient matching uses
    per_sample_separable = True

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

    def point_features(self, points: Tensor, channels_first: bool = False, every_layer: bool = False) -> Tensor:
        """(B, N, C_in) -> (B, N, 1024): the last per-point map, normalised, before the max-pool (no ReLU).

        `channels_first` returns it as (B, 1024, N), the layout in which M3D sorts each channel over the points,
        written so by the last matmul instead of transposed and copied (twice: forward and backward).
        `every_layer` returns every layer's normalised map (the hidden ones before their ReLU) concatenated over
        the channels, (B, N, 64 + 128 + 1024): M3D's multi-layer descriptor. The first layer's channel o is the
        points' projection on the random direction W[o], centred (the bias cancels) and divided by its own standard
        deviation over the cloud (InstanceNorm, no affine): its sorted values are the standardised shape of the
        points' distribution along that direction, the spread divided out. Later layers' are ever more composite
        features.
        """
        *hidden, last = self.layers
        h, maps = points, []
        for layer in hidden:
            normalised = instance_norm_linear(h, layer.weight, layer.bias, self.eps, channels_first=every_layer)
            if every_layer:
                maps.append(normalised)
                normalised = normalised.transpose(-1, -2)
            h = F.relu(normalised)
        out = instance_norm_linear(h, last.weight, last.bias, self.eps, channels_first=channels_first or every_layer)
        if not every_layer:
            return out
        features = torch.cat([*maps, out], dim=-2)
        return features if channels_first else features.transpose(-1, -2)

    def embed(self, data: Tensor | Mapping[str, Tensor]) -> Tensor:
        """(B, 1024) max-pooled global feature.

        Equal to `point_features(points).amax(1)`, but the last per-point map is never kept for autograd:
        InstanceNorm is increasing per channel, so max_n IN(h3) = (max_n h3 - mean h3) / sqrt(var h3 + eps),
        where mean and variance of h3 = W3 h2 follow from the mean and covariance of h2, and max_n h3 needs
        h2 only at the argmax point of each channel (found without gradient). Forward, backward and
        double backward then cost O(N·C2²) instead of O(N·C2·C3) memory-bound work.
        """
        return self._embed(_input_points(data, self.in_channels), [(layer.weight, layer.bias) for layer in self.layers])

    def _embed(self, h: Tensor, layers: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        *hidden, (weight, bias) = layers
        for hidden_weight, hidden_bias in hidden:
            h = F.relu(instance_norm_linear(h, hidden_weight, hidden_bias, self.eps))
        if not hidden:   # raw coordinates: centre them (exact under InstanceNorm), see pooled_instance_norm_linear
            h = h - h.mean(dim=-2, keepdim=True)
        return pooled_instance_norm_linear(h, weight, bias, self.eps, self.argmax_dtype)

    def grouped_forward(self, points: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """Logits (G, B, K) of G groups of clouds (G, B, N, C_in), group g run through its own copy of the weights.

        The network is per-sample separable (`per_sample_separable`): nothing is shared between clouds. So with
        per-group copies of the weights as autograd leaves, the gradient of the sum of the groups' losses w.r.t.
        them is every group's own gradient, from one pass over all groups (the per-example gradient trick, with
        a group's clouds summed: each copy's gradient is the sum over its clouds and points of δ aᵀ).

        Args:
            points: (G, B, N, >= C_in).
            params: parameter name (as in `named_parameters`) -> (G, *shape) tensor; a missing name uses this
                module's own parameter for every group.
        """
        G = points.shape[0]
        own = dict(self.named_parameters())

        def grouped(name: str) -> Tensor:
            return params[name] if name in params else own[name].unsqueeze(0).expand(G, *own[name].shape)
        layers = [(grouped(f'layers.{i}.weight').unsqueeze(1), grouped(f'layers.{i}.bias').unsqueeze(1))
                  for i in range(len(self.layers))]
        features = self._embed(points[..., :self.in_channels], layers)                     # (G, B, D)
        return torch.matmul(features, grouped('head.weight').transpose(-1, -2)) + grouped('head.bias').unsqueeze(1)

    def class_gradients(self, points: Tensor, labels: Tensor) -> list[Tensor]:
        """Per-class cross-entropy gradients (G, *p.shape) of clouds (G, B, N, C) labelled (G,), from one pass
        over all classes: `class_gradients.pointnet_class_gradients`."""
        return pointnet_class_gradients(self, points, labels)

    def classify(self, embedding: Tensor) -> Tensor:
        """Logits (..., K) of embeddings (..., 1024) from `embed`: for an objective that needs both (DM with its
        cross-entropy term), without a second pass over the points."""
        return self.head(embedding)

    def forward(self, data: Tensor | Mapping[str, Tensor]) -> Tensor:
        """Logits (B, K) from points (B, N, 3) or an openpoints batch dict."""
        return self.classify(self.embed(data))

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
            or centred coordinates): the covariance is taken as E[h h^T] - mean mean^T. Or (G, B, N, C_in): G groups.
        weight: (C_out, C_in) linear weight, or (G, 1, C_out, C_in) one per group; bias: (C_out,), (G, 1, C_out)
            or None.
        argmax_dtype: dtype of the gradient-free search for each channel's max point (see DistillPointNet).

    Returns:
        (..., B, C_out) pooled, normalised features; differentiable (twice) w.r.t. `h`, `weight` and `bias`.
        Under a bf16 autocast only the max-point search is rounded (`fp32_statistics`).
    """
    *lead, N, C_in = h.shape
    argmax, searched = max_point_search(h, weight, argmax_dtype)                        # (..., B, C_out) each
    with fp32_statistics(h):
        h = at_least_fp32(h)
        # E[h h^T] - mean mean^T: no centred (B, N, C_in) copy to write and back-propagate through; for h of order 1
        # around the origin the subtraction loses no significant digits
        mean = h.mean(dim=-2, keepdim=True)                                              # (..., B, 1, C_in)
        covariance = Gram.apply(h, False) / N - mean.transpose(-1, -2) * mean
        variance = projected_variance(weight, covariance)                                # (..., B, C_out)
        clouds = argmax.numel() // argmax.shape[-1]
        rows = argmax + torch.arange(clouds, device=h.device).view(*lead, 1) * N          # into h's (clouds·N) rows
        if weight.dim() == 2:
            # the search's values are the products themselves when it ran in h's precision (not in bf16)
            values = searched if searched.dtype == h.dtype else _products_at_rows(h.reshape(-1, C_in), weight, rows)
            max_value = ProductsAtMaxPoints.apply(h.reshape(-1, C_in), weight, rows, values)
        else:   # per-group weights: the rows at the max points as one index_select over all clouds' points
            at_max = h.reshape(-1, C_in).index_select(0, rows.reshape(-1)).view(*lead, -1, C_in)  # (G, B, C_out, C_in)
            max_value = (at_max * weight).sum(-1)
        mean_value = torch.matmul(mean, weight.transpose(-1, -2)).squeeze(-2)
        if bias is not None:
            max_value, mean_value = max_value + bias, mean_value + bias
        return (max_value - mean_value) * torch.rsqrt(variance + eps)


class ProductsAtMaxPoints(torch.autograd.Function):
    """(B, C_out) h_rows[rows[b, o]] · weight[o]: each channel's product at its max point, given its `values`.

    The plain route (index_select the rows, multiply by the weight, sum) writes a (B, C_out, C_in) tensor of
    gathered rows (134 MB at the evaluation's 256 clouds, 1024 channels, 128 in) and reads it again forward and
    backward: memory-bound passes. Here nothing of that size exists: the values come from the search, the weight's
    gradient bags each channel's B max rows of h (`weighted_rows`) and h's gradient bags each point's channels'
    weight rows (`scattered_rows`), as the explicit per-class backward does. The backward is made of
    differentiable ops, so second order (gradient and trajectory matching through the network) works as through
    the plain route.

    Args (of `apply`): h_rows (R, C_in); weight (C_out, C_in); rows (B, C_out) indices into h_rows; values
    (B, C_out) the products there, without gradient.
    """

    @staticmethod
    def forward(ctx, h_rows: Tensor, weight: Tensor, rows: Tensor, values: Tensor) -> Tensor:
        ctx.save_for_backward(h_rows, weight, rows)
        return values.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        h_rows, weight, rows = ctx.saved_tensors
        grad = grad.to(h_rows.dtype)
        grad_h = grad_weight = None
        if ctx.needs_input_grad[1]:   # channel o: sum over clouds b of grad[b, o] · h_rows[rows[b, o]]
            grad_weight = weighted_rows(h_rows, rows, grad)[0]
        if ctx.needs_input_grad[0]:   # row r: sum over the (b, o) whose max is r of grad[b, o] · weight[o]
            grad_h = scattered_rows(grad, weight, rows, h_rows.shape[0])
        return grad_h, grad_weight, None, None


@torch.no_grad()
def _products_at_rows(h_rows: Tensor, weight: Tensor, rows: Tensor, chunk_rows: int = 4096) -> Tensor:
    """(B, C_out) h_rows[rows[b, o]] · weight[o] in h's precision, a few clouds at a time (the gathered rows of a
    chunk stay in cache)."""
    clouds = max(1, chunk_rows // rows.shape[-1])
    return torch.cat([(h_rows[rows[i:i + clouds]] * weight).sum(-1) for i in range(0, rows.shape[0], clouds)])


@torch.no_grad()
def max_point_search(h: Tensor, weight: Tensor, dtype: torch.dtype = torch.float32,
                     chunk_rows: int = 4096) -> tuple[Tensor, Tensor]:
    """(B, C_out) index of the point where each channel of h @ weight.T is largest (the first one on ties), and
    the max values (B, C_out) in `dtype`.

    Each cloud's products are formed channels-first, weight @ h.T (C_out, N), so that the max over the points
    is a reduction over the last, contiguous dimension: `max(dim=-1)` there gives the values and the first
    index of the max 2x faster than over the points dimension of (N, C_out), and 4x faster than `argmax`
    (a scalar loop on CPU). Run a few clouds at a time (about `chunk_rows` points): each product is then a
    bounded (C_out, chunk_rows) block (16 MB at 1024 channels in fp32: larger than a core's L2, so the bound is
    on memory, not a cache fit) and no (B, C_out, N) map is ever allocated. On a GPU the whole batch goes in one
    product: there, fewer and larger kernels are what is fast. Groups (h (G, B, N, C_in), weight
    (G, 1, C_out, C_in)) are searched one after the other, each with its own weight. A float64 `h` is searched in
    float64 (ties then resolve the same way at every batch size, which exactness checks in float64 rely on).
    """
    if weight.dim() > 2:
        found = [max_point_search(h[g], weight[g, 0], dtype, chunk_rows) for g in range(h.shape[0])]
        return tuple(torch.stack(part) for part in zip(*found))
    B, N, _ = h.shape
    dtype = torch.float64 if h.dtype == torch.float64 else dtype
    weight = weight.detach().to(dtype)
    clouds = B if h.is_cuda else max(1, chunk_rows // N)
    indices, values = [], []
    for i in range(0, B, clouds):
        found = torch.matmul(weight, h[i:i + clouds].detach().to(dtype).transpose(1, 2)).max(dim=-1)
        indices.append(found.indices)
        values.append(found.values)
    return torch.cat(indices), torch.cat(values)


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

    @property
    def per_sample_separable(self) -> bool:
        """True while every BatchNorm uses its running statistics (eval mode): nothing is then shared between
        the clouds of a batch, and part matching runs every group in one pass (`grouped_forward`)."""
        return not any(norm.training for norm in self.norms)

    def grouped_forward(self, data: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> Tensor:
        """Part logits (G, B, num_classes, N) of G groups of clouds, group g through its own copy of the weights.

        As `DistillPointNet.grouped_forward`: with per-group copies as autograd leaves, the gradient of the sum of
        the groups' losses w.r.t. copy g is group g's own gradient. Needs the BatchNorms in eval mode.

        Args:
            data: `pos` (G, B, N, >= C_in) and `cls` (G, B) category ids.
            params: parameter name -> (G, *shape); a missing name uses this module's own parameter for every group.
        """
        if not self.per_sample_separable:
            raise RuntimeError('DistillPointNetSeg.grouped_forward needs its BatchNorms in eval mode: in train mode a '
                               'batch shares its statistics, so groups are not independent')
        points = data['pos'][..., :self.in_channels]
        G, B, N, _ = points.shape
        own = dict(self.named_parameters())

        def grouped(name: str) -> Tensor:
            return params[name] if name in params else own[name].unsqueeze(0).expand(G, *own[name].shape)

        def linear(x: Tensor, name: str) -> Tensor:
            weight, bias = grouped(f'{name}.weight'), grouped(f'{name}.bias')
            return torch.matmul(x, weight.transpose(-1, -2).unsqueeze(1)) + bias.view(G, 1, 1, -1)

        h, skips = points, []
        for i, norm in enumerate(self.norms):
            h = linear(h, f'layers.{i}')
            scale = grouped(f'norms.{i}.weight') * torch.rsqrt(norm.running_var + norm.eps)        # (G, C)
            h = (h - norm.running_mean) * scale.view(G, 1, 1, -1) + grouped(f'norms.{i}.bias').view(G, 1, 1, -1)
            if i < len(self.layers) - 1:
                h = F.relu(h)
                skips.append(h)
        category = F.one_hot(data['cls'].reshape(G, B).long(), self.num_shape_classes).to(h.dtype)
        global_feature = torch.cat([h.amax(dim=2), category], dim=-1).unsqueeze(2).expand(G, B, N, -1)
        return linear(torch.cat([global_feature, *skips], dim=-1), 'head').transpose(-1, -2)

    def get_logits_loss(self, data: Mapping[str, Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.forward(data)
        return logits, self.criterion(logits, target.long())
