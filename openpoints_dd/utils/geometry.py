"""Batched point-cloud geometry in pure torch: unit-sphere normalisation, point subsampling, rotation
matrices (uniform SO(3), about one axis, from Euler angles) and DD3D's evaluation augmentations.

Every function works on any device and dtype; random ones take an optional `torch.Generator`.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

__all__ = [
    'UP_AXIS', 'normalize_to_unit_sphere', 'subsample_points', 'random_rotation_matrices',
    'random_z_rotation_matrices', 'euler_to_matrix', 'random_scale', 'jitter', 'rotate_perturbation',
]

# The vertical axis of our ModelNet40Ply2048 copy is z (index 2), not y as in the common PointNet h5
# release: over the training files, tall classes (person, door, bottle, lamp, stool) have their
# largest mean extent along z (about 1.5-1.8 vs 0.3-0.8), and flat ones (airplane, bed, table) their
# smallest (0.5-0.75). Checked on /work/shared/data/ModelNet40Ply2048 (ply_data_train0..4.h5).
UP_AXIS = 2


def normalize_to_unit_sphere(pos: Tensor, eps: float = 1e-4) -> Tensor:
    """Centre every cloud at its centroid and divide by its largest point norm (plus `eps`).

    DD3D's `provider.normalize_data`, batched and differentiable. With the default `eps` the farthest
    point ends up at radius 1 / (1 + 1e-4 / r), just inside the unit sphere.

    Args:
        pos: (B, N, 3) floating point clouds.
        eps: added to the maximum radius so a collapsed cloud (all points equal) does not divide by
            zero. Default 1e-4, the reference's value.

    Returns:
        (B, N, 3) tensor of `pos`'s dtype and device.

    Raises:
        ValueError: if `pos` is not (B, N, 3).
    """
    _check_points(pos, 'pos')
    centred = pos - pos.mean(dim=1, keepdim=True)
    radius = centred.norm(dim=-1).amax(dim=1)  # (B,)
    return centred / (radius + eps)[:, None, None]


def subsample_points(pos: Tensor, num_points: int, generator: torch.Generator | None = None) -> Tensor:
    """Keep one random subset of point indices, shared by the whole batch, then renormalise each cloud.

    As DD3D does for real batches when it trains at fewer points than the data holds (spec §3.4): one
    `randperm` for the batch, not one per cloud, so the cost is a single gather.

    Args:
        pos: (B, N, 3) floating point clouds.
        num_points: how many points to keep, 1 <= num_points <= N (drawn without replacement).
        generator: optional RNG for the index draw; default torch's global RNG. It may live on any
            device; the indices are moved to `pos.device`.

    Returns:
        (B, num_points, 3) clouds, unit-sphere normalised (see `normalize_to_unit_sphere`).

    Raises:
        ValueError: if `pos` is not (B, N, 3) or `num_points` is not in [1, N].
    """
    _check_points(pos, 'pos')
    total = pos.shape[1]
    if isinstance(num_points, bool) or not isinstance(num_points, int) or not 1 <= num_points <= total:
        raise ValueError(f'num_points must be an int in [1, {total}] (the clouds hold {total} points and '
                         f'sampling is without replacement), got {num_points!r}.')
    index = torch.randperm(total, generator=generator, device=_rng_device(generator, pos.device))
    return normalize_to_unit_sphere(pos[:, index[:num_points].to(pos.device)])


def random_rotation_matrices(n: int, generator: torch.Generator | None = None, *,
                             dtype: torch.dtype = torch.float32,
                             device: torch.device | str | None = None) -> Tensor:
    """Rotation matrices drawn uniformly (Haar measure) from SO(3).

    QR of a standard Gaussian matrix, with the columns' signs fixed so that R has a positive diagonal
    (that makes Q Haar-distributed on O(3)); a Q with det -1 is then negated, which maps the Haar
    measure on O(3) onto that of SO(3) because -I is central. Computed in float64, then cast.

    Args:
        n: number of matrices (>= 0).
        generator: optional RNG; default torch's global RNG.
        dtype: floating dtype of the result. Default float32.
        device: device of the result. Default the generator's device, else CPU.

    Returns:
        (n, 3, 3) orthonormal matrices with det +1. Being uniform, they can rotate row-vector clouds
        as `pos @ R` or `pos @ R.transpose(-1, -2)` alike.
    """
    _check_count(n)
    gaussian = torch.randn(n, 3, 3, generator=generator, dtype=torch.float64,
                           device=_rng_device(generator, device))
    q, r = torch.linalg.qr(gaussian)
    diagonal_sign = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0)
    q = q * diagonal_sign[:, None, :]
    q = q * torch.linalg.det(q).sign()[:, None, None]
    return q.to(dtype=dtype, device=device if device is not None else q.device)


def random_z_rotation_matrices(n: int, generator: torch.Generator | None = None, *, axis: int = UP_AXIS,
                               dtype: torch.dtype = torch.float32,
                               device: torch.device | str | None = None) -> Tensor:
    """Rotations about one coordinate axis (default the data's up axis, z) by angles uniform in [0, 2π).

    Args:
        n: number of matrices (>= 0).
        generator: optional RNG; default torch's global RNG.
        axis: the fixed axis, 0 (x), 1 (y) or 2 (z). Default `UP_AXIS` = 2, ModelNet40Ply2048's up
            axis (see the note on `UP_AXIS`).
        dtype: floating dtype of the result. Default float32.
        device: device of the result. Default the generator's device, else CPU.

    Returns:
        (n, 3, 3) rotations that leave coordinate `axis` unchanged (`(pos @ R)[..., axis] ==
        pos[..., axis]`).

    Raises:
        ValueError: if `axis` is not 0, 1 or 2.
    """
    _check_count(n)
    if axis not in (0, 1, 2):
        raise ValueError(f'axis must be 0 (x), 1 (y) or 2 (z), got {axis!r}.')
    angle = torch.rand(n, generator=generator, dtype=torch.float64,
                       device=_rng_device(generator, device)) * (2 * math.pi)
    angles = torch.zeros(n, 3, dtype=torch.float64, device=angle.device)
    angles[:, axis] = angle
    matrices = euler_to_matrix(angles)
    return matrices.to(dtype=dtype, device=device if device is not None else matrices.device)


def euler_to_matrix(angles: Tensor) -> Tensor:
    """Rotation matrices R = Rz(γ) · Ry(β) · Rx(α) from angles (α, β, γ) about x, y and z, in radians.

    The same composition as the reference's `provider.rotate_perturbation_point_cloud`. Each factor is
    the usual right-handed matrix acting on column vectors, e.g. Rz(γ) = [[cos γ, -sin γ, 0],
    [sin γ, cos γ, 0], [0, 0, 1]]. Differentiable in `angles`.

    Args:
        angles: (..., 3) floating tensor, last dimension ordered (x, y, z); typically (B, 3).

    Returns:
        (..., 3, 3) rotation matrices, same dtype and device as `angles`.

    Raises:
        ValueError: if the last dimension of `angles` is not 3.
    """
    if not torch.is_tensor(angles) or angles.ndim < 1 or angles.shape[-1] != 3:
        shape = tuple(angles.shape) if torch.is_tensor(angles) else type(angles).__name__
        raise ValueError(f'angles must be (..., 3) ordered (x, y, z), got {shape}.')
    cos, sin = angles.cos().unbind(-1), angles.sin().unbind(-1)
    cx, cy, cz = cos
    sx, sy, sz = sin
    # Rz @ Ry @ Rx written out, row by row.
    rows = [
        torch.stack([cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx], dim=-1),
        torch.stack([sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx], dim=-1),
        torch.stack([-sy, cy * sx, cy * cx], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def _euler_to_matrix_naive(angles: Tensor) -> Tensor:
    """Readable twin of `euler_to_matrix` for tests: builds the three factors and multiplies them."""
    out = torch.empty(*angles.shape[:-1], 3, 3, dtype=angles.dtype, device=angles.device)
    for index in itertools.product(*(range(size) for size in angles.shape[:-1])):
        a, b, g = (float(v) for v in angles[index])
        rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]],
                          dtype=torch.float64)
        ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]],
                          dtype=torch.float64)
        rz = torch.tensor([[math.cos(g), -math.sin(g), 0], [math.sin(g), math.cos(g), 0], [0, 0, 1]],
                          dtype=torch.float64)
        out[index] = (rz @ ry @ rx).to(angles.dtype)
    return out


def random_scale(pos: Tensor, low: float = 0.8, high: float = 1.25,
                 generator: torch.Generator | None = None) -> Tensor:
    """Scale every cloud by its own factor drawn uniformly from [low, high) (DD3D evaluation augmentation).

    Args:
        pos: (B, N, 3) floating point clouds.
        low: smallest factor. Default 0.8.
        high: largest factor (exclusive). Default 1.25.
        generator: optional RNG; default torch's global RNG.

    Returns:
        (B, N, 3) scaled clouds (scaled about the origin, not the centroid, as the reference does).

    Raises:
        ValueError: if `pos` is not (B, N, 3) or not 0 < low <= high.
    """
    _check_points(pos, 'pos')
    if not 0 < low <= high:
        raise ValueError(f'random_scale needs 0 < low <= high, got low={low}, high={high}.')
    factor = torch.rand(pos.shape[0], 1, 1, generator=generator, dtype=pos.dtype,
                        device=_rng_device(generator, pos.device)).to(pos.device)
    return pos * (low + (high - low) * factor)


def jitter(pos: Tensor, sigma: float = 0.01, clip: float = 0.05,
           generator: torch.Generator | None = None) -> Tensor:
    """Add per-point, per-coordinate Gaussian noise N(0, sigma²) clipped to [-clip, clip].

    Args:
        pos: (B, N, 3) floating point clouds.
        sigma: noise standard deviation. Default 0.01.
        clip: bound on the absolute noise. Default 0.05.
        generator: optional RNG; default torch's global RNG.

    Returns:
        (B, N, 3) jittered clouds.

    Raises:
        ValueError: if `pos` is not (B, N, 3) or sigma or clip is negative.
    """
    _check_points(pos, 'pos')
    if sigma < 0 or clip < 0:
        raise ValueError(f'jitter needs sigma >= 0 and clip >= 0, got sigma={sigma}, clip={clip}.')
    noise = torch.randn(pos.shape, generator=generator, dtype=pos.dtype,
                        device=_rng_device(generator, pos.device)).to(pos.device)
    return pos + (sigma * noise).clamp(-clip, clip)


def rotate_perturbation(pos: Tensor, sigma: float = 0.06, clip: float = 0.18,
                        generator: torch.Generator | None = None) -> Tensor:
    """Rotate every cloud by a small random rotation: angles ~ N(0, sigma²) clipped to ±clip radians.

    As the reference: R = Rz·Ry·Rx (`euler_to_matrix`) and the points are multiplied on the right,
    `pos @ R`, about the origin.

    Args:
        pos: (B, N, 3) floating point clouds.
        sigma: angle standard deviation in radians. Default 0.06.
        clip: bound on each absolute angle in radians. Default 0.18.
        generator: optional RNG; default torch's global RNG.

    Returns:
        (B, N, 3) rotated clouds.

    Raises:
        ValueError: if `pos` is not (B, N, 3) or sigma or clip is negative.
    """
    _check_points(pos, 'pos')
    if sigma < 0 or clip < 0:
        raise ValueError(f'rotate_perturbation needs sigma >= 0 and clip >= 0, got sigma={sigma}, '
                         f'clip={clip}.')
    angles = torch.randn(pos.shape[0], 3, generator=generator, dtype=pos.dtype,
                         device=_rng_device(generator, pos.device)).to(pos.device)
    return pos @ euler_to_matrix((sigma * angles).clamp(-clip, clip))


def _check_points(pos: Tensor, name: str) -> None:
    if not torch.is_tensor(pos) or pos.ndim != 3 or pos.shape[-1] != 3:
        shape = tuple(pos.shape) if torch.is_tensor(pos) else type(pos).__name__
        raise ValueError(f'{name} must be (B, N, 3), got {shape}. Did you pass features in (B, C, N)?')
    if not pos.is_floating_point():
        raise ValueError(f'{name} must be a floating tensor, got {pos.dtype}.')


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f'n must be a non-negative int, got {n!r}.')


def _rng_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    """Where to draw random numbers: on the generator's device when one is given (torch requires it)."""
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device('cpu')
