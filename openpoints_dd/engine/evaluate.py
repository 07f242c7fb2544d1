"""Train a fresh network on a synthetic (or selected) set and test it on the real test set: one protocol run.

The protocol of `research/cpu_protocol.md`: DD3D's PointNet, Adam (lr 1e-3, wd 5e-4), cosine to 1e-4,
batch 256, random scale and jitter; the reported figure is the test accuracy at the FINAL epoch. The
best tested epoch is returned separately, labelled as the papers' (optimistic) protocol. Part segmentation
runs the same loop with its own network, batch and figures (`tasks.PartSegmentation`, `evaluate_seg`).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from openpoints.models import build_model_from_cfg

from ..utils.fit import fit_epochs
from ..utils.geometry import jitter, normalize_to_unit_sphere, random_scale
from ..labels import DatasetIdentity, HardLabels, Labeler
from ..registry import build_labeler
from ..settings import resolve_section
from ..utils.precision import autocast

logger = logging.getLogger(__name__)

GENERATOR_MODES = ('resampled', 'fixed')   # fresh generator clouds every epoch; one fixed draw

#: (epoch, generator) -> (pos (S, N, 3), y (S,)): a fixed set ignores the epoch, a generator resamples
TrainSampler = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]

def evaluation_settings(cfg: Mapping[str, Any] | None, task: str = 'classification') -> dict:
    """The evaluation section of `task`, checked, with every default of `openpoints_dd.settings` filled in."""
    settings = resolve_section('evaluation', cfg, task)
    build_labeler(settings['labels'])   # the labeler's own checks (ranges) fail here, before any training
    return settings


def prepared_labeler(settings: Mapping[str, Any], dataset: DatasetIdentity, device: str | torch.device) -> Labeler:
    """The labeler of `settings['labels']` (None: hard labels), ready for `dataset`'s classes (a teacher is
    loaded, or trained once and cached)."""
    labeler = build_labeler(settings['labels'])
    labeler.prepare(dataset, device)
    return labeler


@torch.no_grad()
def test_accuracy(model: nn.Module, pos: Tensor, labels: Tensor, num_classes: int, rotator: nn.Module | None = None,
                  batch_size: int = 256, amp: str | None = None) -> tuple[float, float]:
    """Overall accuracy and mean class accuracy (both in %) on a labelled set; `amp: bf16` runs the forward under
    bf16 autocast."""
    model.eval()
    predictions = []
    for start in range(0, len(pos), batch_size):
        batch = pos[start:start + batch_size]
        if rotator is not None:
            batch = rotator(batch)
        with autocast(amp, batch.device):
            predictions.append(model(batch).argmax(-1))
    predicted = torch.cat(predictions)
    correct = (predicted == labels).float()
    per_class = torch.zeros(num_classes).scatter_add_(0, labels.cpu(), correct.cpu())
    counts = torch.bincount(labels.cpu(), minlength=num_classes).clamp_min(1)
    model.train()
    return 100 * float(correct.mean()), 100 * float((per_class / counts).mean())


def train_and_test(task, sampler, test, *, settings: Mapping[str, Any], seed: int, rotator: nn.Module | None = None,
                   device: str | torch.device = 'cpu', epochs: int | None = None,
                   labeler: Labeler | None = None) -> dict:
    """Train a fresh network of `settings['model']` on `sampler`'s clouds and test it on the real `test` pool: one
    run of the protocol, for either task (`tasks.Task`: the head, the batch and the test figures are the task's).

    `settings['amp']`: 'bf16' runs every forward under bf16 autocast (DistillPointNet keeps its per-cloud
    statistics in fp32 there; parameters, optimizer state and the loss stay fp32); None or 'fp32': full precision.
    `labeler`: the training loss of a batch (`prepared_labeler`); None: hard labels, the plain cross-entropy.
    `rotator`: applied to every training and test batch (classification; part segmentation has none).

    Returns:
        The task's test figures at the final epoch (`task.headline` the first), `best_<headline>` and 'best_epoch'
        over the tested epochs (every `test_every` and the last: the papers' protocol), 'epochs', 'seconds'.
    """
    start = time.perf_counter()
    epochs = int(epochs or settings['epochs'])
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model_from_cfg(task.model_cfg(settings['model'], test)).to(device)
    optimizer = evaluation_optimizer(model, settings)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=float(settings['min_lr']))
    augment, test_every, amp = settings['augment'], settings['test_every'], settings['amp']
    labeler = labeler or HardLabels()
    headline = task.headline
    best, best_epoch = -math.inf, -1

    def batch_loss(pos: Tensor, *targets: Tensor) -> Tensor:
        batch, target = task.training_batch(augment_batch(pos, augment, generator), targets, rotator)
        with autocast(amp, device):
            return labeler.loss(model(batch), target, batch)

    def test_now(epoch: int) -> None:
        nonlocal best, best_epoch
        if test_every and (epoch + 1) % test_every == 0 and epoch + 1 < epochs:
            value = task.test(model, test, rotator, amp, device)[headline]
            if value > best:
                best, best_epoch = value, epoch + 1

    fit_epochs(optimizer, batch_loss, sampler, epochs=epochs, batch_size=int(settings['batch_size']),
               generator=generator, device=device, scheduler=scheduler, after_epoch=test_now)
    result = task.test(model, test, rotator, amp, device)
    if result[headline] > best:
        best, best_epoch = result[headline], epochs
    return {**result, f'best_{headline}': best, 'best_epoch': best_epoch, 'epochs': epochs,
            'seconds': time.perf_counter() - start}


def evaluation_optimizer(model: nn.Module, settings: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The protocol's optimizer: Adam (DD3D's) or SGD with momentum, at `lr` with `weight_decay`."""
    lr, weight_decay = float(settings['lr']), float(settings['weight_decay'])
    if settings['optimizer'] == 'sgd':
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=float(settings['momentum']),
                               weight_decay=weight_decay)
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def augment_batch(batch: Tensor, augment: Mapping[str, Any], generator: torch.Generator) -> Tensor:
    """The protocol's augmentation: a random isotropic scale per cloud, then clipped jitter (each when configured).

    DistillPointNet is invariant to the scale itself (InstanceNorm right after its first linear layer): for the
    protocol's network the scale only sets the jitter's size relative to the cloud."""
    if augment.get('scale'):
        batch = random_scale(batch, *augment['scale'], generator=generator)
    if augment.get('jitter_sigma'):
        batch = jitter(batch, augment['jitter_sigma'], augment.get('jitter_clip', 0.05), generator=generator)
    return batch


def fixed_sampler(pos: Tensor, labels: Tensor) -> TrainSampler:
    """A sampler that always returns the same normalised clouds."""
    pos = normalize_to_unit_sphere(pos)
    return lambda epoch, generator: (pos, labels)


def summarize(results: list[dict], key: str = 'oa') -> dict:
    values = np.array([r[key] for r in results], dtype=np.float64)
    return {'mean': float(values.mean()), 'std': float(values.std(ddof=0)) if len(values) > 1 else 0.0,
            'n': len(values), 'values': [round(float(v), 2) for v in values]}


def format_mean_std(summary: Mapping[str, Any]) -> str:
    return f"{summary['mean']:.2f} ± {summary['std']:.2f}" if not math.isnan(summary['mean']) else 'n/a'


def generator_modes(modes: Sequence[str] | None = None) -> list[bool]:
    """The rows a generator set gets, as `resample` flags: 'resampled' (fresh clouds every epoch) and/or 'fixed'
    (one draw), each at most once, in the given order. None: both (`evaluation.generator_modes` unset)."""
    modes = list(GENERATOR_MODES if modes is None else modes)
    if not modes or set(modes) - set(GENERATOR_MODES) or len(set(modes)) != len(modes):
        raise ValueError(f'generator modes must be resampled and/or fixed, each once; got {modes}')
    return [mode == 'resampled' for mode in modes]


def random_selections(settings: Mapping[str, Any], seeds: Sequence[int]) -> list[int]:
    """Indices of the Random baseline's selections: `random_selections` of them (0: none), one per seed if unset."""
    count = settings.get('random_selections')
    return list(range(len(seeds) if count is None else int(count)))
