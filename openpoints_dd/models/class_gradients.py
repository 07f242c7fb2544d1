"""Per-class cross-entropy gradients of DistillPointNet, every class from one pass (an explicit backward).

Gradient matching needs, for every class, the gradient of the mean cross-entropy of that class's clouds with
respect to every weight. DistillPointNet is per-sample separable (InstanceNorm: no statistic is shared between
clouds), so one forward over the clouds of all classes and one backward give, at every layer, each cloud's
inputs a and output gradients δ, and class g's weight gradient is the sum over its clouds and points of δ aᵀ
(the per-example gradient trick of Goodfellow 2015 and BackPACK, with a class's clouds summed). Written out
here rather than left to autograd, so that every per-class sum is one batched matrix product or one fused
weighted gather, the pooled layer never forms the (N, 1024) map, and nothing of size (clouds, 1024, 128) is
written that the formulas do not need. The same code, run with autograd recording (the synthetic clouds),
gives gradients that autograd differentiates again: the second-order path of gradient matching.

Layer by layer (per cloud; A = a - mean a, Cov = AᵀA / N, s = sqrt(diag(W Cov Wᵀ) + eps)):
  hidden: u = A Wᵀ / s, h = relu(u);  with du = dh ⊙ [u > 0], γ = Σ_n du ⊙ u:
          dW = (du / s)ᵀ A - diag(γ / s²) W Cov,  da = centre((du / s) W) - A Wᵀ diag(γ / s²) W / N
  pooled: z_o = (w_o·a_{n*_o} - w_o·mean a) / s_o (n*_o: the channel's max point);  with α = dz / s,
          β = -dz ⊙ z / s²:  dW = α ⊗ (a_{n*} - mean a) + diag(β) W Cov,
          da_n = Σ_{o: n*_o = n} α_o w_o - (αᵀ W) / N + A_n Wᵀ diag(β) W / N
The layer biases cancel under InstanceNorm: their gradients are exactly 0.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .pointnet import DistillPointNet


def pointnet_class_gradients(model: DistillPointNet, points: Tensor, labels: Tensor) -> list[Tensor]:
    """Each group's cross-entropy gradient w.r.t. every parameter of `model`, from one pass over all groups.

    Args:
        model: a DistillPointNet (its weights are read, never differentiated).
        points: (G, B, N, >= C_in) clouds, B per group (class); differentiable if autograd records (the result
            is then differentiable w.r.t. them, to any order autograd supports).
        labels: (G,) int64, the class of each group.

    Returns:
        (G, *p.shape) gradients of the mean cross-entropy of each group's clouds (labelled `labels[g]`), for
        every parameter p in `model.parameters()` order. Equal to a per-group `torch.autograd.grad` of the
        model's forward to float rounding.
    """
    device = points.device.type
    low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    with torch.autocast(device, enabled=False):   # what is rounded is chosen below, not by autocast
        return _class_gradients(model, points, labels, low)


def _class_gradients(model: DistillPointNet, points: Tensor, labels: Tensor, low: torch.dtype | None) -> list[Tensor]:
    """`pointnet_class_gradients`, with the per-point products (and the max-point search) in `low` precision
    if given (a bf16 autocast), and every per-cloud statistic (covariance, variance) and its gradient in fp32."""
    from .pointnet import max_point_search

    def mm(a: Tensor, b: Tensor) -> Tensor:
        return torch.matmul(a, b) if low is None else torch.matmul(a.to(low), b.to(low)).to(a.dtype)

    def add_product(base: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """base + a @ b, batched, in one pass over the output where the precision allows (baddbmm)."""
        return torch.baddbmm(base, a, b) if low is None else base + mm(a, b)

    G, B, N = points.shape[:3]
    clouds = G * B
    graph = torch.is_grad_enabled() and points.requires_grad
    *hidden, last = [layer.weight.detach() for layer in model.layers]
    h = points[..., :model.in_channels].reshape(clouds, N, -1)
    if not hidden:   # raw coordinates: centred first, as DistillPointNet does (exact under InstanceNorm)
        h = h - h.mean(dim=1, keepdim=True)

    saved = []
    for index, weight in enumerate(hidden):
        centred = h - h.mean(dim=1, keepdim=True)
        covariance, products = _covariance(centred), _WeightProducts.of(model, index, weight)  # (GB, C_in, C_in)
        scale = torch.rsqrt(products.variance(covariance) + model.eps)                          # (GB, C_out)
        folded = weight * scale.unsqueeze(-1)                                                   # (GB, C_out, C_in)
        # raw coordinates stay fp32: 3 channels make that product cheap, and bf16 coordinates (3 significant digits)
        # distort the synthetic clouds' second-order gradient far more than rounded features do
        u = (mm if index else torch.matmul)(centred, folded.transpose(1, 2))                   # (GB, N, C_out)
        saved.append((weight, products, centred, covariance, scale, folded, u))
        h = F.relu(u)

    # pooled layer: statistics from the covariance, the max points found without gradient
    C = h.shape[-1]
    mean = h.mean(dim=1, keepdim=True)                                                      # (GB, 1, C)
    centred = h - mean
    covariance, products = _covariance(centred), _WeightProducts.of(model, len(hidden), last)   # (GB, C, C)
    scale = torch.rsqrt(products.variance(covariance) + model.eps)                          # (GB, O)
    argmax, max_value = max_point_search(h, last, low or model.argmax_dtype)
    rows = (argmax + torch.arange(clouds, device=h.device).unsqueeze(1) * N).reshape(-1)   # (GB·O,) into h's rows
    if graph or max_value.dtype != h.dtype:   # a value with a graph, or exact where the search rounded
        centred_max = (centred.reshape(-1, C).index_select(0, rows).view(clouds, -1, C) * last).sum(-1)
    else:
        centred_max = max_value - torch.matmul(mean.squeeze(1), last.t())
    z = centred_max * scale                                                                  # (GB, O)

    head_weight = model.head.weight.detach()
    logits = mm(z, head_weight.t()) + model.head.bias.detach()
    target = F.one_hot(labels.repeat_interleave(B), logits.shape[-1]).to(logits.dtype)
    d_logits = (torch.softmax(logits, dim=-1) - target) / B                                 # (GB, K)
    grads = [_group_sum_outer(mm, d_logits, z, G), d_logits.view(G, B, -1).sum(1)]          # head weight, head bias

    d_z = mm(d_logits, head_weight)                                                         # (GB, O)
    alpha, beta = d_z * scale, -d_z * z * scale.square()
    grad = (weighted_rows(centred.reshape(-1, C), rows, alpha, G)                          # Σ_b α ⊗ (a_{n*} - mean a)
            + _weighted_projection_sum(last, beta, covariance, G))                           # Σ_b diag(β) W Cov
    grads += [grad, grad.new_zeros(G, last.shape[0])]
    if hidden:
        # Σ_{o: n*_o = n} α_o w_o - αᵀW / N (every point), then + A Wᵀ diag(β) W / N
        d_a = _scatter_rows(alpha, last, argmax, N, -torch.matmul(alpha, last) / N)
        d_a = add_product(d_a, centred, products.quadratic_forms(beta / N))
        for k, (weight, products, centred, covariance, scale, folded, u) in reversed(list(enumerate(saved))):
            d_u = _relu_backward(d_a, u)
            gamma = (d_u * u).sum(1) * scale.square()                                       # γ / s²
            # Σ_b diag(s_b) d_u_bᵀ A_b, per cloud then per group: the scale applies to the small product
            per_cloud = mm(d_u.transpose(1, 2), centred) * scale.unsqueeze(-1)
            grad = per_cloud.view(G, B, *weight.shape).sum(1) - _weighted_projection_sum(weight, gamma, covariance, G)
            grads += [grad, grad.new_zeros(G, weight.shape[0])]
            if k:
                # centre((d_u ⊙ s) W) - A Wᵀ diag(γ / s²) W / N; the centring as one row per cloud: mean_n(d_u) F
                d_a = add_product(-torch.matmul(d_u.mean(dim=1, keepdim=True), folded), d_u, folded)
                d_a = add_product(d_a, centred, products.quadratic_forms(-gamma / N))
    head = grads[:2]
    layers = [grads[i:i + 2] for i in range(2, len(grads), 2)][::-1]   # collected last layer first
    return [g for pair in layers for g in pair] + head


def _relu_backward(grad: Tensor, output: Tensor) -> Tensor:
    """grad where output > 0, else 0: ReLU's own backward kernel, one pass over the map (grad * (output > 0) makes a
    bool mask and promotes it to float), and differentiable again."""
    return torch.ops.aten.threshold_backward(grad, output, 0)


def _covariance(centred: Tensor) -> Tensor:
    return torch.matmul(centred.transpose(1, 2), centred) / centred.shape[1]


def _group_sum_outer(mm: Callable[[Tensor, Tensor], Tensor], left: Tensor, right: Tensor, groups: int) -> Tensor:
    """Σ over a group's rows of leftᵀ right: (GB, [N,] P) and (GB, [N,] Q) -> (G, P, Q), one batched product."""
    left, right = left.reshape(groups, -1, left.shape[-1]), right.reshape(groups, -1, right.shape[-1])
    return mm(left.transpose(1, 2), right)


