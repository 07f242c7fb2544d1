"""The pure-torch point ops against their naive twins, and through openpoints' patched autograd Functions."""
from __future__ import annotations

import pytest
import torch

import openpoints_dd  # noqa: F401  (installs the patches)
from openpoints.models.layers import (furthest_point_sample, gather_operation, grouping_operation, knn as op_knn,
                                      three_interpolate, three_interpolation, three_nn)
from openpoints.models.layers import group as op_group
from openpoints.models.layers import subsample as op_subsample
from openpoints.models.layers import upsampling as op_upsampling
from openpoints_dd.compat import point_ops

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------- furthest point sampling
def test_fps_known_answer_on_a_line():
    xyz = torch.tensor([[[0., 0, 0], [1, 0, 0], [3, 0, 0], [10, 0, 0]]])
    # start at 0; the farthest is 10 (index 3); then 3 (min distance 3) beats 1 (min distance 1)
    assert point_ops.furthest_point_sample(xyz, 3).tolist() == [[0, 3, 2]]
    assert point_ops.furthest_point_sample_naive(xyz, 3).tolist() == [[0, 3, 2]]


@pytest.mark.parametrize('device', DEVICES)
def test_fps_matches_naive(device):
    xyz = torch.rand(2, 96, 3)
    expected = point_ops.furthest_point_sample_naive(xyz, 24)
    got = point_ops.furthest_point_sample(xyz.to(device), 24)
    assert got.dtype == torch.int32 and got.shape == (2, 24)
    assert torch.equal(got.cpu(), expected)
    assert all(len(set(row.tolist())) == 24 for row in got)


def test_fps_restores_the_thread_count():
    threads = torch.get_num_threads()
    point_ops.furthest_point_sample(torch.rand(1, 50, 3), 10)
    assert torch.get_num_threads() == threads


def test_fps_through_openpoints_function():
    xyz = torch.rand(3, 200, 3, requires_grad=True)
    idx = furthest_point_sample(xyz, 50)
    assert idx.dtype == torch.int32 and not idx.requires_grad
    assert torch.equal(idx, point_ops.furthest_point_sample(xyz, 50))
    sampled = op_subsample.fps(xyz.detach(), 50)                            # FPS + gather, openpoints' helper
    assert torch.equal(sampled, torch.stack([xyz[b, idx[b].long()] for b in range(3)]).detach())


# ------------------------------------------------------------------------------------------------ ball query
def test_ball_query_known_answer():
    support = torch.tensor([[[0., 0, 0], [0.5, 0, 0], [0.05, 0, 0], [0.08, 0, 0], [5, 0, 0]]])
    queries = torch.tensor([[[0., 0, 0], [0.5, 0, 0], [9, 9, 9]]])
    idx = point_ops.ball_query(0.1, 4, support, queries)
    # query 0: hits 0, 2, 3 in index order, the 4th slot repeats the first hit;
    # query 1: a single hit (itself); query 2: no hit at all -> zeros
    assert idx.tolist() == [[[0, 2, 3, 0], [1, 1, 1, 1], [0, 0, 0, 0]]]


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('num_support, num_neighbors', [(64, 8), (5, 8)])           # 5 < 8: fewer points than K
def test_ball_query_matches_naive(device, num_support, num_neighbors):
    support = torch.rand(2, num_support, 3)
    queries = torch.cat([support[:, :10] + 0.01, torch.full((2, 3, 3), 5.0)], dim=1)  # the last 3 hit nothing
    expected = point_ops.ball_query_naive(0.3, num_neighbors, support, queries)
    got = point_ops.ball_query(0.3, num_neighbors, support.to(device), queries.to(device))
    assert got.dtype == torch.int32 and torch.equal(got.cpu(), expected)
    assert (expected[:, -3:] == 0).all()
    counts = [(torch.cdist(queries[b], support[b]) < 0.3).sum(-1) for b in range(2)]
    assert any((c[:10] < num_neighbors).any() for c in counts), 'the inputs should include fewer-than-K queries'


