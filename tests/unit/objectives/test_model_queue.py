"""SemiTrainedQueue: round-robin slots of networks trained one step per visit, replaced after their lifetime; and
SemiTrainedNetworks, the queue as the frozen-network objectives (DM, M3D) take it."""
from __future__ import annotations

import re

import pytest
import torch

from openpoints_dd.models import DistillPointNet
from openpoints_dd.objectives import M3D, DistributionMatching, SemiTrainedQueue


def _net(seed):
    torch.manual_seed(seed)
    return DistillPointNet(num_classes=3, widths=(8, 16, 32))


def _real_batch(seed):
    generator = torch.Generator().manual_seed(seed)
    return lambda size: (torch.randn(size, 32, 3, generator=generator), torch.randint(3, (size,), generator=generator))


def test_slots_are_visited_in_turn_trained_once_per_visit_and_replaced_after_their_lifetime():
    queue = SemiTrainedQueue(size=2, lifetime=4, batch=4, lr=1e-2)
    assert [queue.lifetime_of(0), queue.lifetime_of(1)] == [2, 4]      # staggered: replaced at different times
    fresh = [_net(i) for i in range(10)]
    used = [queue.next_model(fresh[i], i, _real_batch(i)) for i in range(10)]
    # slot 0 (iterations 0, 2, 4, 6, 8) lives 2 steps: the fresh networks of iterations 0, 4 and 8; slot 1 lives 4
    assert [fresh.index(m) for m in used] == [0, 1, 0, 1, 4, 1, 4, 1, 8, 9]
    assert queue.steps == [1, 1]
    assert all(not p.requires_grad for m in used for p in m.parameters())   # returned frozen
    before = _net(1).state_dict()
    assert any(not torch.equal(before[k], v) for k, v in fresh[1].state_dict().items())   # the step trained it


def test_state_round_trip_continues_exactly():
    def run(queue, start, stop, fresh_seed=100):
        return [queue.next_model(_net(fresh_seed + i), i, _real_batch(i)) for i in range(start, stop)]
    full = SemiTrainedQueue(size=3, lifetime=6, batch=4, lr=1e-2)
    full_models = run(full, 0, 8)
    part = SemiTrainedQueue(size=3, lifetime=6, batch=4, lr=1e-2)
    run(part, 0, 5)
    state = part.state_dict()
    resumed = SemiTrainedQueue(size=3, lifetime=6, batch=4, lr=1e-2)
    resumed.load_state_dict(state, lambda: _net(999))
    assert resumed.steps == part.steps and resumed.last_loss == part.last_loss
    resumed_models = run(resumed, 5, 8)
    for a, b in zip(full_models[5:], resumed_models):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    with pytest.raises(ValueError, match='holds 3 semi-trained networks'):
        SemiTrainedQueue(size=2, lifetime=6, batch=4, lr=1e-2).load_state_dict(state, lambda: _net(0))


