"""PartGradientMatching: global and local (per-part) matching; missing parts add 0, never NaN."""
import pytest
import torch

from openpoints_dd.models import DistillPointNetSeg
from openpoints_dd.objectives import PartGradientMatching


def _setup():
    torch.manual_seed(0)
    net = DistillPointNetSeg(num_classes=5, num_shape_classes=2, widths=(8, 16, 32)).eval()
    syn = torch.randn(2, 24, 3, requires_grad=True)
    real = torch.randn(3, 24, 3)
    syn_parts = torch.randint(0, 3, (2, 24))
    real_parts = torch.randint(0, 2, (3, 24))       # part 2 absent from the real batch
    return net, syn, real, syn_parts, real_parts


def test_local_matching_with_a_part_absent_is_finite_and_skips_it():
    net, syn, real, syn_parts, real_parts = _setup()
    objective = PartGradientMatching()
    loss = objective(net, syn, real, 0, syn_parts=syn_parts, real_parts=real_parts, part_ids=[0, 1, 2], local=True)
    assert torch.isfinite(loss)
    only_present = objective(net, syn, real, 0, syn_parts=syn_parts, real_parts=real_parts, part_ids=[0, 1],
                             local=True)
    assert torch.allclose(loss, only_present)
    part0 = objective(net, syn, real, 0, syn_parts=syn_parts, real_parts=real_parts, part_ids=[0], local=True)
    assert 0 < part0 < loss                    # the sum over parts, part 1 adds a positive distance
    loss.backward()
    assert torch.isfinite(syn.grad).all() and syn.grad.abs().sum() > 0


def test_all_parts_absent_gives_zero_with_a_graph():
    net, syn, real, syn_parts, _ = _setup()
    loss = PartGradientMatching()(net, syn, real, 1, syn_parts=syn_parts, real_parts=torch.full((3, 24), 4),
                                  part_ids=[3, 4], local=True)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(syn.grad).all()


def test_global_matching_and_alternation():
    net, syn, real, syn_parts, real_parts = _setup()
    objective = PartGradientMatching(local_every=2)
    loss = objective(net, syn, real, 0, syn_parts=syn_parts, real_parts=real_parts)
    assert torch.isfinite(loss) and loss > 0
    same = PartGradientMatching(distance='mse')(net, real.clone().requires_grad_(), real, 0, syn_parts=real_parts,
                                                real_parts=real_parts)
    assert same.item() == pytest.approx(0.0, abs=1e-10)   # identical batches, identical gradients
    assert [objective.is_local(s) for s in range(4)] == [False, True, False, True]
    assert not any(PartGradientMatching(local_every=0).is_local(s) for s in range(4))
    assert all(PartGradientMatching(local_every=1).is_local(s) for s in range(4))


def test_missing_part_ids_are_clear_errors():
    net, syn, real, syn_parts, real_parts = _setup()
    with pytest.raises(ValueError, match='syn_parts and real_parts'):
        PartGradientMatching()(net, syn, real, 0)
    with pytest.raises(ValueError, match='local_every'):
        PartGradientMatching(local_every=-1)


@pytest.mark.parametrize('local', [False, True])
@pytest.mark.parametrize('distance', ['layerwise_cosine', 'mse', 'cos'])
def test_all_categories_in_one_pass_equal_the_per_category_loop(local, distance):
    """Global and per-part terms, values and second order (their gradient w.r.t. the synthetic points), float64."""
    torch.manual_seed(0)
    net = DistillPointNetSeg(num_classes=6, num_shape_classes=3, widths=(8, 16, 32)).double()
    net({'pos': torch.randn(6, 24, 3, dtype=torch.float64), 'cls': torch.arange(6) % 3})   # running statistics
    net.eval()
    part_ids = [[0, 1], [2, 3], [4, 5]]
    syn = torch.randn(3, 2, 24, 3, dtype=torch.float64, requires_grad=True)
    real = torch.randn(3, 4, 24, 3, dtype=torch.float64)
    syn_parts = torch.stack([torch.tensor(p)[torch.randint(0, 2, (2, 24))] for p in part_ids])
    real_parts = torch.stack([torch.tensor(p)[torch.randint(0, 2, (4, 24))] for p in part_ids])
    real_parts[2] = 4                                  # part 5 absent from category 2's real batch: skipped
    objective = PartGradientMatching(distance=distance)
    labels = torch.arange(3)
    loop = torch.stack([objective(net, syn[g], real[g], g, syn_parts=syn_parts[g], real_parts=real_parts[g],
                                  part_ids=part_ids[g], local=local) for g in range(3)])
    batched = objective.match_classes(net, syn, real, labels, syn_parts=syn_parts, real_parts=real_parts,
                                      part_ids=part_ids, local=local)
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)
    (expected,), (got,) = (torch.autograd.grad(x.sum(), syn) for x in (loop, batched))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert expected.abs().sum() > 0
