
import pytest
import torch
from safetensors.torch import save_file

from openpoints_dd.data.artifact import save_artifact
from openpoints_dd.models import DistillPointNet
from openpoints_dd.objectives import expert_trajectories as et
from openpoints_dd.objectives.expert_trajectories import (ExpertBuffer, ExpertBufferError, flat_parameters,
                                                          load_expert, save_expert, train_expert)

META = {'backbone': {'NAME': 'DistillPointNet', 'widths': [8, 16, 32]}, 'dataset': 'Tiny', 'num_classes': 3,
        'epochs': 2, 'lr': 0.01, 'batch_size': 4, 'num_points': 32, 'seed': 7, 'num_params': 0}


def _backbone():
    return DistillPointNet(num_classes=3, widths=(8, 16, 32))


def test_train_expert_stores_initial_and_every_epoch(tiny_clouds):
    backbone = _backbone()
    initial = flat_parameters(backbone)
    trajectory = train_expert(backbone, tiny_clouds.pos, tiny_clouds.y, epochs=2, lr=0.05, batch_size=4,
                              num_points=32, generator=torch.Generator().manual_seed(0))
    assert trajectory.shape == (3, initial.numel())
    assert torch.equal(trajectory[0], initial)
    assert torch.equal(trajectory[-1], flat_parameters(backbone))
    assert not torch.equal(trajectory[1], trajectory[0]) and not torch.equal(trajectory[2], trajectory[1])


def test_expert_round_trips_tensors_and_metadata(tmp_path):
    trajectory = torch.randn(3, 50)
    path = save_expert(tmp_path / 'expert_000.safetensors', trajectory, META)
    loaded, metadata = load_expert(path, expect={'dataset': 'Tiny', 'backbone': META['backbone']})
    assert torch.equal(loaded, trajectory) and metadata == META
    assert not list(tmp_path.glob('.*.tmp'))   # the atomic write leaves no temporary file


@pytest.mark.parametrize('damage, match', [
    ('truncate', 'not a readable safetensors file'),
    ('plain_safetensors', 'not an openpoints_dd expert trajectory'),
    ('artifact', 'not an openpoints_dd expert trajectory'),
    ('missing', 'no expert file'),
])
def test_damaged_or_foreign_expert_is_a_clear_error(tmp_path, damage, match):
    path = tmp_path / 'expert_000.safetensors'
    if damage == 'truncate':
        save_expert(path, torch.randn(3, 50), META)
        path.write_bytes(path.read_bytes()[:-40])
    elif damage == 'plain_safetensors':
        save_file({'trajectory': torch.randn(3, 50)}, str(path))
    elif damage == 'artifact':
        save_artifact(path, {'pos': torch.zeros(1, 4, 3), 'y': torch.zeros(1, dtype=torch.long)},
                      {'kind': 'points', 'synthesizer': {'NAME': 'ExplicitPoints'}, 'objective': {'NAME': 'GM'},
                       'rotator': {'NAME': 'IdentityRotator'}, 'cpc': 1, 'num_points': 4,
                       'dataset': {'name': 'Tiny', 'num_classes': 1, 'class_names': ['a']}})
    with pytest.raises(ExpertBufferError, match=match):
        load_expert(path)


def test_expert_trained_with_other_settings_is_refused(tmp_path):
    path = save_expert(tmp_path / 'expert_000.safetensors', torch.randn(3, 50), META)
    with pytest.raises(ExpertBufferError, match=r"dataset: stored 'Tiny', config 'ModelNet40'.*buffer_dir"):
        load_expert(path, expect={'dataset': 'ModelNet40'})


def test_buffer_trains_once_then_reuses_and_reads_snapshots(tmp_path, tiny_clouds, monkeypatch):
    num_params = sum(p.numel() for p in _backbone().parameters())
    expect = {**META, 'num_params': num_params}
    buffer = ExpertBuffer(tmp_path / 'experts', 2, expect)
    assert buffer.build(_backbone, tiny_clouds.pos, tiny_clouds.y) > 0
    first, meta = load_expert(buffer.paths[1])
    assert first.shape == (3, num_params) and meta['seed'] == 8 and meta['expert_index'] == 1
    assert not torch.equal(first[0], load_expert(buffer.paths[0])[0][0])   # different seeds, different inits

    def no_training(*args, **kwargs):
        raise AssertionError('the buffer was retrained')
    monkeypatch.setattr(et, 'train_expert', no_training)
    again = ExpertBuffer(tmp_path / 'experts', 2, expect)
    assert again.build(_backbone, tiny_clouds.pos, tiny_clouds.y) == 0.0
    start, target = again.snapshots(1, 0, 2)
    assert torch.equal(start, first[0]) and torch.equal(target, first[2])
    with pytest.raises(ExpertBufferError, match='epochs: stored 2, config 5'):
        ExpertBuffer(tmp_path / 'experts', 2, {**expect, 'epochs': 5}).build(_backbone, tiny_clouds.pos, tiny_clouds.y)
