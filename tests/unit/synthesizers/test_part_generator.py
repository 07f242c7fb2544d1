"""PartPointGenerator: noise intervals -> parts, with proportions given at build time."""
import pytest
import torch

from openpoints_dd.registry import build_synthesizer

PROPORTIONS = [[0.5, 0.3, 0.2], [0.9, 0.1]]


def _generator(**kwargs):
    cfg = {'NAME': 'PartPointGenerator', 'hidden_dim': 16, 'w0_initial': 30, **kwargs}
    return build_synthesizer(cfg, num_classes=2, cpc=2, part_proportions=PROPORTIONS)


def test_partition_reproduces_the_proportions_within_sampling_error():
    gen = _generator()
    n = 20000
    pos, parts = gen.synthesize_with_parts(torch.arange(4), n, torch.Generator().manual_seed(0))
    assert pos.shape == (4, n, 3) and parts.shape == (4, n)
    # default global ids: category 0 owns 0, 1, 2; category 1 owns 3, 4; slots 0-1 are category 0
    for slot, (ids, q) in enumerate([((0, 1, 2), PROPORTIONS[0])] * 2 + [((3, 4), PROPORTIONS[1])] * 2):
        assert set(parts[slot].unique().tolist()) <= set(ids)
        for part, p in zip(ids, q):
            freq = (parts[slot] == part).float().mean().item()
            assert abs(freq - p) < 4 * (p * (1 - p) / n) ** 0.5, (slot, part, freq, p)


def test_partition_boundaries_by_hand_and_custom_ids():
    gen = build_synthesizer({'NAME': 'PartPointGenerator', 'hidden_dim': 8}, num_classes=2, cpc=1,
                            part_proportions=[[2, 1, 1], [1, 0, 3]], cls2parts=[[7, 8, 9], [0, 1, 2]])
    noise = torch.tensor([0.0, 0.49, 0.5, 0.74, 0.75, 0.999999]).view(1, -1, 1).repeat(2, 1, 1)
    parts = gen.partition(noise, torch.tensor([0, 1]))
    # category 0: [0, .5) -> 7, [.5, .75) -> 8, [.75, 1) -> 9 (proportions renormalised from 2:1:1)
    assert parts[0].tolist() == [7, 7, 8, 8, 9, 9]
    # category 1: [0, .25) -> 0, the empty part 1 never, [.25, 1) -> 2
    assert parts[1].tolist() == [0, 2, 2, 2, 2, 2]


def test_points_are_differentiable_and_labels_are_not():
    gen = _generator()
    pos, parts = gen.synthesize_with_parts(torch.tensor([1, 2]), 32)
    pos.square().sum().backward()
    assert gen.embedding.weight.grad.abs().sum() > 0 and parts.dtype == torch.long
    assert torch.equal(gen.synthesize(torch.tensor([0]), 8, torch.Generator().manual_seed(3)),
                       gen.synthesize_with_parts(torch.tensor([0]), 8, torch.Generator().manual_seed(3))[0])


@pytest.mark.parametrize('proportions, match', [
    ([[0.5, 0.5]], 'one list per category'),
    ([[0.5, 0.5], [0.0, 0.0]], 'not all 0'),
    ([[0.5, -0.1], [1.0]], '>= 0'),
])
def test_bad_proportions_are_clear_errors(proportions, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_synthesizer({'NAME': 'PartPointGenerator', 'hidden_dim': 8}, num_classes=2, cpc=1,
                          part_proportions=proportions)


def test_part_chamfer_distance_by_hand_and_missing_parts_left_out():
    from openpoints_dd.synthesizers.part_generator import part_chamfer_distance
    a = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [5, 5, 5]]])
    b = torch.tensor([[[0.0, 0, 1], [1, 0, 0], [9, 9, 9]]])
    # parts: a = (0, 1, 2), b = (0, 1, 3): part 2 of a and part 3 of b have no partner and are left out
    d = part_chamfer_distance(a, torch.tensor([[0, 1, 2]]), b, torch.tensor([[0, 1, 3]]))
    assert d.tolist() == pytest.approx([(1 + 0) / 2 + (1 + 0) / 2])


