"""DistributionMatching: squared distance of class-mean embeddings of a frozen random backbone."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from openpoints_dd.objectives import DistributionMatching
from openpoints_dd.registry import build_objective


class _LinearEmbed(nn.Module):
    """embed(pos) = mean over points of pos @ W: linear, so class means can be matched by hand."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))

    def embed(self, pos):
        return (pos @ self.weight).mean(dim=1)


def test_zero_when_class_means_agree_and_hand_computed_otherwise():
    objective = DistributionMatching()
    real = torch.randn(4, 5, 3)
    syn = real.mean(dim=0, keepdim=True).clone().requires_grad_(True)   # one cloud at the mean of four
    backbone = _LinearEmbed()
    assert objective(backbone, syn, real, 0).item() == pytest.approx(0.0, abs=1e-10)
    real = torch.zeros(2, 5, 3)
    syn = torch.zeros(1, 5, 3)
    syn[..., 0] = 1.0                     # embedding (1, 0) + (0, 0) + ... = x·W row 0 + z·W row 2 = (1, 0)
    assert objective(backbone, syn, real, 0).item() == pytest.approx(1.0)
    syn[..., 2] = 1.0                     # (1, 0) + (1, 1) = (2, 1): 4 + 1
    assert objective(backbone, syn, real, 0).item() == pytest.approx(5.0)


def test_zero_for_the_same_clouds_in_another_order(tiny_backbone, tiny_clouds):
    objective = build_objective({'NAME': 'DistributionMatching'})
    real = tiny_clouds.pos[tiny_clouds.y == 2]
    loss = objective(tiny_backbone, real.flip(0), real, 2)
    assert loss.item() == pytest.approx(0.0, abs=1e-8)


def test_first_order_only_and_frozen_backbone(tiny_backbone, tiny_clouds):
    objective = DistributionMatching()
    assert objective.trains_backbone is False
    tiny_backbone.requires_grad_(False)              # as the engine does for such objectives
    real = tiny_clouds.pos[tiny_clouds.y == 0]
    syn = tiny_clouds.pos[tiny_clouds.y == 1][:2].clone().requires_grad_(True)
    loss = objective(tiny_backbone, syn, real, 0)
    loss.backward()
    assert loss.item() > 0 and syn.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.parameters())
    assert repr(objective).startswith('DistributionMatching(queue_size=0,')


def test_cross_entropy_term_adds_the_weighted_mean_over_each_class_clouds(tiny_backbone, tiny_clouds):
    plain, weighted = DistributionMatching(), DistributionMatching(queue_size=1, ce_weight=0.5)
    real = torch.stack([tiny_clouds.pos[tiny_clouds.y == c][:2] for c in (0, 1)])
    syn = torch.stack([tiny_clouds.pos[tiny_clouds.y == c][2:4] for c in (1, 2)]).requires_grad_(True)
    labels = torch.tensor([0, 1])
    ce = torch.stack([torch.nn.functional.cross_entropy(tiny_backbone(s), torch.full((2,), int(c)))
                      for s, c in zip(syn, labels)])
    expected = plain.match_classes(tiny_backbone, syn, real, labels) + 0.5 * ce
    assert torch.allclose(weighted.match_classes(tiny_backbone, syn, real, labels), expected, atol=1e-5)
    with pytest.raises(ValueError, match='ce_weight'):
        DistributionMatching(queue_size=1, ce_weight=-1.0)
    with pytest.raises(ValueError, match='needs queue_size'):   # a random head's cross-entropy is noise
        DistributionMatching(ce_weight=0.5)


def test_the_cross_entropy_term_reuses_the_embedding_pass(tiny_backbone, tiny_clouds, monkeypatch):
    """One embedding pass over the synthetic clouds serves the mean and the logits (not a second forward)."""
    objective = DistributionMatching(queue_size=1, ce_weight=1.0)
    real = tiny_clouds.pos[tiny_clouds.y == 0][:2].unsqueeze(0)
    syn = tiny_clouds.pos[tiny_clouds.y == 0][2:4].unsqueeze(0).clone().requires_grad_(True)
    calls = []
    embed = tiny_backbone.embed
    monkeypatch.setattr(tiny_backbone, 'embed', lambda pos: calls.append(len(pos)) or embed(pos))
    monkeypatch.setattr(tiny_backbone, 'forward', lambda *a: pytest.fail('a second pass over the points'))
    objective.match_classes(tiny_backbone, syn, real, torch.tensor([0])).sum().backward()
    assert calls == [2, 2] and syn.grad.abs().sum() > 0   # the real batch, then the synthetic one
