"""Channels-last CPU paths for openpoints' grouped blocks (same function, faster memory layout).

openpoints runs its shared MLPs on grouped tensors (B, C, M, K) in the default (NCHW) layout. On a CPU
that is slow twice over: oneDNN's 1x1 convolutions and batch norm are 1.3-2x slower on NCHW than on
channels-last tensors (far slower for odd channel counts such as the C+3 of `[dp, f_j]`), and a max over
the K neighbours whose gradient comes back in another layout than the activations forces every batch-norm
backward onto a slow mixed-layout path. `install()` replaces the `forward` of the blocks the classification
backbones use by versions that build the grouped tensor channels-last (neighbour rows gathered with
`index_select`), run the block's own modules on it and take the neighbour max on a permuted view, so the
gradient comes back channels-last too:

* PointNeXt's `SetAbstraction` and PointNet++'s `ConvPool` (ball-query grouping, `dp_fj` features);
* DGCNN's `EdgeConv`: `W [x_i, x_j - x_i] = (W_1 - W_2) x_i + W_2 x_j`, so the 1x1 convolution runs once per
  point and its result is gathered per edge (k times fewer FLOPs, no (B, 2C, N, k) input tensor);
* PCT's `Local_op` (through `neighbour_embedding`, used by `PCTClassifier`): the same identity for its
  `[f_j - f_i, f_i]` input;
* PointMLP's `PreExtraction` and `PosExtraction`: their `Conv1d` layers on (B*G, C, K) become matrix
  products on (B*G*K, C) rows, batch norm runs on the rows.

Every path computes the same function with the same parameters, buffers and batch statistics as
upstream (tests compare values, gradients and running statistics in float64); only the floating-point
summation order differs. A block whose configuration is not covered (another norm or feature type, grouped
convolutions, a non-CPU tensor) runs upstream's forward. `enabled(False)` switches every path off, to
compare with upstream.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ENABLED = True
_INSTALLED = False
_ORIGINAL: dict[str, Callable] = {}

#: Modules a grouped block may hold for the channels-last path: layout-agnostic and elementwise per channel.
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.ELU, nn.CELU, nn.SELU, nn.Mish,
                nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Identity)


@contextlib.contextmanager
def enabled(flag: bool) -> Iterator[None]:
    """Switch the channels-last paths on or off inside the block (process-wide; restored on exit)."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(flag)
    try:
        yield
    finally:
        _ENABLED = previous


def is_enabled() -> bool:
    return _ENABLED


# ------------------------------------------------------------------------------------------ helpers
def gather_rows(rows: Tensor, idx: Tensor) -> Tensor:
    """out[b, m, k] = rows[b, idx[b, m, k]]: (B, N, C), (B, M, K) int -> (B, M, K, C), C contiguous.

    Whole rows are copied (`index_select` on the flattened rows), and the backward adds rows back
    (`index_add`), so first- and second-order gradients are torch's own.
    """
    B, N, C = rows.shape
    offsets = torch.arange(B, device=idx.device).mul_(N).view(B, *([1] * (idx.dim() - 1)))
    flat = (idx.long() + offsets).reshape(-1)
    return rows.reshape(B * N, C).index_select(0, flat).view(*idx.shape, C)


def neighbour_max(h: Tensor, keepdim: bool = False) -> Tensor:
    """`torch.max(h, dim=-1, keepdim)[0]` for (B, C, M, K) `h`, taken on the channels-last view when `h` is one.

    Reducing the permuted (B, M, K, C) view over K reads C-contiguous rows, and its backward builds the
    gradient in that layout, i.e. channels-last for `h`. Ties route the gradient to the first maximal
    neighbour, as upstream's max does.
    """
    if h.dim() != 4 or h.is_contiguous() or not h.is_contiguous(memory_format=torch.channels_last):
        return torch.max(h, dim=-1, keepdim=keepdim)[0]
    values = h.permute(0, 2, 3, 1).max(dim=2)[0].permute(0, 2, 1)       # (B, C, M)
    return values.unsqueeze(-1) if keepdim else values


def _channels_last_view(x: Tensor) -> Tensor:
    """(B, M, K, C) contiguous -> the same memory as a channels-last (B, C, M, K) tensor."""
    return x.permute(0, 3, 1, 2)


