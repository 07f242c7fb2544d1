"""Semi-trained embedding networks for a frozen-backbone objective: a queue of networks trained online on real clouds.

Distribution matching embeds through a fresh random network every iteration, whose features know nothing of the
classes. IDM (Zhao et al., "Improved Distribution Matching for Dataset Condensation", CVPR 2023) embeds through
networks part-way trained instead. Ours: `size` slots visited round robin, one per iteration; the visited network
takes one Adam step of cross-entropy on a batch of real clouds, then embeds (frozen). A slot's network is replaced by
the engine's fresh backbone of that iteration once it has had its lifetime of steps; slot i lives
`lifetime·(i+1)/size` steps, so the networks in use range from nearly random to `lifetime` steps trained and are not
all replaced at once. The training steps run inside the iteration, so the budget pays for them.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.fit import fit_batches
from .base import RealBatch

logger = logging.getLogger(__name__)

#: The queue's settings besides `queue_size`, and their defaults: the keyword defaults of the objectives that take
#: the queue (DM, M3D). Without a queue they have no effect, so only these values are accepted then.
QUEUE_DEFAULTS: dict[str, float] = {'queue_lifetime': 200, 'queue_batch': 64, 'queue_lr': 1e-3}
#: Every key of an objective's settings that belongs to the semi-trained networks or the cross-entropy term.
QUEUE_KEYS = ('queue_size', *QUEUE_DEFAULTS, 'ce_weight')


def without_queue(settings: Mapping[str, Any]) -> dict:
    """An objective's settings (a config's `distill.objective`) without the semi-trained networks and the
    cross-entropy term: the same objective through the fresh random network it is given, as a benchmark that
    measures the matching term alone needs it."""
    return {key: value for key, value in settings.items() if key not in QUEUE_KEYS}


def class_cross_entropy(backbone: nn.Module, embeddings: Tensor, labels: Tensor) -> Tensor:
    """(G,) each class's mean cross-entropy of its synthetic clouds' embeddings (G, S, D) under the backbone's
    head (`classify`), the classes labelled (G,): IDM's class-aware term at weight 1."""
    logits = backbone.classify(embeddings)
    targets = labels.to(logits.device).view(-1, 1).expand(logits.shape[:2])
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction='none').view(logits.shape[:2]).mean(1)


def checked_count(owner: str, name: str, value: Any, minimum: int) -> int:
    """`value` as an int, refused unless it is an integer (not a bool, a float or a string) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f'{owner}: {name} must be >= {minimum}, an integer; got {value!r}')
    return int(value)


def checked_number(owner: str, name: str, value: Any, *, positive: bool) -> float:
    """`value` as a float, refused unless it is a finite number > 0 (`positive`) or >= 0 (NaN fails both)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not (value > 0 if positive else value >= 0):
        raise ValueError(f"{owner}: {name} must be {'> 0' if positive else '>= 0'}, a finite number; got {value!r}")
    return float(value)


class SemiTrainedQueue:
    """Args:
        size: slots (networks kept).
        lifetime: training steps of the longest-lived slot's network before it is replaced.
        batch: real clouds per training step.
        lr: the networks' Adam learning rate.
    """

    def __init__(self, *, size: int, lifetime: int, batch: int, lr: float):
        for name, value in (('size', size), ('lifetime', lifetime), ('batch', batch)):
            if int(value) < 1:
                raise ValueError(f'SemiTrainedQueue: {name} must be >= 1, got {value!r}')
        if not lr > 0:
            raise ValueError(f'SemiTrainedQueue: lr must be > 0, got {lr!r}')
        self.size, self.lifetime, self.batch, self.lr = int(size), int(lifetime), int(batch), float(lr)
        self.models: list[nn.Module | None] = [None] * self.size
        self.optimizers: list[torch.optim.Adam | None] = [None] * self.size
        self.steps = [0] * self.size
        self.last_loss = [float('nan')] * self.size

    def lifetime_of(self, slot: int) -> int:
        return max(1, round(self.lifetime * (slot + 1) / self.size))

    def next_model(self, fresh: nn.Module, iteration: int, real_batch: RealBatch) -> nn.Module:
        """The network of iteration `iteration`'s slot after its training step (`fresh` takes the slot when the
        slot is empty or its network has lived its lifetime). Returned frozen."""
        slot = iteration % self.size
        if self.models[slot] is None or self.steps[slot] >= self.lifetime_of(slot):
            if self.models[slot] is not None:   # how far the networks get: the record of what DM matched through
                logger.info('semi-trained network of slot %d replaced after %d steps (last training loss %.3f)',
                            slot, self.steps[slot], self.last_loss[slot])
            self._install(slot, fresh)
        model, optimizer = self.models[slot], self.optimizers[slot]
        model.requires_grad_(True)
        def loss_of(batch: tuple[Tensor, Tensor]) -> Tensor:
            loss = F.cross_entropy(model(batch[0]), batch[1])
            if not torch.isfinite(loss):
                raise FloatingPointError(f'semi-trained network of slot {slot}: training loss {loss.item()} at '
                                         f'iteration {iteration}. Lower its learning rate (objective.queue_lr) or '
                                         f'check the data.')
            self.last_loss[slot] = loss.item()
            return loss

        optimizer.zero_grad(set_to_none=True)
        self.steps[slot] += fit_batches(optimizer, [real_batch(self.batch)], loss_of)
        return model.requires_grad_(False)

    def _install(self, slot: int, model: nn.Module) -> None:
        self.models[slot] = model.requires_grad_(True)
        self.optimizers[slot] = torch.optim.Adam(model.parameters(), lr=self.lr)
        self.steps[slot] = 0

    def state_dict(self) -> dict:
        """The slots' weights, optimizer states and steps (what an exact resume needs)."""
        return {'steps': torch.tensor(self.steps), 'last_loss': torch.tensor(self.last_loss),
                'slots': {str(i): {'model': m.state_dict(), 'optimizer': o.state_dict()}
                          for i, (m, o) in enumerate(zip(self.models, self.optimizers)) if m is not None}}

    def load_state_dict(self, state: dict, make_backbone: Callable[[], nn.Module]) -> None:
        steps = state['steps'].tolist()
        if len(steps) != self.size:
            raise ValueError(f'the checkpoint holds {len(steps)} semi-trained networks; the config asks for {self.size}')
        self.models, self.optimizers = [None] * self.size, [None] * self.size
        for key, slot_state in state['slots'].items():
            model = make_backbone()
            model.load_state_dict(slot_state['model'])
            self._install(int(key), model)
            self.optimizers[int(key)].load_state_dict(slot_state['optimizer'])
        self.steps = [int(s) for s in steps]
        self.last_loss = [float(x) for x in state['last_loss'].tolist()]


