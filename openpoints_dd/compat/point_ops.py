"""Pure-PyTorch versions of openpoints' compiled point ops (pointnet2_batch), for machines without them.

openpoints' autograd Functions allocate `torch.cuda.*Tensor` before reaching the extension, so on a
CPU build every model that samples or groups points fails. `install()` replaces the `forward` /
`backward` staticmethods of those Functions; `Function.apply` looks them up at call time, so every
alias imported elsewhere in openpoints picks the patch up. Backward passes are written with
differentiable torch ops, so second-order gradients (gradient matching) flow through them.

Semantics follow the CUDA kernels exactly (int32 indices, first-hit fill in ball query, 1e40
distances for missing neighbours in three_nn). Each op keeps a slow `_naive` twin for the tests.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor


# ---------------------------------------------------------------------------------------------- ops
def furthest_point_sample(xyz: Tensor, num_samples: int) -> Tensor:
    """Furthest point sampling starting at point 0, as the CUDA kernel does.

    Args:
        xyz: (B, N, 3) float points.
        num_samples: M, how many indices to return.

    Returns:
        (B, M) int32 indices.
    """
    xyz = xyz.detach()
    B, N, _ = xyz.shape
    coords = xyz.transpose(1, 2).contiguous()                              # (B, 3, N): contiguous rows
    idx = torch.zeros(B, num_samples, dtype=torch.long, device=xyz.device)
    min_d2 = torch.full((B, N), 1e10, dtype=xyz.dtype, device=xyz.device)
    diff = torch.empty_like(coords)
    batch = torch.arange(B, device=xyz.device)
    farthest = torch.zeros(B, dtype=torch.long, device=xyz.device)
    with _single_cpu_thread(xyz):
        for i in range(1, num_samples):
            torch.sub(coords, xyz[batch, farthest].unsqueeze(-1), out=diff)  # buffers reused: no allocation
            torch.minimum(min_d2, diff.square_().sum(1), out=min_d2)
            farthest = min_d2.argmax(-1)
            idx[:, i] = farthest
    return idx.int()


@contextlib.contextmanager
def _single_cpu_thread(tensor: Tensor) -> Iterator[None]:
    """Run torch CPU ops on one thread inside the block (no-op for non-CPU tensors).

    The FPS loop issues ~5 small ops per sample. With 2 intra-op threads each op is an OpenMP region,
    and when another process keeps a core busy every region waits for a time slice: on the 2-core
    host, 32x1024 -> 512 took 5-20 s with 2 threads and 0.06 s with 1 (0.06 s either way when idle).
    The thread count is process-wide, so other Python threads run single-threaded meanwhile.
    """
    if tensor.device.type != 'cpu' or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def furthest_point_sample_naive(xyz: Tensor, num_samples: int) -> Tensor:
    """A literal port of the CUDA loop, one cloud at a time (reference for tests)."""
    out = []
    for cloud in xyz.detach():
        temp = [1e10] * cloud.shape[0]
        old, chosen = 0, [0]
        for _ in range(1, num_samples):
            best, best_i = -1.0, 0
            for k in range(cloud.shape[0]):
                d = float(((cloud[k] - cloud[old]) ** 2).sum())
                temp[k] = min(temp[k], d)
                if temp[k] > best:
                    best, best_i = temp[k], k
            old = best_i
            chosen.append(old)
        out.append(chosen)
    return torch.tensor(out, dtype=torch.int32)


def ball_query(radius: float, num_neighbors: int, xyz: Tensor, new_xyz: Tensor) -> Tensor:
    """For each query, the first `num_neighbors` support points (in index order) with d² < r².

    Unused slots repeat the first hit; a query without any hit gets all zeros (CUDA semantics).

    Args:
        xyz: (B, N, 3) support points.
        new_xyz: (B, M, 3) query points.

    Returns:
        (B, M, num_neighbors) int32 indices.
    """
    N = xyz.shape[1]
    d2 = torch.cdist(new_xyz.detach(), xyz.detach()).square_()              # (B, M, N)
    order = torch.arange(N, device=xyz.device)
    key = torch.where(d2 < radius * radius, order, N)                         # N means "no hit"
    k = min(num_neighbors, N)
    first = key.topk(k, dim=-1, largest=False, sorted=True).values
    if k < num_neighbors:
        first = torch.cat([first, first.new_full(first.shape[:-1] + (num_neighbors - k,), N)], -1)
    fill = first[..., :1]
    fill = torch.where(fill == N, torch.zeros_like(fill), fill)
    return torch.where(first == N, fill, first).int()


def ball_query_naive(radius: float, num_neighbors: int, xyz: Tensor, new_xyz: Tensor) -> Tensor:
    """A literal port of the CUDA kernel (reference for tests)."""
    B, M, _ = new_xyz.shape
    out = torch.zeros(B, M, num_neighbors, dtype=torch.int32)
    for b in range(B):
        for m in range(M):
            count = 0
            for k in range(xyz.shape[1]):
                if float(((xyz[b, k] - new_xyz[b, m]) ** 2).sum()) < radius * radius:
                    if count == 0:
                        out[b, m, :] = k
                    out[b, m, count] = k
                    count += 1
                    if count >= num_neighbors:
                        break
    return out


def group_points(features: Tensor, idx: Tensor) -> Tensor:
    """out[b, c, m, k] = features[b, c, idx[b, m, k]]: (B, C, N), (B, M, K) -> (B, C, M, K).

    The result is a fresh tensor, not a view: openpoints' KNNGroup edits it in place.
    """
    B, C, _ = features.shape
    _, M, K = idx.shape
    flat = idx.reshape(B, 1, M * K).long().expand(-1, C, -1)
    return features.gather(2, flat).view(B, C, M, K).clone(memory_format=torch.contiguous_format)


def group_points_naive(features: Tensor, idx: Tensor) -> Tensor:
    """`group_points` by advanced indexing, one cloud at a time (reference for tests)."""
    B = features.shape[0]
    return torch.stack([features[b][:, idx[b].long()] for b in range(B)])


def _scatter_back(grad_out: Tensor, idx: Tensor, num_points: int) -> Tensor:
    """Adjoint of a gather along the last dim: (B, C, *idx.shape[1:]) -> (B, C, num_points)."""
    B, C = grad_out.shape[:2]
    flat_idx = idx.reshape(B, 1, -1).long().expand(-1, C, -1)
    return grad_out.new_zeros(B, C, num_points).scatter_add(2, flat_idx, grad_out.reshape(B, C, -1))


def gather_points(features: Tensor, idx: Tensor) -> Tensor:
    """out[b, c, m] = features[b, c, idx[b, m]]: (B, C, N), (B, M) -> (B, C, M)."""
    return features.gather(2, idx.long().unsqueeze(1).expand(-1, features.shape[1], -1))


def gather_points_naive(features: Tensor, idx: Tensor) -> Tensor:
    """`gather_points` with explicit loops over clouds and samples (reference for tests)."""
    B, C, _ = features.shape
    out = features.new_zeros(B, C, idx.shape[1])
    for b in range(B):
        for m in range(idx.shape[1]):
            out[b, :, m] = features[b, :, int(idx[b, m])]
    return out


def knn(k: int, query: Tensor, support: Tensor) -> tuple[Tensor, Tensor]:
    """The k nearest support points of every query, ascending by distance.

    Args:
        query: (B, M, 3); support: (B, N, 3).

    Returns:
        dist (B, M, k) Euclidean distances and idx (B, M, k) int64.
    """
    d2 = torch.cdist(query.detach(), support.detach()).square_()
    d2, idx = d2.topk(k, dim=-1, largest=False, sorted=True)
    return d2.clamp_min_(0).sqrt_(), idx


def knn_naive(k: int, query: Tensor, support: Tensor) -> tuple[Tensor, Tensor]:
    """`knn` by a full sort of explicit per-pair distances (reference for tests; ties break by index)."""
    dists, indices = [], []
    for q_cloud, s_cloud in zip(query.detach(), support.detach()):
        d = ((q_cloud[:, None, :] - s_cloud[None, :, :]) ** 2).sum(-1).sqrt()  # (M, N)
        values, order = d.sort(dim=-1, stable=True)
        dists.append(values[:, :k])
        indices.append(order[:, :k])
    return torch.stack(dists), torch.stack(indices)


def three_nn(unknown: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
    """The 3 nearest known points of every unknown point: sqrt distances (B, n, 3), int32 idx (B, n, 3).

    With fewer than 3 known points the missing slots hold index 0 and the kernel's 1e40 squared
    distance, which is inf in float32.
    """
    d2 = torch.cdist(unknown.detach(), known.detach()).square_()
    k = min(3, known.shape[1])
    values, idx = d2.topk(k, dim=-1, largest=False, sorted=True)
    if k < 3:
        # built in float64 and cast: new_full(1e40) on a float32 tensor raises an overflow error
        missing = torch.full(values.shape[:-1] + (3 - k,), 1e40, dtype=torch.float64, device=values.device)
        values = torch.cat([values, missing.to(values.dtype)], -1)
        idx = torch.cat([idx, idx.new_zeros(idx.shape[:-1] + (3 - k,))], -1)
    return values.clamp_min_(0).sqrt_(), idx.int()


def three_nn_naive(unknown: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
    """A literal port of the CUDA kernel's running top-3 (reference for tests).

    Like the kernel, it keeps the running best squared distances as doubles starting at 1e40, replaces
    on a strict `<` (so ties keep the lower index) and returns float32 sqrt distances; the distances
    themselves are computed in float64 here (float32 in the kernel).
    """
    B, n, _ = unknown.shape
    dist = torch.empty(B, n, 3, dtype=torch.float32)
    idx = torch.zeros(B, n, 3, dtype=torch.int32)
    for b in range(B):
        for i in range(n):
            best, best_i = [1e40, 1e40, 1e40], [0, 0, 0]
            for k in range(known.shape[1]):
                d = float(((unknown[b, i].double() - known[b, k].double()) ** 2).sum())
                if d < best[0]:
                    best, best_i = [d, best[0], best[1]], [k, best_i[0], best_i[1]]
                elif d < best[1]:
                    best, best_i = [best[0], d, best[1]], [best_i[0], k, best_i[1]]
                elif d < best[2]:
                    best[2], best_i[2] = d, k
            dist[b, i] = torch.tensor(best, dtype=torch.float64).float()
            idx[b, i] = torch.tensor(best_i, dtype=torch.int32)
    return dist.sqrt(), idx


def three_interpolate(features: Tensor, idx: Tensor, weight: Tensor) -> Tensor:
    """out[b, c, i] = Σ_k weight[b, i, k] · features[b, c, idx[b, i, k]]: (B, C, m) -> (B, C, n)."""
    B, C, _ = features.shape
    n = idx.shape[1]
    picked = features.gather(2, idx.reshape(B, 1, n * 3).long().expand(-1, C, -1)).view(B, C, n, 3)
    return (picked * weight.unsqueeze(1)).sum(-1)


def three_interpolate_naive(features: Tensor, idx: Tensor, weight: Tensor) -> Tensor:
    """`three_interpolate` with explicit loops over clouds, points and neighbours (reference for tests)."""
    B, C, _ = features.shape
    n = idx.shape[1]
    out = features.new_zeros(B, C, n)
    for b in range(B):
        for i in range(n):
            for k in range(3):
                out[b, :, i] += weight[b, i, k] * features[b, :, int(idx[b, i, k])]
    return out


# ------------------------------------------------------------------------------------------ install
def _uses_compiled(*tensors: Tensor) -> bool:
    """Dispatch to openpoints' own kernels only for CUDA tensors when the extension is importable."""
    return _COMPILED is not None and all(t.is_cuda for t in tensors)