def test_ball_query_and_query_and_group_through_openpoints():
    support = torch.rand(2, 80, 3)
    queries = support[:, :16].contiguous()
    features = torch.rand(2, 5, 80)
    idx = op_group.ball_query(0.25, 12, support, queries)
    assert torch.equal(idx, point_ops.ball_query_naive(0.25, 12, support, queries))
    grouped_xyz, grouped_features = op_group.QueryAndGroup(0.25, 12)(queries, support, features)
    expected_xyz = torch.stack([support[b][idx[b].long()] for b in range(2)]) - queries.unsqueeze(2)  # (B, M, K, 3)
    torch.testing.assert_close(grouped_xyz, expected_xyz.permute(0, 3, 1, 2))
    torch.testing.assert_close(grouped_features, point_ops.group_points_naive(features, idx))


# ------------------------------------------------------------------------------------------ grouping / gather
@pytest.mark.parametrize('device', DEVICES)
def test_grouping_and_gather_match_naive(device):
    features = torch.randn(2, 6, 40)
    group_idx = torch.randint(0, 40, (2, 7, 5), dtype=torch.int32)
    gather_idx = torch.randint(0, 40, (2, 9), dtype=torch.int32)
    grouped = point_ops.group_points(features.to(device), group_idx.to(device))
    assert grouped.shape == (2, 6, 7, 5) and grouped.is_contiguous()
    torch.testing.assert_close(grouped.cpu(), point_ops.group_points_naive(features, group_idx))
    gathered = point_ops.gather_points(features.to(device), gather_idx.to(device))
    torch.testing.assert_close(gathered.cpu(), point_ops.gather_points_naive(features, gather_idx))


def test_grouping_and_gathers_through_openpoints():
    features = torch.randn(2, 6, 40)
    group_idx = torch.randint(0, 40, (2, 7, 5), dtype=torch.int32)
    gather_idx = torch.randint(0, 40, (2, 9), dtype=torch.int32)
    expected_groups = point_ops.group_points_naive(features, group_idx)
    torch.testing.assert_close(grouping_operation(features, group_idx), expected_groups)
    torch.testing.assert_close(op_group.torch_grouping_operation(features, group_idx.long()),
                               grouping_operation(features, group_idx))
    expected = point_ops.gather_points_naive(features, gather_idx)
    torch.testing.assert_close(gather_operation(features, gather_idx), expected)           # group.py's copy
    torch.testing.assert_close(op_subsample.gather_operation(features, gather_idx), expected)


def test_grouping_output_may_be_edited_in_place_with_grad():
    """openpoints' KNNGroup does `grouped -= centre` on the output; a view output would make autograd refuse."""
    features = torch.randn(1, 3, 20, requires_grad=True)
    grouped = grouping_operation(features, torch.randint(0, 20, (1, 4, 3), dtype=torch.int32))
    grouped -= 1.0
    grouped.sum().backward()
    assert features.grad is not None and features.grad.sum() == 3 * 4 * 3   # every picked entry once


# ---------------------------------------------------------------------------------------------------- three_nn
@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('num_known', [12, 3, 2, 1])                    # 2 and 1: fewer than 3 known points
def test_three_nn_matches_naive(device, num_known):
    unknown, known = torch.rand(2, 15, 3), torch.rand(2, num_known, 3)
    expected_dist, expected_idx = point_ops.three_nn_naive(unknown, known)
    dist, idx = point_ops.three_nn(unknown.to(device), known.to(device))
    assert idx.dtype == torch.int32 and torch.equal(idx.cpu(), expected_idx)
    torch.testing.assert_close(dist.cpu(), expected_dist)
    if num_known < 3:
        assert torch.isinf(dist[..., num_known:]).all() and (idx[..., num_known:] == 0).all()
    through_openpoints = three_nn(unknown.to(device), known.to(device))
    assert torch.equal(through_openpoints[1].cpu(), expected_idx)
    torch.testing.assert_close(through_openpoints[0].cpu(), expected_dist)


def test_three_nn_and_interpolation_through_openpoints():
    unknown, known = torch.rand(2, 30, 3), torch.rand(2, 10, 3)
    features = torch.randn(2, 4, 10)
    dist, idx = three_nn(unknown, known)
    expected_dist, expected_idx = point_ops.three_nn_naive(unknown, known)
    assert torch.equal(idx, expected_idx)
    torch.testing.assert_close(dist, expected_dist)
    weight = torch.rand(2, 30, 3)
    torch.testing.assert_close(three_interpolate(features, idx, weight),
                               point_ops.three_interpolate_naive(features, idx, weight))
    inverse = 1.0 / (expected_dist + 1e-8)
    torch.testing.assert_close(three_interpolation(unknown, known, features),
                               point_ops.three_interpolate_naive(features, expected_idx,
                                                                 inverse / inverse.sum(-1, keepdim=True)))


