"""The CPU protocol's settings: how many Random selections a run evaluates, which rows a generator set gets."""
import pytest

from openpoints_dd.engine.evaluate import generator_modes, random_selections


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
