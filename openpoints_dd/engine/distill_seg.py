"""Part-segmentation distillation (DD3D spec §7): the classification loop of `Distiller` with part labels.

`SegDistiller` keeps Distiller's iteration loop, budget, checkpoints, scheduler and export, and replaces
what differs: the backbone (a segmentation network with the category as input), the matching step (real
clouds and synthetic clouds both carry per-point part ids; `PartGradientMatching` alternates global and
local steps), the BatchNorm handling (running statistics refreshed on real clouds, then frozen while
matching, as DC/DD3D do) and the inner loop (per-point cross-entropy). The synthesizer's part proportions
come from the real training data. `pipeline.run_distillation` runs it for `task: segmentation`.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openpoints.models import build_model_from_cfg
from openpoints.utils import EasyConfig

from ..data.part_pool import PartPool
from ..settings import resolve_distill_config
from ..utils.geometry import normalize_to_unit_sphere
from ..utils.fit import fit_epochs
from ..utils import distributed
from .distill import Distiller

logger = logging.getLogger(__name__)


class SegDistiller(Distiller):
    """Distiller for part segmentation.

    Args:
        cfg: the experiment config; `distill.synthesizer` must be a `PartPointGenerator` (its
            `part_proportions` and `cls2parts` are filled in from `pool`), `distill.objective` an objective
            taking part ids (`PartGradientMatching`), the rotator identity (the reference has none for
            segmentation). `distill.bn_warmup` real clouds per category refresh the BatchNorm statistics
            before every matching step (default 8, as the reference).
        pool: the real training `PartPool`.
        run_dir, evaluate_fn: as `Distiller`.
    """

    TASK = 'segmentation'

    def __init__(self, cfg: Mapping[str, Any], pool: PartPool, run_dir: str | os.PathLike,
                 evaluate_fn: Callable[['Distiller', int], dict] | None = None):
        cfg = resolve_distill_config(cfg, task=self.TASK)   # a copy
        d = cfg['distill']
        if d['synthesizer'].get('NAME') != 'PartPointGenerator':
            raise ValueError(f"segmentation distillation needs distill.synthesizer.NAME: PartPointGenerator (the "
                             f"noise decides each point's part), got {d['synthesizer'].get('NAME')!r}")
        rotator = d['rotator']['NAME']
        if rotator != 'IdentityRotator':
            raise ValueError(f'segmentation distillation runs without a rotator (spec §7.4); set '
                             f'distill.rotator.NAME: IdentityRotator, got {rotator!r}')
        slot_presence = d['part_presence'] == 'slot'   # else every part of the category (the reference)
        d['synthesizer']['part_proportions'] = pool.part_proportions(d['cpc'] if slot_presence else None)
        d['synthesizer']['cls2parts'] = pool.cls2parts
        super().__init__(cfg, pool, run_dir, evaluate_fn)
        if self.objective.task != 'segmentation':
            raise ValueError(f'segmentation distillation needs an objective that matches part labels '
                             f'(PartGradientMatching), got {type(self.objective).__name__}')

    def build_backbone(self) -> nn.Module:
        backbone_cfg = EasyConfig(dict(self.d['backbone']))
        backbone_cfg.setdefault('num_classes', self.pool.num_parts)
        backbone_cfg.setdefault('num_shape_classes', self.num_classes)
        return build_model_from_cfg(backbone_cfg).to(self.device)

    def initialize(self) -> dict:
        """`init: real`: fit each slot to a real cloud of its category, part by part.

        `distill.init_selection`: 'parts' (default) picks random clouds that show exactly the slot's parts
        (`PartPool.select_by_parts`; with `part_presence: category`, every part), 'random' any cloud. A part
        missing from the target cloud leaves its noise interval unconstrained by the part-by-part fit: those
        points (13 % of a table's on the embedded data) land anywhere with that part's label.
        """
        if self.synthesizer.init != 'real':
            return {}
        selection = self.d['init_selection']
        generator = torch.Generator().manual_seed(self.seed)
        if selection == 'parts':
            clouds, index = self.pool.select_by_parts(self.synthesizer.slot_proportions, self.synthesizer.cpc, generator)
        else:
            clouds, index = self.pool.random_per_class(self.synthesizer.cpc, generator)
        report = self.synthesizer.initialize_from_real(clouds.to(self.device), self.pool.parts[index].to(self.device))
        logger.info('generator fitted to real clouds part by part: %s', report)
        return {**report, 'real_indices': index.tolist()}

    def synthetic_clouds_with_parts(self, slots: Tensor, num_points: int,
                                    generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Synthesize and normalise to the unit sphere: the same path in matching, inner loop and export."""
        pos, parts = self.synthesizer.synthesize_with_parts(slots.to(self.device), num_points, generator)
        return normalize_to_unit_sphere(pos), parts.to(self.device)

    def refresh_batchnorm(self, backbone: nn.Module, iteration: int, step: int, num_points: int) -> None:
        """One train-mode forward on a few real clouds per category, then every BatchNorm in eval mode."""
        per_class = min(self.d['bn_warmup'], int(self.pool.counts.min()))
        backbone.train()
        if per_class > 0:
            pos = torch.cat([self.pool.sample(c, per_class, num_points, self._generator(iteration, 4, step, c))[0]
                             for c in range(self.num_classes)])
            categories = torch.arange(self.num_classes).repeat_interleave(per_class)
            with torch.no_grad():
                backbone({'pos': pos.to(self.device), 'cls': categories.to(self.device)})
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

    def accumulate_matching_gradients(self, backbone: nn.Module, iteration: int, step: int, num_points: int) -> float:
        """One outer step: per chunk of categories a real batch and the synthetic clouds of each, with part ids,
        matched globally or locally (the objective's alternation) and back-propagated chunk by chunk. With the
        BatchNorm statistics frozen the backbone is per-sample separable, so a chunk holds several categories."""
        batch_real = min(int(self.d['batch_real']), int(self.pool.counts.min()))
        self.refresh_batchnorm(backbone, iteration, step, num_points)
        local = self.objective.is_local(step)
        categories = distributed.shard(range(self.num_classes))
        chunk = self.class_chunk(backbone, batch_real, num_points)
        total = 0.0
        for start in range(0, len(categories), chunk):
            labels = categories[start:start + chunk]
            real, real_parts = zip(*[self.pool.sample(c, batch_real, num_points, self._generator(iteration, 1, step, c))
                                     for c in labels])
            syn, syn_parts = zip(*[self.synthetic_clouds_with_parts(self.synthesizer.slots_of_class(c), num_points,
                                                                    self._generator(iteration, 2, step, c))
                                   for c in labels])
            losses = self.objective.match_classes(
                backbone, torch.stack(syn), torch.stack(real).to(self.device), torch.tensor(labels, device=self.device),
                syn_parts=torch.stack(syn_parts), real_parts=torch.stack(real_parts).to(self.device),
                part_ids=[self.pool.cls2parts[c] for c in labels], local=local)
            self.check_finite(losses, labels, iteration, step)
            losses.sum().backward(inputs=self.matched_parameters)   # frees this chunk's graph; no backbone gradients
            total += losses.detach().sum().item()
        backbone.train()
        distributed.all_reduce_gradients(self.parameters)
        return distributed.sum_scalar(total, self.device)

    def train_backbone(self, backbone: nn.Module, optimizer: torch.optim.Optimizer, epochs: int,
                       num_points: int, generator: torch.Generator) -> None:
        """The inner loop: `epochs` of SGD on freshly synthesized, detached clouds and their part ids."""
        with torch.no_grad():
            clouds, parts = self.synthetic_clouds_with_parts(torch.arange(self.synthesizer.num_slots), num_points,
                                                             generator)
        categories = self.synthesizer.labels.to(self.device)
        backbone.train()
        fit_epochs(optimizer, lambda pos, y, c: F.cross_entropy(backbone({'pos': pos, 'cls': c}), y),
                   lambda epoch, g: (clouds, parts, categories), epochs=epochs,
                   batch_size=int(self.d.get('inner_batch', 32)), generator=generator, device=self.device)

    def metadata(self) -> dict:
        return {**super().metadata(), 'task': 'segmentation',
                'segmentation': {'num_parts': self.pool.num_parts, 'cls2parts': self.pool.cls2parts,
                                 'part_names': self.pool.part_names,
                                 'part_proportions': self.synthesizer.slot_proportions}}
