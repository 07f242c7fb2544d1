"""The interface every synthesizer implements: a parameterisation of K·cpc synthetic clouds."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .coresets import CoresetSelection


class Synthesizer(nn.Module, ABC):
    """K classes × `cpc` slots; slot i belongs to class i // cpc (class-major, as in DD3D and DC).

    Args:
        num_classes: K.
        cpc: synthetic clouds per class.
    """

    #: How the synthesizer starts: 'noise' / 'none' (no real clouds) or a real start ('real' = random clouds,
    #: 'herding', 'kcenter'); `select_from_pool` picks the clouds that `initialize_from_real` then takes.
    init: str = 'none'
    #: The rule `select_from_pool` follows; None: no real start.
    selection: CoresetSelection | None = None
    #: Clouds one slot trains as: `synthesize` returns this many per slot, in slot order (MorphedClouds: a slot's
    #: anchors and morphs). Labels per cloud: `cloud_labels`.
    clouds_per_slot: int = 1
    #: The points of every cloud when the synthesizer fixes them (MorphedClouds); None: as many as asked for.
    resolution: int | None = None
    #: The most points a cloud can be asked for when the synthesizer stores its points (ExplicitPoints); None: any.
    max_points: int | None = None

    def __init__(self, *, num_classes: int, cpc: int):
        super().__init__()
        if num_classes < 1 or cpc < 1:
            raise ValueError(f'num_classes and cpc must be >= 1, got {num_classes} and {cpc}')
        self.num_classes, self.cpc = int(num_classes), int(cpc)
        self.register_buffer('labels', torch.arange(num_classes).repeat_interleave(cpc), persistent=False)

    @property
    def num_slots(self) -> int:
        return self.num_classes * self.cpc

    @property
    def cloud_labels(self) -> Tensor:
        """(num_slots · clouds_per_slot,) the class of every cloud `synthesize` returns for all slots."""
        return self.labels.repeat_interleave(self.clouds_per_slot)

    def cloud_slots(self, slots: Tensor) -> Tensor:
        """The slot of every cloud `synthesize(slots, ...)` returns (per-slot rotators need it)."""
        return slots.repeat_interleave(self.clouds_per_slot)

    def accounting(self, num_points: int) -> dict:
        """What the set costs and what a trainer sees, per class: stored floats (the synthesizer's parameters;
        a shared generator's divided over the classes), training clouds, and points per training cloud
        (`num_points`, the export resolution, unless the synthesizer fixes its own)."""
        floats = sum(p.numel() for p in self.parameters())
        return {'floats_per_class': round(floats / self.num_classes, 1),
                'training_clouds_per_class': self.cpc * self.clouds_per_slot, 'points_per_training_cloud': num_points}

    def param_groups(self) -> list[dict]:
        """Optimizer groups; an entry's `lr_scale` multiplies the synthesizer's learning rate. Default: one group."""
        return [{'params': list(self.parameters())}]

    def slots_of_class(self, label: int) -> Tensor:
        """(cpc,) int64 slot indices of one class."""
        return torch.arange(label * self.cpc, (label + 1) * self.cpc, device=self.labels.device)

    @abstractmethod
    def synthesize(self, slots: Tensor, num_points: int, generator: torch.Generator | None = None) -> Tensor:
        """Clouds of the given slots: (S,) int64 -> (S · clouds_per_slot, num_points, 3), differentiable w.r.t.
        parameters (a synthesizer with a resolution of its own returns that many points)."""

    def synthesize_classes(self, labels: Tensor, num_points: int, generators: list[torch.Generator | None]) -> Tensor:
        """(G, cpc · clouds_per_slot, num_points, 3) clouds of G classes, class g's randomness from generators[g]: the same clouds as
        one `synthesize(slots_of_class(g), ...)` call per class. Synthesizers override it to make one call."""
        return torch.stack([self.synthesize(self.slots_of_class(int(label)), num_points, generator)
                            for label, generator in zip(labels, generators)])

    def select_from_pool(self, pool, generator: torch.Generator) -> tuple[Tensor, Tensor] | None:
        """The real clouds this synthesizer starts from, by its `init` rule, or None (no real start).

        Args:
            pool: the `RealPool` of training clouds.
            generator: seeds the draw ('real' / 'random'), the selection network and its point subsets.

        Returns:
            ((K·cpc, N, 3) unit-sphere clouds, class-major; (K·cpc,) their pool indices), or None.
        """
        if self.selection is None:
            return None
        return self.selection.select(pool, self.cpc, generator, device=self.labels.device)

    def initialize_from_real(self, clouds: Tensor) -> dict:
        """Start from real clouds (S, N, 3), one per slot, unit-sphere normalised. Returns a small report."""
        raise NotImplementedError(f'{type(self).__name__} cannot start from real clouds')

    def project_(self) -> None:
        """Put the parameters back into the set they must stay in, after every optimizer step (projected
        gradient descent). Nothing by default."""

    def extra_repr(self) -> str:
        text = f'num_classes={self.num_classes}, cpc={self.cpc}, init={self.init!r}'
        return ', '.join(filter(None, [text, self.selection.describe() if self.selection is not None else '']))


def checked_max_radius(owner: str, max_radius: float | None) -> float | None:
    """`max_radius` as a float, None kept; a clear error for anything not positive."""
    if max_radius is None:
        return None
    if isinstance(max_radius, bool) or not isinstance(max_radius, (int, float)) or not max_radius > 0:
        raise ValueError(f'{owner}: max_radius must be a positive number or null, got {max_radius!r}')
    return float(max_radius)


def project_into_ball_(points: Tensor, max_radius: float | None) -> None:
    """Put every point (last dimension 3) farther than `max_radius` from the origin back on that sphere, in place.

    Every cloud is renormalised to the unit sphere by its farthest point before a network sees it, so one point
    thrown out by a large step shrinks the rest of its cloud; real starts lie in the unit ball. None: nothing."""
    if max_radius is None:
        return
    with torch.no_grad():
        points.mul_((max_radius / points.norm(dim=-1, keepdim=True)).clamp(max=1.0))
