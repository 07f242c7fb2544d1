"""The CPU protocol: how many Random selections a run evaluates, which rows a generator set gets, its precision."""
import pytest
import torch

from openpoints_dd.engine.evaluate import (evaluation_settings, fixed_sampler, generator_modes, random_selections,
                                           train_and_test)
from openpoints_dd.engine.tasks import TASKS
from openpoints_dd.data.real_pool import RealPool
from openpoints_dd.models import DistillPointNet


def test_random_selections_zero_means_none_and_unset_means_one_per_seed():
    assert random_selections({'random_selections': 0}, [0, 1, 2]) == []
    assert random_selections({}, [0, 1, 2]) == [0, 1, 2]
    assert random_selections({'random_selections': 5}, [0]) == [0, 1, 2, 3, 4]


def test_generator_modes_keep_the_order_and_reject_unknown_or_repeated_modes():
    assert generator_modes() == [True, False] and generator_modes(['fixed']) == [False]
    assert generator_modes(['fixed', 'resampled']) == [False, True]
    for bad in ([], ['fresh'], ['fixed', 'fixed']):
        with pytest.raises(ValueError, match='resampled and/or fixed, each once'):
            generator_modes(bad)


@pytest.mark.parametrize('amp', [None, 'bf16'])
def test_protocol_training_runs_in_either_precision_with_fp32_master_weights(amp, tiny_clouds, monkeypatch):
    seen = []
    original = torch.nn.Module.__call__

    def recording_call(self, *args, **kwargs):
        if isinstance(self, DistillPointNet):
            seen.append(torch.is_autocast_enabled('cpu'))
        return original(self, *args, **kwargs)
    monkeypatch.setattr(torch.nn.Module, '__call__', recording_call)
    settings = evaluation_settings({'model': {'NAME': 'DistillPointNet', 'widths': [16, 32, 64]}, 'epochs': 2,
                                    'batch_size': 8, 'amp': amp, 'augment': {}})
    test = RealPool(tiny_clouds.pos, tiny_clouds.y, ['a', 'b', 'c'], 'tiny')
    result = train_and_test(TASKS['classification'], fixed_sampler(tiny_clouds.pos, tiny_clouds.y), test,
                            settings=settings, seed=0)
    assert 0 <= result['oa'] <= 100 and seen and all(s == (amp == 'bf16') for s in seen)


def test_unknown_evaluation_amp_is_a_clear_error():
    with pytest.raises(ValueError, match='evaluation.amp must be one of'):
        evaluation_settings({'amp': 'fp16'})