def test_part_aware_real_init_lowers_the_part_chamfer_distance():
    from openpoints_dd.synthesizers.part_generator import part_chamfer_distance
    torch.manual_seed(0)
    gen = build_synthesizer({'NAME': 'PartPointGenerator', 'hidden_dim': 32, 'w0_initial': 30, 'init': 'real',
                             'init_steps': 30, 'init_lr': 0.01, 'init_num_points': 64},
                            num_classes=1, cpc=1, part_proportions=[[0.5, 0.5]])
    parts = torch.tensor([[0] * 32 + [1] * 32])
    real = torch.cat([torch.randn(1, 32, 3) * 0.1 + torch.tensor([0.6, 0, 0]),
                      torch.randn(1, 32, 3) * 0.1 - torch.tensor([0.6, 0, 0])], 1)
    report = gen.initialize_from_real(real, parts)
    assert report['part_chamfer_end'] < 0.5 * report['part_chamfer_start']
    fake, fake_parts = gen.synthesize_with_parts(torch.tensor([0]), 64)
    assert fake[fake_parts == 0][:, 0].mean() > fake[fake_parts == 1][:, 0].mean()   # part 0 went to +x


def test_balanced_noise_gives_exact_counts_per_part():
    """balance 0: equal points per part (10 points, 3 parts -> 4, 3, 3 by largest remainder); balance 0.5:
    shares proportional to sqrt(q); balance 1 is the plain uniform draw (same random numbers as before)."""
    gen = _generator()
    _, parts = gen.synthesize_with_parts(torch.arange(4), 10, torch.Generator().manual_seed(0), balance=0.0)
    for slot, ids in enumerate([(0, 1, 2), (0, 1, 2), (3, 4), (3, 4)]):
        counts = sorted(((parts[slot] == p).sum().item() for p in ids), reverse=True)
        assert counts == ([4, 3, 3] if len(ids) == 3 else [5, 5])
    # category 1, q = (0.9, 0.1): sqrt shares 0.949 : 0.316 -> 75 : 25 of 100 points
    _, parts = gen.synthesize_with_parts(torch.tensor([2]), 100, torch.Generator().manual_seed(0), balance=0.5)
    assert (parts[0] == 3).sum().item() == 75 and (parts[0] == 4).sum().item() == 25
    plain = gen.synthesize_with_parts(torch.arange(4), 16, torch.Generator().manual_seed(3))
    assert torch.equal(plain[0], gen.synthesize_with_parts(torch.arange(4), 16, torch.Generator().manual_seed(3),
                                                           balance=1.0)[0])
    with pytest.raises(ValueError, match='balance must be in'):
        gen.synthesize_with_parts(torch.arange(4), 16, balance=1.5)


def test_per_slot_proportions_leave_a_part_out_of_one_slot():
    """K·cpc lists: slot 1 of category 0 never shows part 2 (proportion 0); category-level lists are repeated."""
    per_slot = [[0.5, 0.3, 0.2], [0.5, 0.5, 0.0], [0.9, 0.1], [0.9, 0.1]]
    gen = build_synthesizer({'NAME': 'PartPointGenerator', 'hidden_dim': 16}, num_classes=2, cpc=2,
                            part_proportions=per_slot)
    _, parts = gen.synthesize_with_parts(torch.arange(4), 4000, torch.Generator().manual_seed(0))
    assert (parts[0] == 2).any() and not (parts[1] == 2).any()
    assert abs((parts[1] == 1).float().mean().item() - 0.5) < 0.05
    assert gen.slot_proportions == per_slot and _generator().slot_proportions == [PROPORTIONS[0]] * 2 + [PROPORTIONS[1]] * 2
    with pytest.raises(ValueError, match='per slot'):
        build_synthesizer({'NAME': 'PartPointGenerator', 'hidden_dim': 8}, num_classes=2, cpc=2,
                          part_proportions=per_slot[:3])
