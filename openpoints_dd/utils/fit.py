"""The package's one minibatch training loop.

Evaluation training (classification and part segmentation), the distillation inner loops, the trajectory-matching
experts and the coreset embedding network all fit a network the same way: shuffled minibatches of tensors drawn
once per epoch, one optimizer step per minibatch. Only the batch's loss differs, so it is the one argument that
changes between them, and the order in which the shared random generator is used is the same everywhere.
(openpoints' own trainer, `train_cls.Trainer`, runs openpoints' DataLoader instead.)
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

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
    for epoch in range(epochs):
        tensors = tuple(sampler(epoch, generator))
        order = torch.randperm(len(tensors[0]), generator=generator)
        if device is not None:
            tensors, order = tuple(t.to(device) for t in tensors), order.to(device)
        for begin in range(0, len(order), batch_size):
            pick = order[begin:begin + batch_size]
            loss = batch_loss(*(t[pick] for t in tensors))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if max_steps is not None and steps >= max_steps:
                return steps
        if scheduler is not None:
            scheduler.step()
        if after_epoch is not None:
            after_epoch(epoch)
    return steps
