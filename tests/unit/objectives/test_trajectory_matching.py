from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from openpoints_dd.objectives import TrajectoryMatching
from openpoints_dd.objectives.expert_trajectories import flat_parameters
from openpoints_dd.registry import build_objective


def _setup(tiny_clouds, tiny_backbone, **kwargs):
    objective = TrajectoryMatching(**{'train_epochs': 4, 'expert_epochs': 2, 'max_start_epoch': 2, **kwargs})
    theta_start = flat_parameters(tiny_backbone)
    theta_target = theta_start + 0.05 * torch.randn(theta_start.shape, generator=torch.Generator().manual_seed(3))
    syn = tiny_clouds.pos[::2].clone().requires_grad_(True)
    return objective, syn, tiny_clouds.y[::2], theta_start, theta_target


def _loss(objective, backbone, syn, labels, start, target):
    return objective.distance_after_unroll(backbone, syn, labels, start, target, torch.Generator().manual_seed(0))


@pytest.mark.parametrize('kwargs', [{'syn_steps': 0}, {'syn_steps': 3, 'lr_teacher': 0.0}])
def test_loss_is_exactly_one_at_the_start_point(tiny_clouds, tiny_backbone, kwargs):
    objective, syn, labels, start, target = _setup(tiny_clouds, tiny_backbone, **kwargs)
    assert _loss(objective, tiny_backbone, syn, labels, start, target).item() == 1.0


def test_one_step_equals_hand_computed_sgd_step(tiny_clouds, tiny_backbone):
    objective, syn, labels, start, target = _setup(tiny_clouds, tiny_backbone, syn_steps=1, lr_teacher=0.1)
    loss = _loss(objective, tiny_backbone, syn, labels, start, target)
    # the same step with the module's own parameters and ordinary autograd
    tiny_backbone.zero_grad()
    F.cross_entropy(tiny_backbone(syn.detach()), labels).backward()
    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                       for p in tiny_backbone.parameters()])
    student = start - 0.1 * grads
    expected = (student - target).square().sum() / (start - target).square().sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != 1.0


@pytest.mark.parametrize('step_size_param', ['raw', 'log'])
def test_gradients_reach_the_clouds_and_the_step_size(tiny_clouds, tiny_backbone, step_size_param):
    objective, syn, labels, start, target = _setup(tiny_clouds, tiny_backbone, syn_steps=3, batch_syn=4,
                                                   step_size_param=step_size_param)
    assert objective.step_size().item() == pytest.approx(0.01)
    _loss(objective, tiny_backbone, syn, labels, start, target).backward()
    assert syn.grad is not None and torch.isfinite(syn.grad).all() and syn.grad.abs().sum() > 0
    assert objective.syn_lr.grad is not None and objective.syn_lr.grad.abs() > 0
    assert all(p.grad is None for p in tiny_backbone.parameters())   # the expert's weights are constants


def test_truncated_unroll_keeps_the_loss_and_only_late_steps_carry_gradient(tiny_clouds, tiny_backbone):
    full, syn, labels, start, target = _setup(tiny_clouds, tiny_backbone, syn_steps=4, batch_syn=3)
    truncated = TrajectoryMatching(train_epochs=4, expert_epochs=2, max_start_epoch=2, syn_steps=4, batch_syn=3,
                                   backprop_steps=1)
    loss_full = _loss(full, tiny_backbone, syn, labels, start, target)
    loss_truncated = _loss(truncated, tiny_backbone, syn, labels, start, target)
    assert loss_truncated.item() == pytest.approx(loss_full.item(), rel=1e-6)
    loss_truncated.backward()
    # batch_syn 3 over 6 clouds: the last of 4 steps sees one half of the set, drawn from the 2nd permutation
    touched = (syn.grad.abs().sum(dim=(1, 2)) > 0).sum().item()
    assert touched == 3


def test_registered_and_bad_settings_are_clear_errors(tiny_clouds, tiny_backbone):
    assert isinstance(build_objective({'NAME': 'TrajectoryMatching', 'train_epochs': 5, 'max_start_epoch': 2}),
                      TrajectoryMatching)
    with pytest.raises(ValueError, match=r'max_start_epoch \+ expert_epochs .* must be <= train_epochs'):
        TrajectoryMatching(train_epochs=4, expert_epochs=3, max_start_epoch=2)
    with pytest.raises(ValueError, match='syn_steps must be an int >= 0'):
        TrajectoryMatching(syn_steps=-1)
    objective, syn, labels, start, target = _setup(tiny_clouds, tiny_backbone)
    with pytest.raises(ValueError, match='trained for another backbone'):
        _loss(objective, tiny_backbone, syn, labels, start[:-1], target[:-1])
    with pytest.raises(RuntimeError, match='prepare'):
        objective.match_all(tiny_backbone, syn, labels, torch.Generator())


def test_prepare_builds_buffer_and_match_all_draws_from_it(tmp_path, tiny_clouds, tiny_backbone):
    from openpoints_dd.models import DistillPointNet
    pool = SimpleNamespace(pos=tiny_clouds.pos, labels=tiny_clouds.y, name='Tiny', num_classes=3)
    cfg = {'seed': 0, 'distill': {'num_points': 32, 'backbone': {'NAME': 'DistillPointNet', 'widths': [8, 16, 32]}}}
    objective = TrajectoryMatching(num_experts=2, train_epochs=3, expert_epochs=1, max_start_epoch=2, syn_steps=2,
                                   expert_batch=4, lr_teacher=0.05)
    objective.prepare(pool, cfg, tmp_path, 'cpu', lambda: DistillPointNet(num_classes=3, widths=(8, 16, 32)))
    assert sorted(p.name for p in (tmp_path / 'experts').iterdir()) == ['expert_000.safetensors',
                                                                        'expert_001.safetensors']
    syn = tiny_clouds.pos[:, :32].clone().requires_grad_(True)
    loss = objective.match_all(tiny_backbone, syn, tiny_clouds.y, torch.Generator().manual_seed(0))
    assert 0 < loss.item() and torch.isfinite(loss)
    loss.backward()
    assert syn.grad.abs().sum() > 0
    state = objective.state_dict()
    with torch.no_grad():
        objective.syn_lr.fill_(1.0)
    objective.load_state_dict(state)
    assert objective.syn_lr.item() == pytest.approx(0.05)
