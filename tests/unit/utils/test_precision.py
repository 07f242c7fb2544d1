"""utils.precision: the amp setting, bf16 autocast of the forward and fp32 losses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import openpoints_dd  # noqa: F401  (SmoothCrossEntropy without .cuda())
from openpoints.loss import build_criterion_from_cfg
from openpoints_dd.utils.config import REPO_ROOT, load_config
from openpoints_dd.utils.precision import autocast, check_amp, fp32_criteria

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.mark.parametrize('value', [None, 'fp32', 'bf16'])
def test_valid_settings(value):
    assert check_amp(value) == value


@pytest.mark.parametrize('value', ['bogus', 'fp16', 'BF16', True, 16])
def test_bad_setting_names_the_key_and_the_choices(value):
    with pytest.raises(ValueError, match=r"amp must be one of null, 'fp32' .* or 'bf16'.*got"):
        check_amp(value)
    with pytest.raises(ValueError, match=r'train\.amp must be one of'):
        check_amp(value, key='train.amp')


def test_amp_is_a_known_key_of_every_train_config():
    """`amp=bf16` on the command line needs no `+`: cfgs/train/default.yaml declares it (null)."""
    cfg = load_config(REPO_ROOT / 'cfgs' / 'train' / 'distilled-pointnet-cpu.yaml', ['amp=bf16'])
    assert cfg.amp == 'bf16'
    assert load_config(REPO_ROOT / 'cfgs' / 'train' / 'partseg' / 'embedded-pointnet.yaml', []).amp is None


@pytest.mark.parametrize('device', DEVICES)
def test_autocast_runs_matmuls_in_bf16_and_keeps_parameters_fp32(device):
    layer = nn.Linear(8, 4).to(device)
    x = torch.randn(3, 8, device=device)
    with autocast('bf16', device):
        assert layer(x).dtype == torch.bfloat16
    for amp in (None, 'fp32'):
        with autocast(amp, device):
            assert layer(x).dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in layer.parameters())


@pytest.mark.parametrize('device', DEVICES)
def test_cpu_autocast_policy_leaves_log_softmax_in_bf16_which_is_why_losses_are_wrapped(device):
    """What torch's autocast keeps in fp32 by itself (cross-entropy) and what it does not (log_softmax, the core
    of openpoints' SmoothCrossEntropy): the reason for `fp32_criteria`."""
    logits, target = torch.randn(4, 5, device=device).bfloat16(), torch.tensor([0, 1, 2, 3], device=device)
    with autocast('bf16', device):
        assert F.cross_entropy(logits, target).dtype == torch.float32
        assert F.log_softmax(logits, dim=1).dtype == torch.bfloat16


@pytest.mark.parametrize('device', DEVICES)
def test_fp32_criteria_compute_the_loss_in_fp32_on_fp32_logits(device):
    criterion = build_criterion_from_cfg({'NAME': 'SmoothCrossEntropy', 'label_smoothing': 0.2})
    logits = (torch.randn(6, 40, device=device) * 3).bfloat16()
    target = torch.arange(6, device=device)
    expected = criterion(logits.float(), target)
    with autocast('bf16', device):
        assert criterion(logits, target).dtype == torch.bfloat16          # unwrapped: a bf16 loss
        with fp32_criteria(criterion, None):
            loss = criterion(logits, target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    assert 'forward' not in vars(criterion)                               # restored on exit
