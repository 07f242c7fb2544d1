"""PCARotator: project each centred cloud onto its principal axes (DD3D, Sec. 4.1, Eq. 4)."""
from __future__ import annotations

import torch
from torch import Tensor

from openpoints.models.build import MODELS

from ..registry import ROTATORS
from .base import Rotator, check_points


def principal_axes(centred: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of each cloud's covariance, as a right-handed frame in descending order.

    Conventions (the reference code never fixed them; spec §2.3 and §10.3):
      * order: column 0 is the direction of LARGEST variance, column 2 of the smallest;
      * handedness: the third column is flipped where needed so that det(axes) = +1.
    The sign of each of the first two columns is whatever `torch.linalg.eigh` returns, i.e. arbitrary;
    `PCASignRotator` resolves it. Computed in float64 without gradient (see `PCARotator`).

    Args:
        centred: (B, N, 3) clouds, each already centred at its centroid.

    Returns:
        eigenvalues: (B, 3) covariance eigenvalues, descending, in `centred`'s dtype.
        axes: (B, 3, 3) rotation matrices (orthonormal, det +1) whose columns are the principal
            axes; `centred @ axes` gives the coordinates in the principal frame.
    """
    points = centred.detach().to(torch.float64)
    covariance = points.transpose(1, 2) @ points / points.shape[1]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)
    handedness = torch.where(torch.linalg.det(eigenvectors) < 0, -1.0, 1.0).to(eigenvectors.dtype)
    eigenvectors = torch.cat([eigenvectors[..., :2], eigenvectors[..., 2:] * handedness[:, None, None]], dim=-1)
    return eigenvalues.to(centred.dtype), eigenvectors.to(centred.dtype)


@MODELS.register_module()
@ROTATORS.register_module()
class PCARotator(Rotator):
    """Centre each cloud and express it in its principal frame (DD3D, Sec. 4.1, Eq. 4: `(PR)(RᵀU) = PU`).

    The frame is `principal_axes`: descending variance (output axis 0 has the largest variance) and
    right-handed (det +1), so the map is a proper rigid motion. The output is invariant to rotations of
    the input only up to the sign of the first two axes, which eigh leaves arbitrary (4 proper
    ambiguities); use `PCASignRotator` to remove them.

    The frame is computed without gradient: eigenvector gradients scale with 1 / (λ_i - λ_j) and blow up
    for clouds with nearly equal eigenvalues (round objects), so gradients reach `pos` through the
    centring and the projection only, with the frame held constant, as in the reference code, which
    projected once at load time.
    """

    def __init__(self):
        super().__init__()

    def frame(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Centroid (B, 1, 3), differentiable in `pos`, and principal axes (B, 3, 3), det +1, constant."""
        check_points(pos, type(self).__name__)
        origin = pos.mean(dim=1, keepdim=True)
        _, axes = principal_axes(pos - origin)
        return origin, axes