@pytest.mark.parametrize('device', DEVICES)
def test_three_interpolate_matches_naive(device):
    features = torch.randn(2, 5, 11)
    idx = torch.randint(0, 11, (2, 13, 3), dtype=torch.int32)
    weight = torch.rand(2, 13, 3)
    got = point_ops.three_interpolate(features.to(device), idx.to(device), weight.to(device))
    torch.testing.assert_close(got.cpu(), point_ops.three_interpolate_naive(features, idx, weight))


# -------------------------------------------------------------------------------------- gradcheck (float64)
def _grouping(features):
    return op_group.GroupingOperation.apply(features, _IDX['group'])


def _gather_group_py(features):
    return op_group.GatherOperation.apply(features, _IDX['gather'])


def _gather_subsample_py(features):
    return op_subsample.GatherOperation.apply(features, _IDX['gather'])


def _interpolate(features):
    return op_upsampling.ThreeInterpolate.apply(features, _IDX['three'], _IDX['weight'])


# Repeated indices on purpose (7 points, 12 picks): the backward must add, not overwrite.
_IDX = {'group': torch.tensor([[[0, 3, 3], [6, 1, 0], [2, 2, 5], [4, 6, 6]]], dtype=torch.int32).repeat(2, 1, 1),
        'gather': torch.tensor([[1, 1, 4, 0, 6]], dtype=torch.int32).repeat(2, 1),
        'three': torch.tensor([[[0, 1, 2], [2, 2, 6], [5, 4, 3]]], dtype=torch.int32).repeat(2, 1, 1),
        'weight': torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [1.0, 0.0, 0.0]]],
                               dtype=torch.float64).repeat(2, 1, 1)}


@pytest.mark.parametrize('fn', [_grouping, _gather_group_py, _gather_subsample_py, _interpolate],
                         ids=['grouping', 'gather_group', 'gather_subsample', 'three_interpolate'])
def test_gradcheck_and_gradgradcheck_through_openpoints(fn):
    features = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (features,))
    assert torch.autograd.gradgradcheck(fn, (features,))


# ------------------------------------------------------------------------------------------------------- kNN
def test_knn_naive_known_answer():
    support = torch.tensor([[[0., 0, 0], [2, 0, 0], [0.5, 0, 0], [-1, 0, 0]]])
    dist, idx = point_ops.knn_naive(2, torch.zeros(1, 1, 3), support)
    assert idx.tolist() == [[[0, 2]]] and dist.tolist() == [[[0.0, 0.5]]]


@pytest.mark.parametrize('device', DEVICES)
def test_knn_implementations_match_brute_force(device):
    query, support = torch.rand(2, 20, 3), torch.rand(2, 50, 3)
    expected_dist, expected_idx = point_ops.knn_naive(6, query, support)
    q, s = query.to(device), support.to(device)

    dist, idx = point_ops.knn(6, q, s)
    assert torch.equal(idx.cpu(), expected_idx)
    torch.testing.assert_close(dist.cpu(), expected_dist)

    dist, idx = op_knn.knn_point(6, q, s)                              # (k, query, support)
    assert torch.equal(idx.cpu(), expected_idx)
    torch.testing.assert_close(dist.cpu(), expected_dist)

    dist, idx = op_knn.KNN(6)(q, s)                                    # knn.py: forward(query, support)
    assert idx.dtype == torch.int32 and torch.equal(idx.long().cpu(), expected_idx)
    torch.testing.assert_close(dist.cpu(), expected_dist)

    _, idx = op_group.KNN(6)(s, q)                                     # group.py: forward(support, query)
    assert torch.equal(idx.long().cpu(), expected_idx)


def test_dilated_knn_keeps_every_dilation_th_neighbour():
    points = torch.rand(2, 40, 3)
    _, expected = point_ops.knn_naive(8, points, points)
    for module in (op_knn.DilatedKNN(k=4, dilation=2), op_group.DilatedKNN(k=4, dilation=2)):
        assert torch.equal(module(points).long(), expected[:, :, ::2])
