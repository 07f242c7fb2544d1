"""The CPU protocol's settings: how many Random selections a run evaluates."""
from openpoints_dd.engine.evaluate import random_selections


def test_random_selections_zero_means_none_and_unset_means_one_per_seed():
    assert random_selections({'random_selections': 0}, [0, 1, 2]) == []
    assert random_selections({}, [0, 1, 2]) == [0, 1, 2]
    assert random_selections({'random_selections': 5}, [0]) == [0, 1, 2, 3, 4]