def _is_pointwise_conv(module: nn.Module) -> bool:
    return (isinstance(module, (nn.Conv1d, nn.Conv2d)) and all(k == 1 for k in module.kernel_size)
            and all(s == 1 for s in module.stride) and all(p == 0 for p in module.padding)
            and all(d == 1 for d in module.dilation) and module.groups == 1 and module.padding_mode == 'zeros')


def _plain_2d_stack(convs: nn.Module) -> bool:
    """True when `convs` holds only 1x1 Conv2d, BatchNorm2d and activations (possibly nested Sequentials)."""
    for module in convs.modules():
        if isinstance(module, nn.Sequential):
            continue
        if isinstance(module, nn.Conv2d):
            if not _is_pointwise_conv(module):
                return False
        elif not isinstance(module, (nn.BatchNorm2d, *_ACTIVATIONS)):
            return False
    return True


def _cpu(*tensors: Tensor | None) -> bool:
    return all(t is None or t.device.type == 'cpu' for t in tensors)


def _grouped_mlp_max(grouper: nn.Module, convs: nn.Sequential, query_xyz: Tensor, support_xyz: Tensor,
                     features: Tensor) -> Tensor:
    """`max_K convs(cat([dp, f_j], 1))` of a ball-query grouper, channels-last: (B, C_out, M).

    The first 1x1 convolution is linear in `[dp, f_j]` with `dp = (p_j - p_i) s` (`s` = 1/radius with
    `normalize_dp`), so it runs once per support point and is gathered per neighbour:
    `W [dp, f_j] = (W_p p_j s + W_f f_j) - W_p p_i s`. The xyz products stay in float32 under autocast:
    in bfloat16 the difference of two rounded products of nearby points would lose the offset `dp`.
    """
    from openpoints.models.layers.group import ball_query
    first, rest = convs[0], convs[1:]
    conv = first[0]
    idx = ball_query(grouper.radius, grouper.nsample, support_xyz, query_xyz)       # (B, M, K) int32
    scale = 1.0 / grouper.radius if grouper.normalize_dp else 1.0
    weight = conv.weight.flatten(1)                                                  # (C_1, 3 + C)
    w_xyz, w_features = weight[:, :3] * scale, weight[:, 3:]
    with torch.autocast(support_xyz.device.type, enabled=False):
        w_xyz = w_xyz.to(support_xyz.dtype)
        support_term = F.linear(support_xyz, w_xyz)                                  # (B, N, C_1)
        query_term = F.linear(query_xyz, w_xyz, None if conv.bias is None else -conv.bias)
    per_point = support_term + F.linear(features.transpose(1, 2), w_features)        # (B, N, C_1)
    h = gather_rows(per_point, idx) - query_term.unsqueeze(2)                        # (B, M, K, C_1)
    h = _channels_last_view(h)
    for module in first[1:]:
        h = module(h)
    return neighbour_max(rest(h))


def _ball_query_dp_fj_supported(grouper: nn.Module, feature_type: str, features: Tensor | None,
                                convs: nn.Sequential) -> bool:
    from openpoints.models.layers.group import QueryAndGroup
    first = convs[0] if len(convs) else None
    return (type(grouper) is QueryAndGroup and grouper.relative_xyz and not grouper.return_only_idx
            and feature_type == 'dp_fj' and features is not None and _plain_2d_stack(convs)
            and isinstance(first, nn.Sequential) and len(first) and isinstance(first[0], nn.Conv2d)
            and first[0].in_channels == 3 + features.shape[1])


