"""The package's one minibatch training loop, `fit_batches`, and its tensor form `fit_epochs`.

Evaluation training (classification and part segmentation), the distillation inner loops, the trajectory-matching
experts and the coreset embedding network fit a network the same way: shuffled minibatches of tensors drawn once
per epoch, one optimizer step per minibatch (`fit_epochs`). Only the batch's loss differs, so it is the one
argument that changes between them, and the order in which the shared random generator is used is the same
everywhere. The trainer of PointNeXt's YAMLs (`train_cls.Trainer`) runs the same steps over openpoints'
DataLoader, with PointNeXt's gradient accumulation (`step_per_update`) and clipping (`grad_norm_clip`).
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

#: (epoch, generator) -> the epoch's tensors, aligned on their first dimension (clouds, labels, ...)
EpochSampler = Callable[[int, torch.Generator], Sequence[Tensor]]


def fit_epochs(optimizer: torch.optim.Optimizer, batch_loss: Callable[..., Tensor], sampler: EpochSampler, *,
               epochs: int, batch_size: int, generator: torch.Generator, device: str | torch.device | None = None,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
               after_epoch: Callable[[int], None] | None = None, max_steps: int | None = None) -> int:
    """Fit by minibatch steps: for each epoch, `sampler(epoch, generator)`'s tensors are shuffled with `generator`
    and cut into slices of `batch_size` (the last may be smaller); each slice takes one step on
    `batch_loss(*slice)`.

    Args:
        device: the epoch's tensors and the shuffle move there first; None leaves them where the sampler made them
            (`batch_loss` moves each slice itself).
        scheduler: stepped after every epoch.
        after_epoch: called with the epoch index after the scheduler (tests, snapshots).
        max_steps: stop after this many steps, inside an epoch if need be (a step budget rather than epochs).

    Returns:
        The number of optimizer steps taken.
    """
    steps = 0
    if max_steps is not None and max_steps <= 0:
        return steps
    optimizer.zero_grad(set_to_none=True)
    for epoch in range(epochs):
        tensors = tuple(sampler(epoch, generator))
        order = torch.randperm(len(tensors[0]), generator=generator)
        if device is not None:
            tensors, order = tuple(t.to(device) for t in tensors), order.to(device)
        slices = (tuple(t[order[begin:begin + batch_size]] for t in tensors)
                  for begin in range(0, len(order), batch_size))
        if max_steps is not None:
            slices = itertools.islice(slices, max_steps - steps)
        steps += fit_batches(optimizer, slices, lambda batch: batch_loss(*batch))
        if max_steps is not None and steps >= max_steps:
            return steps
        if scheduler is not None:
            scheduler.step()
        if after_epoch is not None:
            after_epoch(epoch)
    return steps


def fit_batches(optimizer: torch.optim.Optimizer, batches: Iterable[Any], batch_loss: Callable[[Any], Tensor], *,
                accumulate: int = 1, clip_norm: float | None = None,
                after_batch: Callable[[int, Tensor], None] | None = None,
                after_update: Callable[[], None] | None = None) -> int:
    """One pass of minibatch steps: `batch_loss(batch)` is back-propagated for every batch, and every `accumulate`
    batches the optimizer takes a step on the summed gradients (their norm clipped to `clip_norm` when given) and
    the gradients are cleared. An incomplete window's gradients stay for the next pass (PointNeXt's
    `step_per_update`); the caller clears the gradients before its first pass.

    Args:
        after_batch: called with the batch's index and its loss after its backward (statistics, progress).
        after_update: called after every optimizer step (a per-step learning-rate schedule).

    Returns:
        The number of optimizer steps taken.
    """
    updates = 0
    parameters = [p for group in optimizer.param_groups for p in group['params']]
    for index, batch in enumerate(batches):
        loss = batch_loss(batch)
        loss.backward()
        if after_batch is not None:
            after_batch(index, loss)
        if (index + 1) % accumulate:
            continue
        if clip_norm is not None and clip_norm > 0:
            nn.utils.clip_grad_norm_(parameters, clip_norm, norm_type=2)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        updates += 1
        if after_update is not None:
            after_update()
    return updates
