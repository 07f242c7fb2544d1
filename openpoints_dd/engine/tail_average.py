"""The exported set as the mean of the run's last iterates (Polyak averaging of the synthetic set).

Why: every matching step is a noisy estimate (one random network, a few real clouds per class), so at the end of a
budget-bound run the synthetic points jitter about the set the objective leads to, and the run exports whichever
iterate its last step left. The mean of the iterates of the run's tail averages that jitter out, as SWA does for
network weights and FTD (Du et al., CVPR 2023) does with an EMA of its synthetic images. torch's `AveragedModel`
keeps the running mean; the synthesizer and the rotator are averaged together, so learned per-cloud poses are too.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class TailAverage:
    """The running mean of `parts`' parameters over the iterates made once the run is past `start_fraction`.

    Args:
        parts: the live modules whose parameters are averaged (their buffers are not: they are not learned).
        start_fraction: the share of the run after which every iterate joins the mean, in [0, 1).
    """

    def __init__(self, parts: nn.Module, start_fraction: float):
        self.parts, self.start_fraction = parts, float(start_fraction)
        self.mean = AveragedModel(parts)

    @property
    def iterates(self) -> int:
        """How many iterates the mean holds."""
        return int(self.mean.n_averaged)

    def update(self, fraction_done: float) -> None:
        """Add the current iterate if the run, `fraction_done` of it now done, is past the start of its tail."""
        if fraction_done > self.start_fraction:
            self.mean.update_parameters(self.parts)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The live modules hold the mean inside the block (to export it) and their own iterate again after it."""
        live = list(self.parts.parameters())
        saved = [p.detach().clone() for p in live]
        with torch.no_grad():
            for p, mean in zip(live, self.mean.module.parameters()):
                p.copy_(mean)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, own in zip(live, saved):
                    p.copy_(own)

    def state_dict(self) -> dict:
        return self.mean.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.mean.load_state_dict(state)