# ------------------------------------------------------------------------------------------ blocks
def _set_abstraction_forward(self, pf):
    """pointnext.SetAbstraction.forward with the grouped MLP channels-last (strided, ball-query stages)."""
    p, f = pf
    if (not _ENABLED or self.is_head or self.all_aggr or not _cpu(p, f)
            or not _ball_query_dp_fj_supported(self.grouper, self.feature_type, f, self.convs)):
        return _ORIGINAL['SetAbstraction'](self, pf)
    idx = self.sample_fn(p, p.shape[1] // self.stride).long()
    new_p = torch.gather(p, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
    if self.use_res:
        identity = self.skipconv(torch.gather(f, -1, idx.unsqueeze(1).expand(-1, f.shape[1], -1)))
    f = _grouped_mlp_max(self.grouper, self.convs, new_p, p, f)
    if self.use_res:
        f = self.act(f + identity)
    return new_p, f


def _conv_pool_forward(self, query_xyz, support_xyz, features, query_idx=None):
    """local_aggregation.ConvPool.forward with the grouped MLP channels-last (max reduction, no residual)."""
    if (not _ENABLED or self.use_res or not _cpu(query_xyz, support_xyz, features)
            or not _ball_query_dp_fj_supported(self.grouper, self.feature_type, features, self.convs)
            or not _is_max_reduction(self)):
        return _ORIGINAL['ConvPool'](self, query_xyz, support_xyz, features, query_idx)
    return _grouped_mlp_max(self.grouper, self.convs, query_xyz, support_xyz, features)


def _is_max_reduction(block: nn.Module) -> bool:
    """ConvPool keeps its reduction only as a lambda; tell max from mean/sum once, on a tiny input."""
    flag = getattr(block, '_openpoints_dd_max_reduction', None)
    if flag is None:
        flag = float(block.reduction_layer(torch.tensor([[[[1.0, 3.0]]]])).flatten()[0]) == 3.0
        block._openpoints_dd_max_reduction = flag
    return flag


def _edge_conv_forward(self, x, edge_index):
    """graph_conv.EdgeConv.forward: conv([x_i, x_j - x_i]) as (W_1 - W_2) x_i + W_2 x_j, gathered per edge.

    x: (B, C, N, 1); edge_index: (B, N, k). Returns (B, C_out, N, 1) (a channels-last view).
    """
    stack = list(self.nn)
    conv = stack[0] if stack else None
    if (not _ENABLED or not _cpu(x) or x.dim() != 4 or x.shape[-1] != 1 or not isinstance(conv, nn.Conv2d)
            or not _is_pointwise_conv(conv) or not _plain_2d_stack(self.nn)):
        return _ORIGINAL['EdgeConv'](self, x, edge_index)
    C = x.shape[1]
    weight = conv.weight.flatten(1)                                               # (C_out, 2C)
    w_centre, w_edge = weight[:, :C], weight[:, C:]
    rows = x.squeeze(-1).transpose(1, 2)                                          # (B, N, C)
    centre = F.linear(rows, w_centre - w_edge, conv.bias)                         # (B, N, C_out)
    h = gather_rows(F.linear(rows, w_edge), edge_index) + centre.unsqueeze(2)     # (B, N, k, C_out)
    h = _channels_last_view(h)
    for module in stack[1:]:
        h = module(h)
    return neighbour_max(h, keepdim=True)


def neighbour_embedding(local_op: nn.Module, features: Tensor, centre_idx: Tensor,
                        neighbour_idx: Tensor) -> Tensor:
    """PCT's neighbour embedding stage: openpoints `Local_op` on `[f_j - f_i, f_i]`, max over the neighbours.

    Args:
        local_op: an openpoints `Local_op` (conv1/bn1/relu, conv2/bn2/relu, max over K).
        features: (B, C, N) point features.
        centre_idx: (B, M) int64 indices of the centres.
        neighbour_idx: (B, M, K) int indices of every centre's neighbours.

    Returns:
        (B, C_out, M) features. On CPU with the channels-last paths on, `conv1` runs once per point
        (`W [f_j - f_i, f_i] = W_1 f_j + (W_2 - W_1) f_i`) and the rest channels-last; otherwise it builds
        the grouped (B, 2C, M, K) input and calls `local_op` as upstream does.
    """
    C = features.shape[1]
    if not _ENABLED or not _cpu(features) or not _is_pointwise_conv(local_op.conv1):
        centre = torch.gather(features, 2, centre_idx.unsqueeze(1).expand(-1, C, -1)).unsqueeze(-1)
        from openpoints.models.layers.group import grouping_operation
        neighbours = grouping_operation(features.contiguous(), neighbour_idx.int())
        grouped = torch.cat([neighbours - centre, centre.expand_as(neighbours)], dim=1)
        return local_op(grouped)
    weight = local_op.conv1.weight.flatten(1)                                     # (C_out, 2C)
    w_edge, w_centre = weight[:, :C], weight[:, C:]
    rows = features.transpose(1, 2)                                               # (B, N, C)
    centre_rows = gather_rows(rows, centre_idx.unsqueeze(-1)).squeeze(2)          # (B, M, C)
    h = gather_rows(F.linear(rows, w_edge), neighbour_idx)                        # (B, M, K, C_out)
    h = h + F.linear(centre_rows, w_centre - w_edge, local_op.conv1.bias).unsqueeze(2)
    h = F.relu(local_op.bn1(_channels_last_view(h)))
    h = F.relu(local_op.bn2(local_op.conv2(h)))
    return neighbour_max(h)


def _local_op_forward(self, x):
    """pct.Local_op.forward with the max over neighbours on the channels-last view."""
    if not _ENABLED or not _cpu(x):
        return _ORIGINAL['Local_op'](self, x)
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    return neighbour_max(x)


def _rows_supported(block: nn.Module) -> bool:
    """PointMLP blocks: leaves are pointwise ungrouped Conv1d, BatchNorm1d and activations only."""
    for module in block.modules():
        if next(module.children(), None) is not None:
            continue                                                              # a container
        if isinstance(module, nn.Conv1d):
            if not _is_pointwise_conv(module):
                return False
        elif not isinstance(module, (nn.BatchNorm1d, *_ACTIVATIONS)):
            return False
    return True


def _rows_sequential(seq: nn.Sequential, rows: Tensor) -> Tensor:
    """Apply a Conv1d/BatchNorm1d/activation Sequential to (R, C) rows instead of (B, C, L) maps."""
    for module in seq:
        if isinstance(module, nn.Conv1d):
            rows = F.linear(rows, module.weight.squeeze(-1), module.bias)
        else:
            rows = module(rows)                                                   # BatchNorm1d takes (R, C)
    return rows


def _rows_residual(block: nn.Module, rows: Tensor) -> Tensor:
    """pointmlp.ConvBNReLURes1D on rows: act(net2(net1(x)) + x)."""
    return block.act(_rows_sequential(block.net2, _rows_sequential(block.net1, rows)) + rows)


def _pre_extraction_forward(self, x):
    """pointmlp.PreExtraction.forward on (B*G*K, C) rows: x (B, G, K, D) -> (B, C_out, G)."""
    if not _ENABLED or not _cpu(x) or not _rows_supported(self):
        return _ORIGINAL['PreExtraction'](self, x)
    b, n, s, d = x.shape
    rows = _rows_sequential(self.transfer.net, x.reshape(b * n * s, d))
    for block in self.operation:
        rows = _rows_residual(block, rows)
    return rows.view(b * n, s, -1).max(dim=1)[0].view(b, n, -1).permute(0, 2, 1)


def _pos_extraction_forward(self, x):
    """pointmlp.PosExtraction.forward on (B*G, C) rows: x (B, C, G) -> (B, C, G) (a transposed view)."""
    if not _ENABLED or not _cpu(x) or not _rows_supported(self):
        return _ORIGINAL['PosExtraction'](self, x)
    b, c, n = x.shape
    rows = x.transpose(1, 2).reshape(b * n, c)
    for block in self.operation:
        rows = _rows_residual(block, rows)
    return rows.view(b, n, c).permute(0, 2, 1)


# ------------------------------------------------------------------------------------------ install
def install() -> None:
    """Patch the blocks' `forward` methods (idempotent); upstream's stay reachable for fallbacks."""
    global _INSTALLED
    if _INSTALLED:
        return
    from openpoints.models.backbone import pct, pointmlp, pointnext
    from openpoints.models.layers import graph_conv, local_aggregation
    targets = {'SetAbstraction': (pointnext.SetAbstraction, _set_abstraction_forward),
               'ConvPool': (local_aggregation.ConvPool, _conv_pool_forward),
               'EdgeConv': (graph_conv.EdgeConv, _edge_conv_forward),
               'Local_op': (pct.Local_op, _local_op_forward),
               'PreExtraction': (pointmlp.PreExtraction, _pre_extraction_forward),
               'PosExtraction': (pointmlp.PosExtraction, _pos_extraction_forward)}
    for name, (cls, forward) in targets.items():
        _ORIGINAL[name] = cls.forward
        cls.forward = forward
    _INSTALLED = True
