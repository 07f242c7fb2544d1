"""LearnedSignRotator: PCA plus the DD3D paper's learnable multi-frequency sign rule (Eq. 5-6)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from openpoints.models.build import MODELS

from ..registry import ROTATORS
from .base import check_points
from .pca import PCARotator, principal_axes
from .pca_sign import hard_sign


@MODELS.register_module()
@ROTATORS.register_module()
class LearnedSignRotator(PCARotator):
    """PCA frame, then per-axis signs s_a = sign(Σ_k w_k · mean_n sin(k · w0 · p_na)), k = 1..t.

    DD3D paper, Sec. 4.1, Eq. 5-6: sine (odd) Fourier features of each principal coordinate, average
    pooled over the points, decoded by a bias-free vector w ∈ R^t. Odd features and no bias keep the
    score sign-equivariant, so the output is invariant to rotations and reflections of the input exactly
    as for `PCASignRotator` (same sign/handedness rule: all three signs are decided, det ±1).

    Departures from the paper, and why:
      * The paper's hard Sign() gives w no gradient (spec §2.2), so the sign here is straight-through:
        the forward pass uses the hard sign (ties → +1), the backward pass the gradient of
        tanh(score / temperature). Only w receives this surrogate gradient; the features are computed
        from detached coordinates, so `pos` gets gradients through the centring and projection only,
        as with the fixed rule (a surrogate gradient into the synthetic points would bias their update).
      * w starts at [1, 0, ..., 0], which reproduces `PCASignRotator` with the same w0.

    Args:
        w0: base frequency of the sines. Default 1.0 (the reference's fixed-rule value).
        num_frequencies: t, the number of harmonics k = 1..t. Default 8.
        temperature: scale of the tanh surrogate; the surrogate slope at score 0 is 1 / temperature.
            Default 0.1, around the size of typical scores for unit-sphere clouds.
    """

    def __init__(self, *, w0: float = 1.0, num_frequencies: int = 8, temperature: float = 0.1):
        super().__init__()
        name = type(self).__name__
        if isinstance(w0, bool) or not isinstance(w0, (int, float)) or not w0 > 0:
            raise ValueError(f'{name}: w0 must be a positive number, got {w0!r}.')
        if isinstance(num_frequencies, bool) or not isinstance(num_frequencies, int) or num_frequencies < 1:
            raise ValueError(f'{name}: num_frequencies must be an int >= 1, got {num_frequencies!r}.')
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f'{name}: temperature must be a positive number, got {temperature!r}.')
        self.w0 = float(w0)
        self.num_frequencies = num_frequencies
        self.temperature = float(temperature)
        weight = torch.zeros(num_frequencies)
        weight[0] = 1.0
        self.weight = nn.Parameter(weight)  # w in Eq. 6
        self.register_buffer('harmonics', torch.arange(1, num_frequencies + 1, dtype=torch.float32),
                             persistent=False)

    def extra_repr(self) -> str:
        return f'w0={self.w0}, num_frequencies={self.num_frequencies}, temperature={self.temperature}'

    def sign_scores(self, coords: Tensor) -> Tensor:
        """Decoded scores w · Pool(H) for coordinates already in the principal frame.

        Args:
            coords: (B, N, 3) principal-frame coordinates (treated as constants).

        Returns:
            (B, 3) scores; their signs are the per-axis signs. Differentiable in `self.weight`.
        """
        frequencies = (self.w0 * self.harmonics).to(coords.dtype)               # (t,)
        features = torch.sin(coords.detach()[:, :, None, :] * frequencies[:, None]).mean(dim=1)  # (B, t, 3)
        return torch.einsum('btc,t->bc', features, self.weight.to(coords.dtype))

    def frame(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Centroid (B, 1, 3) and sign-resolved principal axes (B, 3, 3), det ±1; the signs carry the
        straight-through gradient to `self.weight`."""
        check_points(pos, type(self).__name__)
        origin = pos.mean(dim=1, keepdim=True)
        centred = pos - origin
        _, axes = principal_axes(centred)
        score = self.sign_scores(centred @ axes)
        soft = torch.tanh(score / self.temperature)
        sign = hard_sign(score.detach()) + (soft - soft.detach())  # value: hard sign; gradient: tanh's
        return origin, axes * sign[:, None, :]
