"""DD3D's part-segmentation generator: the SIREN point generator with part labels fixed by the noise (spec §7.2-7.3)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..registry import SYNTHESIZERS
from ..utils.geometry import normalize_to_unit_sphere
from .point_generator import PointGenerator


@SYNTHESIZERS.register_module()
class PartPointGenerator(PointGenerator):
    """`PointGenerator` whose noise interval decides each point's part.

    For a cloud of category c with part proportions (q_0, ..., q_{P_c-1}), noise u ~ U[0, 1) in
    [q_0 + ... + q_{p-1}, q_0 + ... + q_p) gives part p (global id `cls2parts[c][p]`); the generator then maps
    u to a point, so a part is the image of one noise interval (paper Fig. 2: "noise in (0, 0.45) is
    fuselage"). Unlike the reference, the proportions are computed from the real training data (the engine
    passes them in), are renormalised to sum to 1, and every u lands in a part of its own category.

    Args:
        num_classes: K object categories; cpc: clouds per category.
        part_proportions: K lists, the fraction of points of each part of a category (>= 0, sum > 0); or K·cpc
            lists, one per slot (category-major), so the slots of a category can show different parts (a 0
            leaves a part out of that slot: `PartPool.part_proportions(cpc)` reproduces the data's part
            presence rates, e.g. a table whose optional part most tables lack).
        cls2parts: K lists of global part ids; default consecutive ids, category 0 first (ShapeNet-part order).
        **kwargs: the `PointGenerator` arguments (hidden_dim, num_layers, w0_initial, w0, init, ...); init
            'noise' or 'real' only.
    """

    def __init__(self, *, num_classes: int, cpc: int, part_proportions: Sequence[Sequence[float]],
                 cls2parts: Sequence[Sequence[int]] | None = None, **kwargs):
        super().__init__(num_classes=num_classes, cpc=cpc, **kwargs)
        if self.init not in ('noise', 'real'):
            raise ValueError(f"PartPointGenerator: init must be 'noise' or 'real' (the segmentation engine picks the "
                             f"real clouds by their parts, distill.init_selection), got {self.init!r}")
        if part_proportions is None or len(part_proportions) not in (num_classes, num_classes * cpc):
            raise ValueError(f'PartPointGenerator: part_proportions needs one list per category ({num_classes}) or per '
                             f'slot ({num_classes * cpc}), got {None if part_proportions is None else len(part_proportions)}; '
                             f'the segmentation engine fills it from the real training data (PartPool.part_proportions)')
        given = [[float(v) for v in q] for q in part_proportions]
        per_slot = given if len(given) == num_classes * cpc else [given[c] for c in range(num_classes) for _ in range(cpc)]
        if cls2parts is None:
            starts = torch.tensor([0] + [len(q) for q in per_slot[::cpc]]).cumsum(0).tolist()
            cls2parts = [list(range(starts[c], starts[c + 1])) for c in range(num_classes)]
        if len(cls2parts) != num_classes or any(len(q) != len(cls2parts[slot // cpc]) for slot, q in enumerate(per_slot)):
            raise ValueError('PartPointGenerator: cls2parts and part_proportions must list the same number of parts '
                             'per category (and every slot of a category as many as its category)')
        max_parts = max(len(q) for q in per_slot)
        # interior boundaries cum_0 .. cum_{P-2} per slot, padded with 2 (never reached: u < 1)
        boundaries = torch.full((len(per_slot), max(max_parts - 1, 1)), 2.0, dtype=torch.float64)
        ids = torch.full((num_classes, max_parts), -1, dtype=torch.long)
        for c, part_ids in enumerate(cls2parts):
            ids[c, :len(part_ids)] = torch.tensor([int(p) for p in part_ids])
        for slot, q in enumerate(per_slot):
            q = torch.tensor([float(v) for v in q], dtype=torch.float64)
            if len(q) == 0 or (q < 0).any() or not torch.isfinite(q).all() or q.sum() <= 0:
                raise ValueError(f'PartPointGenerator: the proportions of category {slot // cpc} (slot {slot}) must '
                                 f'be finite, >= 0 and not all 0, got {q.tolist()}')
            boundaries[slot, :len(q) - 1] = (q / q.sum()).cumsum(0)[:-1]
        self.part_proportions = given                  # as given: per category or per slot
        self.slot_proportions = per_slot
        self.cls2parts = [[int(p) for p in part_ids] for part_ids in cls2parts]
        self.register_buffer('boundaries', boundaries.float(), persistent=False)
        self.register_buffer('part_ids', ids, persistent=False)

    def partition(self, noise: Tensor, slots: Tensor) -> Tensor:
        """(S, N, 1) noise in [0, 1) and (S,) slots -> (S, N) global part ids (at cpc 1 slots are categories)."""
        boundaries = self.boundaries.to(noise.device)[slots]                          # (S, P-1)
        local = (noise.float() >= boundaries.unsqueeze(1)).sum(-1)                    # (S, N)
        categories = self.labels.to(noise.device)[slots]
        return self.part_ids.to(noise.device)[categories].gather(1, local)

    def synthesize_with_parts(self, slots: Tensor, num_points: int, generator: torch.Generator | None = None,
                              balance: float = 1.0) -> tuple[Tensor, Tensor]:
        """(S,) slots -> points (S, N, 3), differentiable, and their part ids (S, N).

        `balance` 1: u ~ U[0, 1), so parts get points in proportion to their share of the real data (the
        matching's draw). b < 1: `balanced_noise`, part p gets a share proportional to q_p^b (0: equal shares)
        of the N points, drawn uniformly inside its own interval: the same part surfaces, denser on small parts.
        """
        if float(balance) == 1.0:
            noise = torch.rand(len(slots), num_points, 1, generator=generator)
        else:
            noise = self.balanced_noise(slots.cpu(), num_points, float(balance), generator)
        noise = noise.to(self.output.weight.device)
        slots = slots.to(noise.device)
        return self.generate_from_noise(slots, noise), self.partition(noise, slots)

    def balanced_noise(self, slots: Tensor, num_points: int, balance: float,
                       generator: torch.Generator | None = None) -> Tensor:
        """(S,) slots -> (S, N, 1) noise in [0, 1) with round(N q_p^b / sum_k q_k^b) values (largest
        remainders, so they add up to N) drawn uniformly in part p's interval [cum_{p-1}, cum_p)."""
        if not 0.0 <= balance <= 1.0:
            raise ValueError(f'part balance must be in [0, 1] (1: the data proportions, 0: equal points per part), '
                             f'got {balance}')
        rows = []
        for slot in slots.tolist():
            q = torch.tensor(self.slot_proportions[slot], dtype=torch.float64)
            q = q / q.sum()
            edges = torch.cat([q.new_zeros(1), q.cumsum(0)])
            edges[-1] = 1.0
            share = torch.where(q > 0, q.clamp_min(1e-12) ** balance, q.new_zeros(()))
            exact = num_points * share / share.sum()
            counts = exact.floor().long()
            counts[torch.argsort(exact - counts, descending=True)[:num_points - int(counts.sum())]] += 1
            u = torch.rand(num_points, generator=generator, dtype=torch.float64)
            lo = torch.repeat_interleave(edges[:-1], counts)
            hi = torch.repeat_interleave(edges[1:], counts)
            rows.append((lo + (hi - lo) * u).clamp(max=1 - 1e-7).float())
        return torch.stack(rows).unsqueeze(-1)

    def synthesize(self, slots: Tensor, num_points: int, generator: torch.Generator | None = None) -> Tensor:
        return self.synthesize_with_parts(slots, num_points, generator)[0]

    def initialize_from_real(self, clouds: Tensor, parts: Tensor | None = None) -> dict:
        """Fit every slot to a real cloud (S, N, 3) of its category; with `parts` (S, N), part by part.

        The part-aware fit is a Chamfer distance in which a point only sees points of its own part: each
        noise interval is pulled onto the real part it labels, so the labels are right from the start.
        Points of a part absent from the other cloud are left out. Without `parts`: PointGenerator's fit.
        """
        if parts is None:
            return super().initialize_from_real(clouds)
        if clouds.shape[0] != self.num_slots or parts.shape != clouds.shape[:2]:
            raise ValueError(f'need one real cloud per slot ({self.num_slots}) with part ids (S, N), got '
                             f'{tuple(clouds.shape)} and {tuple(parts.shape)}')
        slots = torch.arange(self.num_slots, device=clouds.device)

        def step_loss(generator: torch.Generator) -> Tensor:
            pick = torch.randperm(clouds.shape[1], generator=generator)[:self.init_num_points].to(clouds.device)
            target, target_parts = normalize_to_unit_sphere(clouds[:, pick]), parts[:, pick]
            fake, fake_parts = self.synthesize_with_parts(slots, self.init_num_points, generator)
            return part_chamfer_distance(normalize_to_unit_sphere(fake), fake_parts, target, target_parts).mean()
        return self.fit(step_loss, 'part_chamfer')

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, parts_per_class={[len(q) for q in self.part_proportions]}'


def part_chamfer_distance(a: Tensor, a_parts: Tensor, b: Tensor, b_parts: Tensor) -> Tensor:
    """Chamfer distance per cloud where points match only points of the same part: (S,) from (S, N, 3),
    (S, N), (S, M, 3), (S, M). Points whose part has no point in the other cloud are left out."""
    same = a_parts.unsqueeze(2) == b_parts.unsqueeze(1)                                   # (S, N, M)
    d2 = torch.cdist(a, b).square().masked_fill(~same, float('inf'))
    return _mean_finite(d2.min(dim=2).values) + _mean_finite(d2.min(dim=1).values)


def _mean_finite(values: Tensor) -> Tensor:
    keep = torch.isfinite(values)
    return torch.where(keep, values, values.new_zeros(())).sum(1) / keep.sum(1).clamp_min(1)