@pytest.mark.parametrize('bad', [{'size': 0}, {'lifetime': 0}, {'batch': 0}, {'lr': 0.0}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        SemiTrainedQueue(**{'size': 2, 'lifetime': 4, 'batch': 4, 'lr': 1e-3, **bad})


def test_a_non_finite_training_loss_names_the_slot():
    queue = SemiTrainedQueue(size=2, lifetime=4, batch=4, lr=1e-2)
    nan_batch = lambda size: (torch.full((size, 32, 3), float('nan')), torch.zeros(size, dtype=torch.long))
    with pytest.raises(FloatingPointError, match='slot 1'):
        queue.next_model(_net(0), 1, nan_batch)


@pytest.mark.parametrize('objective', [DistributionMatching, M3D])
def test_without_a_queue_the_engine_backbone_is_used_and_with_one_a_trained_network(objective):
    fresh = _net(0)
    batch = _real_batch(0)
    assert objective().iteration_backbone(fresh, 0, batch) is fresh and objective().state_dict() == {}
    queued = objective(queue_size=2, queue_lifetime=4, queue_batch=4)
    weights = fresh.head.weight.detach().clone()
    assert queued.iteration_backbone(fresh, 0, batch) is fresh and not torch.equal(fresh.head.weight, weights)
    assert queued.iteration_backbone(_net(1), 1, batch) is not fresh          # slot 1: the next fresh network
    assert queued.iteration_backbone(_net(2), 2, batch) is fresh               # slot 0 again, one step further
    assert set(queued.state_dict()) == {'queue'} and queued._queue.steps == [2, 1]
    with pytest.raises(ValueError, match='no semi-trained networks'):
        queued.load_state_dict({})
    with pytest.raises(ValueError, match=f'{objective.__name__}: queue_size must be >= 0'):
        objective(queue_size=-1)


@pytest.mark.parametrize('objective', [DistributionMatching, M3D])
@pytest.mark.parametrize('settings, message', [
    ({'queue_lr': -1.0}, 'queue_lr must be > 0, a finite number; got -1.0'),
    ({'queue_lr': float('nan')}, 'queue_lr must be > 0, a finite number; got nan'),
    ({'queue_lifetime': 0}, 'queue_lifetime must be >= 1, an integer; got 0'),
    ({'queue_batch': 2.5}, 'queue_batch must be >= 1, an integer; got 2.5'),
    ({'queue_size': 1.5}, 'queue_size must be >= 0, an integer; got 1.5'),
    ({'queue_size': '2'}, "queue_size must be >= 0, an integer; got '2'"),
    ({'queue_size': True}, 'queue_size must be >= 0, an integer; got True'),
    ({'queue_size': 2, 'queue_lr': float('inf')}, 'queue_lr must be > 0, a finite number; got inf'),
    ({'queue_size': 2, 'queue_batch': 0}, 'queue_batch must be >= 1, an integer; got 0'),
    ({'queue_size': 1, 'ce_weight': float('nan')}, 'ce_weight must be >= 0, a finite number; got nan'),
    ({'queue_size': 1, 'ce_weight': float('inf')}, 'ce_weight must be >= 0, a finite number; got inf'),
], ids=['negative-lr', 'nan-lr', 'lifetime-0', 'fractional-batch', 'fractional-size', 'string-size', 'bool-size',
        'inf-lr-queued', 'batch-0-queued', 'nan-ce', 'inf-ce'])
def test_queue_settings_and_ce_weight_are_checked_whatever_the_queue_size(objective, settings, message):
    """The queue's settings are checked by the objective itself, not only by `SemiTrainedQueue` (built only with
    queue_size > 0): without a queue a negative rate was accepted and ignored; a NaN ce_weight passed `< 0`."""
    with pytest.raises(ValueError, match=f'{objective.__name__}: {re.escape(message)}'):
        objective(**settings)


@pytest.mark.parametrize('objective', [DistributionMatching, M3D])
def test_queue_settings_without_a_queue_are_refused_as_having_no_effect(objective):
    with pytest.raises(ValueError, match=re.escape(f'{objective.__name__}: queue_lifetime: 100, queue_lr: 0.01 set '
                                                   f'without a queue (queue_size 0): the queue\'s settings have no '
                                                   f'effect without one')):
        objective(queue_lifetime=100, queue_lr=1e-2)
    objective(queue_lifetime=200, queue_batch=64, queue_lr=1.0e-3)                # the defaults, written out
    queued = objective(queue_size=2, queue_lifetime=100, queue_batch=8, queue_lr=1e-2)
    assert (queued.queue_size, queued.queue_lifetime, queued.queue_batch, queued.queue_lr) == (2, 100, 8, 1e-2)
    assert (queued._queue.size, queued._queue.lifetime, queued._queue.batch, queued._queue.lr) == (2, 100, 8, 1e-2)


def test_without_queue_keeps_the_objective_and_drops_the_queue_and_the_cross_entropy_term():
    from openpoints_dd.objectives.model_queue import without_queue
    from openpoints_dd.registry import build_objective
    settings = {'NAME': 'M3D', 'partitions': 1, 'points_per_partition': 64, 'absolute': False, 'queue_size': 2,
                'queue_lifetime': 100, 'queue_batch': 8, 'queue_lr': 1e-2, 'ce_weight': 0.003}
    assert without_queue(settings) == {'NAME': 'M3D', 'partitions': 1, 'points_per_partition': 64, 'absolute': False}
    plain = build_objective(without_queue(settings))
    assert plain._queue is None and plain.ce_weight == 0.0 and plain.absolute is False
