"""The distributed helpers without torchrun: rank 0 is this process, and nothing is communicated."""
import torch.distributed as dist

from openpoints_dd.utils import distributed


def test_without_torchrun_rank_0s_value_is_this_processs_and_nothing_is_sent(monkeypatch):
    def no_collectives(*args, **kwargs):
        raise AssertionError('a collective ran in a one-process run')

    monkeypatch.setattr(dist, 'broadcast', no_collectives)
    assert distributed.world_size() == 1
    assert distributed.value_of_main(12.25) == 12.25 and distributed.decision_of_main(True) is True
