"""DD3D's point-wise generator: a conditional SIREN mapping scalar noise to 3-D points (spec §1)."""
from __future__ import annotations

import math
import time
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import SYNTHESIZERS
from ..utils.fit import fit_batches
from ..utils.geometry import normalize_to_unit_sphere
from . import coresets
from .base import Synthesizer

_INITS = ('noise', 'real', 'herding', 'kcenter', 'facility')


class _SirenLayer(nn.Module):
    """sin(w0 · (W x + b)); SIREN init: U(±1/fan_in) for the first layer, U(±sqrt(6/fan_in)/w0) otherwise."""

    def __init__(self, in_features: int, out_features: int, w0: float, is_first: bool):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.w0 = w0
        bound = 1.0 / in_features if is_first else math.sqrt(6.0 / in_features) / w0
        nn.init.uniform_(self.linear.weight, -bound, bound)
        nn.init.uniform_(self.linear.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * self.linear(x))


@SYNTHESIZERS.register_module()
class PointGenerator(Synthesizer):
    """Conditional SIREN generator (DD3D, Bo & Wang, ICML 2025, Sec. 4.2; reference code `CINR.py`).

    A cloud is one embedding row (per slot, N(0, 1) init) plus shared SIREN weights. Noise u ~ U[0, 1)
    of shape (S, N, 1) is resampled on every call, so any number of points can be generated:
        m1 = ReLU(E[slot]),  m_{k+1} = ReLU(A_k m_k + a_k)
        h1 = sin(w0_initial (W1 u + b1)) ⊙ m1,  h_k = sin(w0 (W_k h_{k-1} + b_k)) ⊙ m_k,  x = tanh(W_out h)
    As in the reference code (not the paper's Eq. 9), the modulation scales post-sine activations and
    the bias-free output layer ends in tanh. Every cloud is a sampled 1-D curve folded in 3-D.

    Args:
        num_classes, cpc: see `Synthesizer`.
        hidden_dim: SIREN and embedding width. Default 256.
        num_layers: hidden SIREN layers (one modulation vector each). Default 2.
        w0_initial: first-layer frequency; the reference uses 100 for ModelNet40, 50 for ScanObjectNN,
            400 for ShapeNet-part. Default 100.
        w0: frequency of the other layers. Default 1.
        init: 'noise' (train from scratch, as DD3D) or a real start, where every slot is first fitted to a
            real cloud of its class by Chamfer distance (the DD3D paper's stated open limitation): 'real'
            (random clouds), 'herding' or 'kcenter' (the coreset rules, see `coresets.CoresetSelection`).
            Default 'noise'.
        init_steps: Adam steps of the Chamfer fit. Default 300.
        init_lr: learning rate of the Chamfer fit. Default 1e-3.
        init_num_points: points per cloud in the Chamfer fit. Default 256.
        kcenter_first, embed_steps, embed_points, embed_batch, embed_lr, embed_widths, facility_sigma, embed_cache:
            the selection of
            'herding' / 'kcenter' (`coresets.CoresetSelection`, as in `ExplicitPoints`).
    """

    def __init__(self, *, num_classes: int, cpc: int, hidden_dim: int = 256, num_layers: int = 2,
                 w0_initial: float = 100.0, w0: float = 1.0,
                 init: Literal['noise', 'real', 'herding', 'kcenter', 'facility'] = 'noise', init_steps: int = 300,
                 init_lr: float = 1e-3, init_num_points: int = 256, kcenter_first: Literal['mean', 'random'] = 'mean',
                 embed_steps: int = 500, embed_points: int = 256, embed_batch: int = 64, embed_lr: float = 1e-3,
                 embed_widths: Sequence[int] = (64, 128, 1024), facility_sigma: float = 0.5,
                 embed_cache: str | None = None):
        super().__init__(num_classes=num_classes, cpc=cpc)
        if init not in _INITS:
            raise ValueError(f'PointGenerator: init must be one of {_INITS}, got {init!r}')
        if num_layers < 1:
            raise ValueError(f'PointGenerator: num_layers must be >= 1, got {num_layers}')
        if init != 'noise' and int(init_steps) < 1:
            raise ValueError(f"PointGenerator: init {init!r} needs init_steps >= 1, got {init_steps} "
                             f"(for no fit, use init: noise)")
        self.hidden_dim, self.w0_initial, self.w0 = hidden_dim, float(w0_initial), float(w0)
        self.init, self.init_steps, self.init_lr, self.init_num_points = init, init_steps, init_lr, init_num_points
        selection = coresets.CoresetSelection(
            'random' if init in ('noise', 'real') else init, kcenter_first=kcenter_first, embed_steps=embed_steps,
            embed_points=embed_points, embed_batch=embed_batch, embed_lr=embed_lr, embed_widths=embed_widths,
            facility_sigma=facility_sigma, embed_cache=embed_cache)
        self.selection = None if init == 'noise' else selection   # built for 'noise' too: bad keys fail alike
        self.embedding = nn.Embedding(self.num_slots, hidden_dim)
        self.modulators = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(num_layers - 1))
        self.siren = nn.ModuleList([_SirenLayer(1, hidden_dim, self.w0_initial, is_first=True)] +
                                   [_SirenLayer(hidden_dim, hidden_dim, self.w0, is_first=False)
                                    for _ in range(num_layers - 1)])
        self.output = nn.Linear(hidden_dim, 3, bias=False)
        bound = math.sqrt(6.0 / hidden_dim) / self.w0
        nn.init.uniform_(self.output.weight, -bound, bound)

    def synthesize(self, slots: Tensor, num_points: int, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.rand(len(slots), num_points, 1, generator=generator, device=self.output.weight.device)
        return self.generate_from_noise(slots, noise)

    def synthesize_classes(self, labels: Tensor, num_points: int, generators: list[torch.Generator | None]) -> Tensor:
        device = self.output.weight.device
        noise = torch.stack([torch.rand(self.cpc, num_points, 1, generator=g, device=device) for g in generators])
        slots = torch.cat([self.slots_of_class(int(label)) for label in labels])
        return self.generate_from_noise(slots, noise.flatten(0, 1)).view(len(labels), self.cpc, num_points, 3)

    def generate_from_noise(self, slots: Tensor, noise: Tensor) -> Tensor:
        """(S,) slots and (S, N, 1) noise in [0, 1) -> (S, N, 3) points in (-1, 1)."""
        modulation = F.relu(self.embedding(slots))
        h = noise
        for k, layer in enumerate(self.siren):
            if k > 0:
                modulation = F.relu(self.modulators[k - 1](modulation))
            h = layer(h) * modulation.unsqueeze(1)
        return torch.tanh(self.output(h))

    def initialize_from_real(self, clouds: Tensor) -> dict:
        """Fit all slots (embeddings and shared weights) to `clouds` (S, N, 3) by Chamfer distance."""
        if clouds.shape[0] != self.num_slots:
            raise ValueError(f'need one real cloud per slot ({self.num_slots}), got {clouds.shape[0]}')
        slots = torch.arange(self.num_slots, device=clouds.device)

        def step_loss(generator: torch.Generator) -> Tensor:
            pick = torch.randperm(clouds.shape[1], generator=generator)[:self.init_num_points]
            target = normalize_to_unit_sphere(clouds[:, pick.to(clouds.device)])
            fake = normalize_to_unit_sphere(self.synthesize(slots, self.init_num_points, generator))
            return chamfer_distance(fake, target).mean()
        return self.fit(step_loss, 'chamfer')

    def fit(self, step_loss: Callable[[torch.Generator], Tensor], name: str) -> dict:
        """`init_steps` Adam steps (lr `init_lr`) on all weights against `step_loss(generator)`: the loop of
        every real-data fit (a generator seeded 0 draws the fit's randomness). Returns `<name>_start/_end`."""
        optimizer = torch.optim.Adam(self.parameters(), lr=self.init_lr)
        generator = torch.Generator(device='cpu').manual_seed(0)
        start, losses = time.perf_counter(), []
        optimizer.zero_grad(set_to_none=True)
        fit_batches(optimizer, range(self.init_steps), lambda step: step_loss(generator),
                    after_batch=lambda step, loss: losses.append(loss.item()))
        return {f'{name}_start': losses[0], f'{name}_end': losses[-1], 'steps': self.init_steps,
                'seconds': time.perf_counter() - start}

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, hidden_dim={self.hidden_dim}, num_layers={len(self.siren)}, '
                f'w0_initial={self.w0_initial}, w0={self.w0}')


def chamfer_distance(a: Tensor, b: Tensor) -> Tensor:
    """Symmetric mean squared Chamfer distance per cloud: (S, N, 3), (S, M, 3) -> (S,)."""
    d2 = torch.cdist(a, b).square()
    return d2.min(dim=2).values.mean(dim=1) + d2.min(dim=1).values.mean(dim=1)
