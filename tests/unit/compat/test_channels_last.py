"""The channels-last CPU paths compute upstream's function: values, gradients and batch statistics, float64."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import openpoints_dd  # noqa: F401  (installs the paths)
from openpoints.models import build_model_from_cfg
from openpoints.utils import EasyConfig
from openpoints_dd.compat import channels_last
from openpoints_dd.utils.config import REPO_ROOT

MODELS = ['pointnext-s', 'pointnet++', 'dgcnn', 'pct', 'pointmlp']


def _model_cfg(name: str) -> EasyConfig:
    cfg = EasyConfig()
    cfg.load(str(REPO_ROOT / 'cfgs' / 'models' / f'{name}.yaml'), recursive=False)
    model = cfg.model
    model.criterion_args = cfg.criterion_args
    if name == 'pointmlp':                  # 128 points: the fourth stage keeps 8, so 8 neighbours
        model.points, model.k_neighbors = 128, [8, 8, 8, 8]
    if name == 'pct':
        model.centres = [64, 32]
    if name == 'dgcnn':
        model.encoder_args.k = 8
    return model


def _step(model: nn.Module, pos: torch.Tensor, target: torch.Tensor, create_graph: bool = False):
    logits, loss = model.get_logits_loss({'pos': pos, 'x': pos.transpose(1, 2).contiguous()}, target)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return logits, loss, grads


@pytest.mark.parametrize('name', MODELS)
def test_backbone_step_equals_upstream_in_float64(name):
    torch.manual_seed(0)
    model = build_model_from_cfg(_model_cfg(name)).double().train()
    upstream = copy.deepcopy(model)
    pos = torch.rand(3, 128, 3, dtype=torch.float64)
    target = torch.tensor([0, 5, 7])
    with channels_last.enabled(True):
        # the dropout masks of the heads must match: same RNG state for both passes
        torch.manual_seed(1)
        logits, loss, grads = _step(model, pos, target)
    with channels_last.enabled(False):
        torch.manual_seed(1)
        ref_logits, ref_loss, ref_grads = _step(upstream, pos, target)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-10)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref, rtol=1e-7, atol=1e-9)
    for (key, buf), ref in zip(model.named_buffers(), upstream.buffers()):     # BN running mean/var/count
        torch.testing.assert_close(buf, ref, rtol=1e-9, atol=1e-10, msg=key)


@pytest.mark.parametrize('name', MODELS)
def test_backbone_paths_are_taken_on_cpu(name, monkeypatch):
    """Each backbone's blocks run the channels-last code, not a silent fallback to upstream's forward."""
    model = build_model_from_cfg(_model_cfg(name)).train()
    fallbacks = []
    for key, original in list(channels_last._ORIGINAL.items()):
        monkeypatch.setitem(channels_last._ORIGINAL, key,
                            lambda *args, _original=original, _key=key: fallbacks.append(_key) or _original(*args))
    pos = torch.rand(2, 128, 3)
    if name == 'pct':
        spy = []
        monkeypatch.setattr(channels_last, 'gather_rows',
                            lambda *args, _f=channels_last.gather_rows: spy.append(1) or _f(*args))
        model.get_logits_loss({'pos': pos, 'x': pos.transpose(1, 2)}, torch.tensor([0, 1]))
        assert spy, 'PCT did not take the channels-last neighbour embedding'
    else:
        model.get_logits_loss({'pos': pos, 'x': pos.transpose(1, 2)}, torch.tensor([0, 1]))
    # upstream's forward only where no path applies: PointNeXt's stem (is_head) and last stage (stride 1, all
    # points grouped), PointNet++'s group-all set abstraction
    expected = {'pointnext-s': ['SetAbstraction'] * 2, 'pointnet++': ['ConvPool'], 'dgcnn': [], 'pct': [],
                'pointmlp': []}
    assert fallbacks == expected[name]


@pytest.mark.parametrize('name', ['pointnext-s', 'dgcnn', 'pct', 'pointmlp'])
def test_second_order_gradients_equal_upstream(name):
    """Gradient matching differentiates parameter gradients again: the paths must stay twice differentiable."""
    torch.manual_seed(0)
    model = build_model_from_cfg(_model_cfg(name)).double().train()
    for module in model.modules():                    # no dropout: the two passes must see the same network
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    upstream = copy.deepcopy(model)
    pos = torch.rand(2, 128, 3, dtype=torch.float64)
    target = torch.tensor([1, 2])
    results = []
    for net, flag in ((model, True), (upstream, False)):
        syn = pos.clone().requires_grad_(True)
        with channels_last.enabled(flag):
            _, _, grads = _step(net, syn, target, create_graph=True)
            (point_grad,) = torch.autograd.grad(sum(g.square().sum() for g in grads), syn)
        results.append(point_grad)
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-9)


def test_neighbour_max_matches_torch_max_with_ties_and_routes_the_gradient_to_the_first():
    base = torch.tensor([[[[1.0, 3.0, 3.0, 0.0]], [[2.0, 2.0, 5.0, 5.0]]]])            # (1, 2, 1, 4): ties
    h = base.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    ref = base.clone().requires_grad_(True)
    out = channels_last.neighbour_max(h)
    torch.testing.assert_close(out, torch.max(ref, dim=-1)[0])
    out.sum().backward()
    torch.max(ref, dim=-1)[0].sum().backward()
    assert torch.equal(h.grad, ref.grad) and h.grad.is_contiguous(memory_format=torch.channels_last)
    assert h.grad[0, 0, 0].tolist() == [0, 1, 0, 0] and h.grad[0, 1, 0].tolist() == [0, 0, 1, 0]
    assert channels_last.neighbour_max(h, keepdim=True).shape == (1, 2, 1, 1)


def test_pointmlp_row_max_routes_ties_as_adaptive_max_pool():
    """PreExtraction's max over the K rows of a group against upstream's adaptive_max_pool1d, with ties
    (all-zero channels after ReLU are common)."""
    import torch.nn.functional as F
    maps = torch.tensor([[[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0]]])     # (1, C, K)
    ref = maps.clone().requires_grad_(True)
    rows = maps.transpose(1, 2).contiguous().requires_grad_(True)                                # (1, K, C)
    F.adaptive_max_pool1d(ref, 1).sum().backward()
    rows.max(dim=1)[0].sum().backward()
    assert torch.equal(rows.grad.transpose(1, 2), ref.grad)
    assert ref.grad[0, 2].tolist() == [1, 0, 0, 0]


def test_gather_rows_matches_indexing_and_twice_differentiable():
    rows = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[[0, 6, 6], [3, 3, 1]], [[2, 0, 5], [4, 4, 4]]], dtype=torch.int32)  # repeats on purpose
    expected = torch.stack([rows[b][idx[b].long()] for b in range(2)])
    torch.testing.assert_close(channels_last.gather_rows(rows, idx), expected)
    assert torch.autograd.gradcheck(lambda r: channels_last.gather_rows(r, idx), (rows,))
    assert torch.autograd.gradgradcheck(lambda r: channels_last.gather_rows(r, idx), (rows,))


def test_switch_restores_and_falls_back():
    assert channels_last.is_enabled()
    with channels_last.enabled(False):
        assert not channels_last.is_enabled()
    assert channels_last.is_enabled()


def _blocks() -> dict:
    """One block of each kind, from the backbones as built, with an input of its own: name -> forward()."""
    torch.manual_seed(0)
    pos, features = torch.rand(4, 512, 3), torch.randn(4, 32, 512)
    pointnext = build_model_from_cfg(_model_cfg('pointnext-s')).train().encoder.encoder[1][0]
    pointnet2 = build_model_from_cfg(_model_cfg('pointnet++')).train().encoder.SA_modules[0]
    edge_conv = build_model_from_cfg(_model_cfg('dgcnn')).train().encoder.backbone[0].gconv
    pct = build_model_from_cfg(_model_cfg('pct')).train()
    pre_extraction = build_model_from_cfg(_model_cfg('pointmlp')).train().pre_blocks_list[0]
    edge_x, edge_idx = torch.randn(4, 64, 512, 1), torch.randint(0, 512, (4, 512, 8))
    pct_features, centres = torch.randn(4, 64, 512), torch.randperm(512)[:128].repeat(4, 1)
    neighbours = torch.randint(0, 512, (4, 128, 16))
    grouped = torch.randn(4, 128, 8, 128)
    return {'SetAbstraction': lambda: pointnext([pos, features])[1],
            'ConvPool': lambda: pointnet2(pos, pos.transpose(1, 2).contiguous())[1],
            'EdgeConv': lambda: edge_conv(edge_x, edge_idx),
            'neighbour_embedding': lambda: channels_last.neighbour_embedding(pct.gather_local_0, pct_features,
                                                                             centres, neighbours),
            'PreExtraction': lambda: pre_extraction(grouped)}


@pytest.mark.parametrize('block', ['SetAbstraction', 'ConvPool', 'EdgeConv', 'neighbour_embedding',
                                   'PreExtraction'])
def test_bf16_autocast_error_of_each_path_is_upstreams(block):
    """Under bf16 autocast a path must lose no more than upstream's block does. The folded first convolutions
    (`W_p p_j - W_p p_i` instead of `W_p (p_j - p_i)`) would lose the point offsets in bf16, which is why their
    xyz products stay fp32. (Whole untrained backbones amplify bf16 rounding too much to compare this way.)"""
    forward = _blocks()[block]
    with torch.no_grad():
        reference = forward().float()
        errors = {}
        for flag in (True, False):
            with channels_last.enabled(flag), torch.autocast('cpu', dtype=torch.bfloat16):
                errors[flag] = float((forward().float() - reference).norm() / reference.norm())
    assert errors[True] < 0.02 and errors[True] < 1.5 * errors[False] + 1e-3, errors
