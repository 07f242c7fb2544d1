"""PCTClassifier: registered, accepts openpoints batches and point tensors, validates its inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import openpoints_dd  # noqa: F401
from openpoints.models import build_model_from_cfg
from openpoints.models.build import MODELS
from openpoints_dd.models import PCTClassifier
from openpoints_dd.models.pct import _offset_attention


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _small(model: PCTClassifier) -> PCTClassifier:
    """Fewer sampled centres (64, 32 instead of 512, 256): the same forward code, a fraction of the time."""
    model.subsample1.num_groups, model.subsample2.num_groups = 64, 32
    return model


def test_centres_scale_the_two_embedding_stages_and_must_fit_the_input():
    model = build_model_from_cfg({'NAME': 'PCTClassifier', 'num_classes': 4, 'centres': [48, 16]}).eval()
    assert (model.subsample1.num_groups, model.subsample2.num_groups) == (48, 16) and 'centres=[48, 16]' in repr(model)
    seen = []
    model.conv_fuse.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    assert model(torch.rand(2, 96, 3)).shape == (2, 4) and seen == [(2, 4 * 256 + 256, 16)]   # 16 centres
    with pytest.raises(ValueError, match=r'40 input points but 48 FPS centres.*model.centres'):
        model(torch.rand(2, 40, 3))
    with pytest.raises(ValueError, match='centres must be two counts'):
        PCTClassifier(centres=[16, 32])


def test_registered_and_built_from_cfg_with_criterion():
    assert MODELS.get('PCTClassifier') is PCTClassifier
    model = build_model_from_cfg({'NAME': 'PCTClassifier', 'num_classes': 15, 'dropout': 0.3,
                                  'criterion_args': {'NAME': 'SmoothCrossEntropy', 'label_smoothing': 0.2}})
    assert model.linear3.out_features == 15 and model.dp1.p == 0.3
    assert type(model.criterion).__name__ == 'SmoothCrossEntropy'
    assert 'num_classes=15' in repr(model) and 'dropout=0.3' in repr(model) and 'in_channels=3' in repr(model)


def test_dict_and_tensor_inputs_agree_and_loss_is_cross_entropy():
    model = _small(PCTClassifier(num_classes=5)).eval()
    pos = torch.rand(2, 200, 3)
    target = torch.tensor([1, 4])
    logits, loss = model.get_logits_loss({'pos': pos, 'x': pos.transpose(1, 2)}, target)
    torch.testing.assert_close(model(pos), logits)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))


def test_extra_input_channels():
    model = _small(PCTClassifier(num_classes=7, in_channels=4))
    pos = torch.rand(2, 200, 3)
    x = torch.cat([pos, pos[..., 1:2]], dim=-1).transpose(1, 2)            # xyz + height, as ScanObjectNN
    assert model({'pos': pos, 'x': x}).shape == (2, 7)


def test_input_errors_say_what_was_expected():
    model = PCTClassifier()
    with pytest.raises(ValueError, match=r'pos must be \(B, N, 3\).*Did you pass features'):
        model(torch.rand(2, 3, 600))
    with pytest.raises(ValueError, match=r'x must be \(B, >=3, N\)'):
        model({'pos': torch.rand(2, 600, 3), 'x': torch.rand(2, 600, 3)})
    with pytest.raises(ValueError, match='in_channels must be >= 3'):
        PCTClassifier(in_channels=2)
    with pytest.raises(ValueError, match=r'dropout must be in \[0, 1\)'):
        PCTClassifier(dropout=1.0)


def test_offset_attention_is_permutation_equivariant():
    layer = PCTClassifier().pt_last.sa1.eval()
    x = torch.randn(2, 256, 50)
    perm = torch.randperm(50)
    torch.testing.assert_close(_offset_attention(layer, x)[..., perm], _offset_attention(layer, x[..., perm]),
                               atol=1e-5, rtol=1e-5)


def test_offset_attention_feeds_the_offset_to_the_projection():
    """With a zero value projection the attended features vanish, so the offset is x itself."""
    layer = PCTClassifier().pt_last.sa1.eval()
    torch.nn.init.zeros_(layer.v_conv.weight)
    torch.nn.init.zeros_(layer.v_conv.bias)
    x = torch.randn(1, 256, 20)
    expected = x + layer.act(layer.after_norm(layer.trans_conv(x)))
    torch.testing.assert_close(_offset_attention(layer, x), expected)
