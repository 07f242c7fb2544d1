"""Part segmentation (DD3D spec §7): per-point part labels, the category as the network's second input.

- `SegDistiller`: Distiller's iteration loop, budget, checkpoints, scheduler and export, with what differs: the
  backbone (a segmentation network with the category as input), the matching step (real and synthetic clouds both
  carry per-point part ids; `PartGradientMatching` alternates global and local steps), the BatchNorm handling
  (running statistics refreshed on real clouds, then frozen while matching, as DC/DD3D do) and the inner loop
  (per-point cross-entropy). The synthesizer's part proportions come from the real training data.
- `SegTrainer`: PointNeXt's `examples/shapenetpart/main.py` on Trainer's machinery (run dir, log, safetensors
  checkpoints best/last, resume, val/test modes): the batch (per-point part targets, `cls` the category, features
  from `feature_keys`), the model check and the evaluation (`evaluate_seg`: instance and class mIoU with logits
  restricted to the category's parts, the standard protocol that picks the best epoch, and unrestricted beside).
- `PartSegmentation`: the task for the evaluation protocol (pool, samplers, head, batch, figures).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openpoints.models import build_model_from_cfg
from openpoints.utils import EasyConfig

from ...data.part_pool import PartPool
from ...data.real_pool import random_selection_generator
from ...labels import DatasetIdentity, parts_of
from ...settings import resolve_distill_config
from ...utils import distributed
from ...utils.config import to_easy
from ...utils.fit import fit_epochs
from ...utils.geometry import normalize_to_unit_sphere
from ..distill import Distiller
from ..evaluate_seg import (PartSampler, fixed_part_sampler, part_batch, predict_parts, shape_ious, summarize_ious,
                            test_miou)
from ..train_cls import Trainer
from .base import Task

logger = logging.getLogger(__name__)

SEG_BEST_NOTE = ("best epoch = papers' protocol: the validated epoch with the highest instance mIoU on the "
                 "evaluation split (optimistic when that split is the test set); `last_*` is the final epoch")


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


class SegTrainer(Trainer):
    """`train_cls.Trainer` with part targets and mIoU evaluation."""

    TASK = 'segmentation'
    METRIC = 'instance_miou'
    HEADLINE = ('instance_miou', 'class_miou', 'unrestricted_instance_miou', 'unrestricted_class_miou')
    BEST_NOTE = SEG_BEST_NOTE

    def __init__(self, cfg: Mapping[str, Any], run_dir: Path, overrides: Sequence[str] | None):
        super().__init__(cfg, run_dir, overrides)
        self.feature_keys = str(self.cfg.get('feature_keys') or 'pos')
        self.cls2parts: list[list[int]] | None = None

    @torch.no_grad()
    def _check_head(self, model: nn.Module) -> None:
        """2 random clouds of category 0 through the model: it must give (2, num_classes, N) part logits."""
        generator = torch.Generator().manual_seed(0)
        points = torch.randn(2, self.num_points, 3, generator=generator).to(self.device)
        data = {'pos': points, 'x': torch.randn(2, self.in_channels, self.num_points, generator=generator).to(self.device),
                'cls': torch.zeros(2, 1, dtype=torch.long, device=self.device)}
        model.eval()
        logits = model(data)
        model.train()
        if tuple(logits.shape) != (2, self.num_classes, self.num_points):
            raise ValueError(f'the model {self.cfg.model.get("NAME")} outputs {tuple(logits.shape)} for 2 clouds of '
                             f'{self.num_points} points; part segmentation needs (2, num_classes={self.num_classes}, '
                             f'{self.num_points}): set the head size (model.num_classes, or model.cls_args.num_classes '
                             f'for BasePartSeg) to the number of part labels')

    def _check_same_classes(self, train, val) -> None:
        """Part datasets are compared by their parts per category in `_check_dataset` (ShapeNetPartNormal keeps its
        category names in a form of its own)."""

    def _check_dataset(self, dataset, split: str) -> list[str]:
        cls2parts = getattr(dataset, 'cls2parts', None)
        if cls2parts is None:
            raise ValueError(f'the {split} dataset {type(dataset).__name__} has no cls2parts (category -> part ids): '
                             f'part segmentation needs a part dataset (EmbeddedShapesPart, ShapeNetPartNormal, or a '
                             f'DistilledDataset of a segmentation artifact)')
        cls2parts = [[int(p) for p in ids] for ids in cls2parts]
        num_parts = 1 + max(max(ids) for ids in cls2parts)
        if num_parts != self.num_classes:
            raise ValueError(f'num_classes is {self.num_classes} but the {split} dataset {type(dataset).__name__} has '
                             f'{num_parts} part labels. Set num_classes={num_parts} (and the model head to match).')
        shape_classes = self.cfg.get('shape_classes')
        if shape_classes is not None and int(shape_classes) != len(cls2parts):
            raise ValueError(f'shape_classes is {shape_classes} but the {split} dataset has {len(cls2parts)} '
                             f'categories. Set shape_classes={len(cls2parts)} (and the decoder/one-hot size).')
        if self.cls2parts is not None and cls2parts != self.cls2parts:
            raise ValueError(f'the {split} dataset lists other parts per category than the train split: the '
                             f'distilled set was made from another dataset than the one it is tested on')
        self.cls2parts = cls2parts
        names = getattr(dataset, 'classes', None) or self.cfg.get('classes') or range(len(cls2parts))
        return [str(n) for n in names]

    def _prepare(self, data: Mapping[str, Any], training: bool) -> tuple[dict, Tensor]:
        """Move a batch to the device: `pos` (B, N, 3), `x` (B, C, N) from `feature_keys`, `cls` (B, 1), and the
        part targets (B, N); training clouds with more than num_points points keep a random subset."""
        data = {k: v.to(self.device, non_blocking=True) for k, v in data.items() if torch.is_tensor(v)}
        target = data['y'].long()
        if target.dim() != 2 or target.shape != data['pos'].shape[:2]:
            raise ValueError(f'part segmentation needs per-point labels y (B, N) beside pos (B, N, 3), got '
                             f'{tuple(target.shape)} and {tuple(data["pos"].shape)}: is this a classification dataset?')
        missing = [k for k in self.feature_keys.split(',') if k not in data]
        if missing:
            raise ValueError(f'feature_keys {self.feature_keys!r}: the batch has no {missing} (it has '
                             f'{sorted(data)}); a distilled set has only pos: use feature_keys=pos')
        features = torch.cat([data[k] if data[k].dim() == 3 else data[k].unsqueeze(-1)
                              for k in self.feature_keys.split(',')], -1)
        if features.shape[-1] != self.in_channels:
            raise ValueError(f'feature_keys {self.feature_keys!r} give {features.shape[-1]} channels but the model '
                             f'takes in_channels={self.in_channels} (model.in_channels or encoder_args.in_channels)')
        pos = data['pos']
        if training and pos.shape[1] > self.num_points:
            keep = torch.randperm(pos.shape[1])[:self.num_points].to(self.device)
            pos, features, target = pos[:, keep], features[:, keep], target[:, keep]
        batch = {'pos': pos.contiguous(), 'x': features.transpose(1, 2).contiguous(),
                 'cls': data['cls'].reshape(-1, 1).long()}
        return batch, target

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader) -> dict:
        """Restricted and unrestricted instance/class mIoU (%), point accuracy, per-category mIoU (restricted)."""
        ious: dict[str, list[Tensor]] = {'': [], 'unrestricted_': []}
        categories, correct, seen = [], 0, 0
        for data, target, logits in self._predictions(model, loader):
            logits, category = logits.float().cpu(), data['cls'].reshape(-1).cpu()
            target = target.cpu()
            for prefix, restricted in (('', True), ('unrestricted_', False)):
                pred = predict_parts(logits, category, self.cls2parts, restricted)
                ious[prefix].append(shape_ious(pred, target, category, self.cls2parts))
                if restricted:
                    correct, seen = correct + int((pred == target).sum()), seen + target.numel()
            categories.append(category)
        categories = torch.cat(categories)
        result = {}
        for prefix, values in ious.items():
            summary = summarize_ious(torch.cat(values), categories)
            result[f'{prefix}instance_miou'] = summary['instance_miou']
            result[f'{prefix}class_miou'] = summary['class_miou']
            if not prefix:
                result['miou_per_class'] = {self.classes[c] if c < len(getattr(self, 'classes', [])) else str(c):
                                            round(v, 4) for c, v in summary['per_class'].items()}
        result['point_acc'] = 100 * correct / max(seen, 1)
        return result


class PartSegmentation(Task):
    """Part segmentation: one part label per point, the shape's category given to the network."""

    name = 'segmentation'
    distiller = SegDistiller
    trainer = SegTrainer
    models = ('BasePartSeg', 'DistillPointNetSeg')
    datasets = ('ShapeNetPartNormal', 'EmbeddedShapesPart')
    figures = (('instance_miou', 'inst mIoU'), ('class_miou', 'class mIoU'),
               ('unrestricted_instance_miou', 'inst (unrestr.)'), ('unrestricted_class_miou', 'class (unrestr.)'))
    figures_note = ("mIoU over the parts of each shape's true category, the argmax restricted to them; unrestr.: "
                    "over all part logits.")
    headline = figures[0][0]

    def pool(self, dataset_cfg, split, num_points, seed=0):
        return PartPool.from_dataset_cfg(dataset_cfg, split, num_points=num_points, seed=seed)

    def identity(self, pool):
        return DatasetIdentity(pool.name, tuple(pool.class_names), parts_of(pool.cls2parts))

    def set_sampler(self, synthetic, num_points, resample, settings) -> PartSampler:
        """`settings['part_balance']` < 1 gives a generator's small parts more of the points."""
        balance = float(settings['part_balance'])
        if synthetic.is_generator and resample:
            return lambda epoch, generator: synthetic.sample_with_parts(num_points, generator, balance)
        fixed = synthetic.sample_with_parts(num_points, torch.Generator().manual_seed(0), balance)
        return lambda epoch, generator: fixed

    def random_sampler(self, train, cpc, selection, num_points) -> PartSampler:
        pos, index = train.random_per_class(cpc, random_selection_generator(selection))
        return fixed_part_sampler(pos[:, :num_points], train.parts[index, :num_points], train.labels[index])

    def model_cfg(self, model, test):
        cfg = to_easy(model)   # a copy, nested sections as EasyConfigs, as openpoints' builders read them
        if cfg.get('cls_args') is not None:                    # openpoints BasePartSeg (PointNeXt): the head's size
            cfg.cls_args.setdefault('num_classes', test.num_parts)
        else:
            cfg.setdefault('num_classes', test.num_parts)
            cfg.setdefault('num_shape_classes', test.num_classes)
        return cfg

    # no canonicaliser in part segmentation (dd3d_spec §7.4): the rotator is the identity and is not applied
    def training_batch(self, pos, targets, rotator):
        parts, categories = targets
        return part_batch(pos, categories), parts

    def test(self, model, test, rotator, amp, device):
        return test_miou(model, test.pos.to(device), test.parts.to(device), test.labels.to(device), test.cls2parts,
                         amp=amp)

    def describe_run(self, run):
        return f'final-epoch {self.figures[0][1]} {run[self.headline]:.2f}'