def _weighted_projection_sum(weight: Tensor, coefficients: Tensor, covariance: Tensor, groups: int) -> Tensor:
    """Σ_b diag(coefficients_b) W Cov_b over each group's clouds: (O, C), (GB, O), (GB, C, C) -> (G, O, C).

    Per group one (O, B·C) x (B·C, C) product of the stacked [diag(c_b) W] and [Cov_b]: the per-cloud (O, C)
    operands are built one group at a time, so they stay small instead of making a (GB, O, C) pass in memory.
    """
    clouds, O = coefficients.shape
    per_group, C = clouds // groups, weight.shape[1]
    coefficients, covariance = coefficients.view(groups, per_group, O), covariance.view(groups, per_group * C, C)
    return torch.stack([torch.matmul((coefficients[g].t().unsqueeze(-1) * weight.unsqueeze(1)).reshape(O, -1),
                                     covariance[g]) for g in range(groups)])


def _scatter_rows(coefficients: Tensor, weight: Tensor, argmax: Tensor, num_points: int, base: Tensor) -> Tensor:
    """(GB, N, C): row n of cloud b is base[b] plus Σ over the channels o whose max point is n of coefficients[b, o] w_o.

    Args:
        coefficients: (GB, O); weight: (O, C); argmax: (GB, O) point indices; base: (GB, C), every point's start.
    """
    clouds = coefficients.shape[0]
    rows = argmax + torch.arange(clouds, device=argmax.device).unsqueeze(1) * num_points
    scattered = scattered_rows(coefficients, weight, rows, clouds * num_points).view(clouds, num_points, -1)
    return scattered + base.unsqueeze(1)


