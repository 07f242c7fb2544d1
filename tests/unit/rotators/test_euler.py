"""EulerRotator: learnable per-synthetic-cloud angles, M = Rz·Ry·Rx; real clouds pass unchanged."""
from __future__ import annotations

import math

import pytest
import torch

from openpoints_dd.registry import build_rotator
from openpoints_dd.rotators import EulerRotator, euler_matrices

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.mark.parametrize('device', DEVICES)
def test_matrices_are_proper_rotations(device):
    angles = (torch.rand(3, 50, dtype=torch.float64, device=device) - 0.5) * 4 * math.pi
    matrices = euler_matrices(*angles)
    eye = torch.eye(3, dtype=torch.float64, device=device).expand(50, 3, 3)
    torch.testing.assert_close(matrices.transpose(1, 2) @ matrices, eye)
    torch.testing.assert_close(torch.linalg.det(matrices), torch.ones(50, dtype=torch.float64, device=device))


def test_composition_order_hand_computed():
    quarter = torch.tensor([math.pi / 2])
    zero = torch.zeros(1)
    rz = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    rx = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    torch.testing.assert_close(euler_matrices(zero, zero, quarter)[0], rz, atol=1e-6, rtol=0)
    torch.testing.assert_close(euler_matrices(quarter, zero, quarter)[0], rz @ rx, atol=1e-6, rtol=0)
    # y by 90°: x -> -z for column vectors, so the row vector (1, 0, 0) @ Ry = (0, 0, 1)
    rotator = EulerRotator(num_slots=2)
    with torch.no_grad():
        rotator.angle_y[1] = math.pi / 2
    pos = torch.tensor([[[1.0, 0.0, 0.0]]]).expand(2, 1, 3)
    out = rotator(pos, slots=torch.tensor([0, 1]))
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize('device', DEVICES)
def test_gradients_reach_the_angles_of_the_used_slots_only(device, tiny_clouds):
    rotator = EulerRotator(num_slots=5).to(device)
    with torch.no_grad():
        for angle in (rotator.angle_x, rotator.angle_y, rotator.angle_z):
            angle.uniform_(-1, 1)
    pos = tiny_clouds.pos[:2].to(device).requires_grad_(True)
    out = rotator(pos, slots=torch.tensor([3, 1], device=device))
    (out[..., 0].square().sum() + out[..., 1].sum()).backward()
    for angle in (rotator.angle_x, rotator.angle_y, rotator.angle_z):
        assert angle.grad[[1, 3]].abs().min() > 0 and angle.grad[[0, 2, 4]].abs().max() == 0
    assert pos.grad.abs().sum() > 0


def test_real_clouds_are_unchanged_and_frame_matches_forward(tiny_clouds):
    rotator = build_rotator({'NAME': 'EulerRotator', 'num_slots': 12})
    with torch.no_grad():
        rotator.angle_z.fill_(0.3)
    pos = tiny_clouds.pos
    assert rotator(pos) is pos
    slots = torch.arange(12)
    origin, basis = rotator.frame(pos, slots)
    torch.testing.assert_close(rotator(pos, slots), (pos - origin) @ basis)
    assert not torch.allclose(rotator(pos, slots), pos)
    assert rotator.per_slot


def test_param_groups_wrapped_angles_and_errors():
    rotator = EulerRotator(num_slots=3, lr_scale=[1.0, 10.0, 2.0])
    groups = rotator.param_groups()
    assert [g['lr_scale'] for g in groups] == [1.0, 10.0, 2.0]
    assert [g['params'][0] for g in groups] == [rotator.angle_x, rotator.angle_y, rotator.angle_z]
    with torch.no_grad():
        rotator.angle_x[0] = 3 * math.pi / 2
    assert rotator.wrapped_angles()[0, 0].item() == pytest.approx(-math.pi / 2)
    assert 'num_slots=3' in repr(rotator) and 'lr_scale=(1.0, 10.0, 2.0)' in repr(rotator)
    with pytest.raises(ValueError, match='num_slots must be an int >= 1'):
        EulerRotator(num_slots=0)
    with pytest.raises(ValueError, match='lr_scale must be three'):
        EulerRotator(lr_scale=[1.0, 2.0])
    with pytest.raises(IndexError, match='holds 3 slots'):
        rotator(torch.zeros(1, 4, 3), slots=torch.tensor([3]))
    with pytest.raises(ValueError, match='one per cloud'):
        rotator(torch.zeros(2, 4, 3), slots=torch.tensor([0]))