def _compiled_extension():
    try:
        from openpoints.cpp.pointnet2_batch import pointnet2_cuda  # noqa: F401
        return pointnet2_cuda
    except Exception:  # missing, or built for another torch: use the torch versions everywhere
        return None


_COMPILED = None
_INSTALLED = False


def install() -> None:
    """Patch openpoints' point-op autograd Functions to use the torch versions (idempotent).

    On a CUDA machine with a working compiled extension, CUDA tensors still use it for the index ops
    (FPS, ball query, three_nn), which carry no gradient. Grouping, gathering and interpolation
    always use the torch code, because the compiled backward is not twice differentiable.
    """
    global _COMPILED, _INSTALLED
    if _INSTALLED:
        return
    from openpoints.models.layers import group, subsample, upsampling
    _COMPILED = _compiled_extension()
    original = {'fps': subsample.FurthestPointSampling.forward, 'ball': group.BallQuery.forward,
                'three_nn': upsampling.ThreeNN.forward}

    def fps_forward(ctx, xyz, npoint):
        if _uses_compiled(xyz):
            return original['fps'](ctx, xyz, npoint)
        return furthest_point_sample(xyz, npoint)

    def ball_forward(ctx, radius, nsample, xyz, new_xyz):
        if _uses_compiled(xyz, new_xyz):
            return original['ball'](ctx, radius, nsample, xyz, new_xyz)
        return ball_query(radius, nsample, xyz, new_xyz)

    def three_nn_forward(ctx, unknown, known):
        if _uses_compiled(unknown, known):
            return original['three_nn'](ctx, unknown, known)
        return three_nn(unknown, known)

    def gather_forward(ctx, features, idx):
        ctx.save_for_backward(idx)
        ctx.num_points = features.shape[2]
        return gather_points(features, idx)

    def gather_backward(ctx, grad_out):
        idx, = ctx.saved_tensors
        return _scatter_back(grad_out, idx, ctx.num_points), None

    def group_forward(ctx, features, idx):
        ctx.save_for_backward(idx)
        ctx.num_points = features.shape[2]
        return group_points(features, idx)

    def interp_forward(ctx, features, idx, weight):
        ctx.save_for_backward(idx, weight)
        ctx.num_points = features.shape[2]
        return three_interpolate(features, idx, weight)

    def interp_backward(ctx, grad_out):
        idx, weight = ctx.saved_tensors
        contribution = grad_out.unsqueeze(-1) * weight.unsqueeze(1)            # (B, C, n, 3)
        return _scatter_back(contribution, idx, ctx.num_points), None, None

    subsample.FurthestPointSampling.forward = staticmethod(fps_forward)
    group.BallQuery.forward = staticmethod(ball_forward)
    upsampling.ThreeNN.forward = staticmethod(three_nn_forward)
    for cls in (subsample.GatherOperation, group.GatherOperation):
        cls.forward, cls.backward = staticmethod(gather_forward), staticmethod(gather_backward)
    group.GroupingOperation.forward = staticmethod(group_forward)
    group.GroupingOperation.backward = staticmethod(gather_backward)
    upsampling.ThreeInterpolate.forward = staticmethod(interp_forward)
    upsampling.ThreeInterpolate.backward = staticmethod(interp_backward)
    _INSTALLED = True