def weighted_rows(features: Tensor, rows: Tensor, weights: Tensor, groups: int = 1) -> Tensor:
    """Σ_b weights[b, o] features[rows[b, o]] over each group's clouds, as one fused weighted gather.

    features: (GB·N, C) every cloud's points; rows: (GB·O,) or (GB, O) the row of each (cloud, channel); weights:
    (GB, O). Returns (G, O, C). `embedding_bag` sums each (group, channel)'s B rows without writing the (GB, O, C)
    gather.
    """
    clouds, O = weights.shape
    per_group = clouds // groups
    bags = rows.reshape(groups, per_group, O).transpose(1, 2).reshape(-1, per_group)       # (G·O, B)
    bag_weights = weights.view(groups, per_group, O).transpose(1, 2).reshape(-1, per_group)
    return F.embedding_bag(bags, features, per_sample_weights=bag_weights, mode='sum').view(groups, O, -1)


def scattered_rows(coefficients: Tensor, weight: Tensor, rows: Tensor, num_rows: int) -> Tensor:
    """(num_rows, C): row r is Σ over the (b, o) with rows[b, o] = r of coefficients[b, o] w_o.

    The transpose of `weighted_rows`: each row's channels as one bag of `embedding_bag` (the (b, o) sorted by their
    row), so the (B, O, C) products that an index_add would add are never written. Rows no channel picked are 0.
    """
    flat = rows.reshape(-1)
    order = torch.argsort(flat)
    counts = torch.bincount(flat, minlength=num_rows)
    return F.embedding_bag(order % weight.shape[0], weight, counts.cumsum(0) - counts, mode='sum',
                           per_sample_weights=coefficients.reshape(-1)[order].to(weight.dtype))


class _WeightProducts:
    """A weight's per-channel products w_oc w_od over the upper triangle c <= d of C×C: (O, C(C+1)/2).

    With them diag(W Cov Wᵀ) is one product Cov (clouds, C(C+1)/2) x (C(C+1)/2, O), and Wᵀ diag(c) W is one
    product c (clouds, O) x (O, C(C+1)/2): plain matrix products, no (clouds, O, C) intermediate, and half the
    work of the full (O, C²) outer products since covariances and quadratic forms are symmetric. Kept on the
    model until the weight changes (its storage or in-place version): the real and the synthetic pass of a
    matching step, and every chunk of classes, share the weights, and for the 1024-channel layer these products
    cost as much to build as a chunk's variance product.
    """

    def __init__(self, weight: Tensor):
        C = weight.shape[1]
        rows, cols = torch.triu_indices(C, C, device=weight.device)
        self.upper, self.lower = rows * C + cols, cols * C + rows                  # flat (c, d) and (d, c) in C×C
        self.products = weight[:, rows] * weight[:, cols]                           # (O, T)
        self.twice_off_diagonal = (2 - (rows == cols).to(weight.dtype))             # Σ_cd = Σ_{c<=d} (2 - δ_cd)
        self.channels = C

    @classmethod
    def of(cls, model: nn.Module, index: int, weight: Tensor) -> _WeightProducts:
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        cache = model.__dict__.setdefault('_weight_products_cache', {})
        if index not in cache or cache[index][0] != key:
            cache[index] = (key, cls(weight))
        return cache[index][1]

    def variance(self, covariance: Tensor) -> Tensor:
        """diag(W Cov Wᵀ): (clouds, C, C) -> (clouds, O)."""
        triangle = covariance.flatten(1)[:, self.upper] * self.twice_off_diagonal
        return torch.matmul(triangle, self.products.t())

    def quadratic_forms(self, coefficients: Tensor) -> Tensor:
        """Wᵀ diag(c) W: (clouds, O) -> (clouds, C, C)."""
        triangle = torch.matmul(coefficients, self.products)                        # (clouds, T)
        forms = triangle.new_zeros(len(triangle), self.channels ** 2)
        forms[:, self.lower] = triangle
        forms[:, self.upper] = triangle
        return forms.view(-1, self.channels, self.channels)