class SemiTrainedNetworks:
    """IDM's queue for any objective that embeds through a frozen network (`trains_backbone = False`): DM, M3D.

    Mixed in before the objective's base class; `_init_queue` from the objective's `__init__` with its `queue_*`
    arguments and `ce_weight`. It supplies the engine hooks the queue needs: `prepare` (how to rebuild the networks
    on resume), `iteration_backbone` (the visited slot's network, one training step further) and the queue's part
    of the checkpoint. `queue_size` 0 keeps the engine's fresh random network every iteration.

    `ce_weight` > 0 is IDM's class-aware term (`cross_entropy_term`): the synthetic clouds' cross-entropy under the
    network they are matched through, so that a cloud matching its class's features but sitting near another
    class's is penalised. It needs the queue: the head of a fresh random network says nothing of the classes.
    """

    def _init_queue(self, queue_size: int, queue_lifetime: int, queue_batch: int, queue_lr: float,
                    ce_weight: float = 0.0) -> None:
        """Every value is checked whatever `queue_size` is; without a queue (`queue_size` 0) the other `queue_*`
        settings must keep their defaults (`QUEUE_DEFAULTS`): another value would be silently ignored."""
        owner = type(self).__name__
        queue_size = checked_count(owner, 'queue_size', queue_size, 0)
        settings = {'queue_lifetime': checked_count(owner, 'queue_lifetime', queue_lifetime, 1),
                    'queue_batch': checked_count(owner, 'queue_batch', queue_batch, 1),
                    'queue_lr': checked_number(owner, 'queue_lr', queue_lr, positive=True)}
        ce_weight = checked_number(owner, 'ce_weight', ce_weight, positive=False)
        if not queue_size:
            ignored = [f'{name}: {value!r}' for name, value in settings.items() if value != QUEUE_DEFAULTS[name]]
            if ignored:
                raise ValueError(f"{owner}: {', '.join(ignored)} set without a queue (queue_size 0): the queue's "
                                 f'settings have no effect without one. Set queue_size > 0 or remove them')
        if ce_weight and not queue_size:
            raise ValueError(f'{owner}: ce_weight needs queue_size > 0: the head of a fresh random '
                             f'network says nothing of the classes, so its cross-entropy is noise')
        self.queue_size, self.queue_lifetime = queue_size, settings['queue_lifetime']
        self.queue_batch, self.queue_lr = settings['queue_batch'], settings['queue_lr']
        self.ce_weight = ce_weight
        self._queue = SemiTrainedQueue(size=queue_size, lifetime=self.queue_lifetime, batch=self.queue_batch,
                                       lr=self.queue_lr) if queue_size else None
        self._make_backbone: Callable[[], nn.Module] | None = None

    def prepare(self, pool, cfg: Mapping[str, Any], run_dir: str | os.PathLike, device: torch.device | str,
                make_backbone: Callable[[], nn.Module]) -> float:
        self._make_backbone = make_backbone   # rebuilds the queue's networks on resume
        return 0.0

    def cross_entropy_term(self, backbone: nn.Module, embeddings: Tensor, labels: Tensor) -> Tensor:
        """(G,) `ce_weight` times each class's mean cross-entropy of its synthetic clouds' embeddings (G, S, D)
        under the backbone's head (`classify`), the classes labelled (G,): `class_cross_entropy`."""
        return self.ce_weight * class_cross_entropy(backbone, embeddings, labels)

    def iteration_backbone(self, backbone: nn.Module, iteration: int, real_batch: RealBatch) -> nn.Module:
        return backbone if self._queue is None else self._queue.next_model(backbone, iteration, real_batch)

    def state_dict(self) -> dict:
        return {} if self._queue is None else {'queue': self._queue.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self._queue is not None:
            if 'queue' not in state:
                raise ValueError('the checkpoint has no semi-trained networks, but the config asks for queue_size '
                                 f'{self.queue_size}')
            self._queue.load_state_dict(state['queue'], self._make_backbone)
