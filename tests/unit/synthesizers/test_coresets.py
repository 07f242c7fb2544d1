"""Coreset rules (Random, Herding, K-Center) and the coreset starts of ExplicitPoints and PointGenerator."""
from __future__ import annotations

import pytest
import torch

from openpoints_dd.data import RealPool
from openpoints_dd.registry import build_synthesizer
from openpoints_dd.synthesizers import ExplicitPoints, PartPointGenerator, PointGenerator, coresets
from openpoints_dd.utils.geometry import normalize_to_unit_sphere


@pytest.mark.parametrize('seed', range(5))
def test_herding_equals_brute_force_greedy(seed):
    features = torch.randn(9, 4, generator=torch.Generator().manual_seed(seed))
    for k in (1, 4, 9):
        assert coresets.herding(features, k).tolist() == coresets._herding_naive(features, k)


def test_herding_hand_computed():
    # mean (0, 0): first pick the point nearest it (index 2); then the one that brings the running sum closest
    # to 2·mean = 0, i.e. -phi(2) = (-0.1, 0) -> index 3 at (-1, 0) gives |(0.1 - 1, 0)| = 0.9, the smallest
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 0.0], [-1.0, 0.0], [-0.1, -1.0]])
    assert coresets.herding(features, 2).tolist() == [2, 3]
    assert coresets.nearest_to_mean(features) == 2


def _covering_radius(features, picks):
    return torch.cdist(features.double(), features[picks].double()).min(dim=1).values


@pytest.mark.parametrize('seed', range(5))
def test_k_center_is_farthest_first(seed):
    features = torch.randn(12, 3, generator=torch.Generator().manual_seed(seed))
    picks = coresets.k_center(features, 6, first=3).tolist()
    assert picks[0] == 3 and len(set(picks)) == 6
    for step in range(1, len(picks)):
        distance = _covering_radius(features, picks[:step])     # each item's distance to the previous picks
        assert distance[picks[step]] == pytest.approx(distance.max().item())


def test_k_center_hand_computed():
    points = torch.tensor([[0.0], [1.0], [10.0], [4.0], [6.0]])
    # from 0: farthest is 10; then min distances (0, 1, 0, 4, 4) -> first maximum, index 3 (4.0)
    assert coresets.k_center(points, 3, first=0).tolist() == [0, 2, 3]


def test_coreset_rules_reject_bad_input():
    with pytest.raises(ValueError, match='cannot pick 4 of 3'):
        coresets.herding(torch.randn(3, 2), 4)
    with pytest.raises(ValueError, match=r'floating \(M, D\)'):
        coresets.k_center(torch.randn(3), 1, first=0)
    with pytest.raises(ValueError, match='first must index'):
        coresets.k_center(torch.randn(3, 2), 2, first=5)
    with pytest.raises(ValueError, match='cannot pick 0 of 3'):
        coresets.random(3, 0)
    assert sorted(coresets.random(5, 5, torch.Generator().manual_seed(0)).tolist()) == list(range(5))


def _pool(per_class=5, num_classes=3, num_points=64):
    generator = torch.Generator().manual_seed(0)
    pos = torch.randn(per_class * num_classes, num_points, 3, generator=generator)
    pos = pos * torch.tensor([1.0, 0.3, 0.1]) * torch.arange(1, 1 + per_class * num_classes).view(-1, 1, 1)
    labels = torch.arange(num_classes).repeat(per_class)            # unsorted: the pool sorts by class
    return RealPool(pos, labels, [f'c{i}' for i in range(num_classes)], 'tiny')


@pytest.mark.parametrize('init', ['random', 'real', 'herding', 'kcenter', 'facility'])
def test_explicit_points_selects_class_balanced_real_clouds(init):
    pool = _pool()
    synth = ExplicitPoints(num_classes=3, cpc=2, num_points=64, init=init, embed_steps=4, embed_points=32,
                           embed_batch=4, embed_widths=[8, 16, 32])
    clouds, index = synth.select_from_pool(pool, torch.Generator().manual_seed(0))
    assert clouds.shape == (6, 64, 3) and index.shape == (6,)
    assert pool.labels[index].tolist() == [0, 0, 1, 1, 2, 2] and len(set(index.tolist())) == 6
    torch.testing.assert_close(clouds, normalize_to_unit_sphere(pool.pos[index]))
    again, same = synth.select_from_pool(pool, torch.Generator().manual_seed(0))
    assert torch.equal(index, same)                                  # seeded: the same selection
    assert synth.initialize_from_real(clouds) == {'init': 'random' if init == 'real' else init}
    assert torch.equal(synth.points.data, clouds)


def test_herding_selection_uses_the_embedding_rule():
    pool = _pool(per_class=6)
    synth = ExplicitPoints(num_classes=3, cpc=3, num_points=64, init='herding', embed_steps=4, embed_points=32,
                           embed_batch=4, embed_widths=[8, 16, 32])
    generator = torch.Generator().manual_seed(0)
    _, index = synth.select_from_pool(pool, generator)
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=torch.Generator().manual_seed(0)))
    net = coresets.train_embedding_net(pool, steps=4, num_points=32, batch_size=4, lr=1e-3, widths=[8, 16, 32], seed=seed)
    features = coresets.embed_pool(net, pool, num_points=32, batch_size=4, seed=seed)
    for label in range(3):
        local = pool.indices_of_class(label)
        expected = local[coresets._herding_naive(features[local], 3)]
        assert index[3 * label:3 * label + 3].tolist() == expected.tolist()


def _train_epochs_reference(pool, epochs, batch_size, seed, widths=(8, 16, 32), num_points=32):
    """The embedding loop as it was before it counted steps: E epochs of shuffled batches (the last one smaller)."""
    import torch.nn.functional as F
    from openpoints_dd.models.pointnet import DistillPointNet
    from openpoints_dd.utils.geometry import subsample_points
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DistillPointNet(num_classes=pool.num_classes, widths=tuple(widths))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(pool.labels), generator=generator)
        for begin in range(0, len(order), batch_size):
            pick = order[begin:begin + batch_size]
            loss = F.cross_entropy(net(subsample_points(pool.pos[pick], num_points, generator=generator)),
                                   pool.labels[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return net.eval()


@pytest.mark.parametrize('per_class, batch_size', [(5, 4), (4, 4)])   # 15 clouds: a smaller last batch; 12: none
def test_embedding_steps_equal_the_epochs_they_span(per_class, batch_size):
    """E·ceil(M / batch) steps give the very network E epochs gave: the same batches and generator draws (so
    the ModelNet40 configs' 462 steps select exactly what their 3 epochs at batch 64 selected)."""
    pool = _pool(per_class=per_class)
    epochs, per_epoch = 3, -(-len(pool.labels) // batch_size)
    net = coresets.train_embedding_net(pool, steps=epochs * per_epoch, num_points=32, batch_size=batch_size, lr=1e-3,
                                       widths=[8, 16, 32], seed=7)
    reference = _train_epochs_reference(pool, epochs, batch_size, seed=7)
    for (name, value), expected in zip(net.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(value, expected), name


def test_embedding_steps_train_a_small_pool_for_many_passes():
    """A 15-cloud pool at batch 64 gets all its steps (an epoch count would have given it one step per epoch)."""
    pool = _pool()
    untrained = coresets.train_embedding_net(pool, steps=0, num_points=32, batch_size=64, lr=1e-2,
                                             widths=[8, 16, 32], seed=0)
    trained = coresets.train_embedding_net(pool, steps=30, num_points=32, batch_size=64, lr=1e-2,
                                           widths=[8, 16, 32], seed=0)
    with torch.no_grad():
        def loss(net):
            return torch.nn.functional.cross_entropy(net(pool.pos[:, :32]), pool.labels).item()
        assert loss(trained) < 0.8 * loss(untrained)


def test_noise_init_selects_nothing_and_bad_keys_fail():
    assert ExplicitPoints(num_classes=2, cpc=1, init='noise').select_from_pool(_pool(), torch.Generator()) is None
    with pytest.raises(ValueError, match='init must be one of'):
        build_synthesizer({'NAME': 'ExplicitPoints', 'init': 'kmeans'}, num_classes=2, cpc=1)
    with pytest.raises(ValueError, match="kcenter_first must be 'mean' or 'random'"):
        build_synthesizer({'NAME': 'ExplicitPoints', 'init': 'kcenter', 'kcenter_first': 'far'}, num_classes=2, cpc=1)
    with pytest.raises(TypeError, match='ExplicitPoints'):
        build_synthesizer({'NAME': 'ExplicitPoints', 'embed_epoch': 3}, num_classes=2, cpc=1)
    with pytest.raises(TypeError, match="ExplicitPoints.*embed_epochs"):   # replaced by embed_steps
        build_synthesizer({'NAME': 'ExplicitPoints', 'embed_epochs': 3}, num_classes=2, cpc=1)
    with pytest.raises(ValueError, match='need embed_steps >= 0'):
        build_synthesizer({'NAME': 'ExplicitPoints', 'init': 'herding', 'embed_steps': -1}, num_classes=2, cpc=1)


def test_explicit_points_repr_shows_selection_settings():
    text = repr(ExplicitPoints(num_classes=2, cpc=1, init='kcenter', embed_steps=2))
    assert "init='kcenter'" in text and 'embed_steps=2' in text and "kcenter_first='mean'" in text


@pytest.mark.parametrize('init, rule', [('real', 'random'), ('herding', 'herding'), ('kcenter', 'kcenter'),
                                        ('facility', 'facility')])
def test_generator_starts_from_the_same_selection_as_explicit_points(init, rule):
    pool = _pool()
    embedding = dict(embed_steps=4, embed_points=32, embed_batch=4, embed_widths=[8, 16, 32])
    generator = PointGenerator(num_classes=3, cpc=2, hidden_dim=8, init=init, **embedding)
    clouds, index = generator.select_from_pool(pool, torch.Generator().manual_seed(0))
    explicit = ExplicitPoints(num_classes=3, cpc=2, num_points=64, init=rule, **embedding)
    same_clouds, same_index = explicit.select_from_pool(pool, torch.Generator().manual_seed(0))
    assert torch.equal(index, same_index) and torch.equal(clouds, same_clouds)
    assert pool.labels[index].tolist() == [0, 0, 1, 1, 2, 2]
    if init == 'real':   # the engine's draw before coreset starts existed: random clouds per class
        assert torch.equal(index, pool.random_per_class(2, torch.Generator().manual_seed(0))[1])


def test_generator_from_noise_selects_nothing_and_part_generator_refuses_coreset_starts():
    assert PointGenerator(num_classes=3, cpc=2, hidden_dim=8).select_from_pool(_pool(), torch.Generator()) is None
    with pytest.raises(ValueError, match='init must be one of'):
        PointGenerator(num_classes=3, cpc=2, init='kmeans')
    with pytest.raises(ValueError, match="kcenter_first must be 'mean' or 'random'"):
        PointGenerator(num_classes=3, cpc=2, init='kcenter', kcenter_first='far')
    with pytest.raises(ValueError, match="PartPointGenerator: init must be 'noise' or 'real'"):
        PartPointGenerator(num_classes=2, cpc=1, part_proportions=[[1.0], [1.0]], init='herding')
    assert 'embed_steps=2' in repr(PointGenerator(num_classes=3, cpc=2, hidden_dim=8, init='herding', embed_steps=2))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_facility_location_equals_the_greedy_objective(seed):
    features = torch.randn(12, 5, generator=torch.Generator().manual_seed(seed))
    for k in (1, 4, 12):
        assert coresets.facility_location(features, k, sigma=0.5).tolist() == coresets._facility_location_naive(
            features, k, sigma=0.5)


def test_facility_location_covers_the_modes_before_repeating_one():
    # two tight clusters of unequal size: the first pick is in the big one, the second covers the small one
    big, small = torch.tensor([[1.0, 0.0]]) + 0.01 * torch.randn(8, 2), torch.tensor([[0.0, 1.0]]) + 0.01 * torch.randn(3, 2)
    picks = coresets.facility_location(torch.cat([big, small]), 2, sigma=0.5).tolist()
    assert picks[0] < 8 and picks[1] >= 8
    with pytest.raises(ValueError, match='facility_sigma must be > 0'):
        coresets.CoresetSelection('facility', facility_sigma=0)


def test_the_embedding_cache_shares_one_network_between_rules_and_refuses_foreign_files(tmp_path, caplog):
    pool = _pool()
    embedding = dict(embed_steps=4, embed_points=32, embed_batch=4, embed_widths=(8, 16, 32),
                     embed_cache=str(tmp_path / 'cache'))
    trained = coresets.CoresetSelection('herding', **embedding).embedding_net(pool, seed=3)
    (cached,) = list((tmp_path / 'cache').iterdir())
    stamp = cached.stat().st_mtime_ns
    with caplog.at_level('INFO'):
        loaded = coresets.CoresetSelection('facility', **embedding).embedding_net(pool, seed=3)
    assert 'coreset embedding net: loaded' in caplog.text and cached.stat().st_mtime_ns == stamp
    for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    other = coresets.CoresetSelection('herding', **embedding).embedding_net(pool, seed=4)   # another seed: its own
    assert len(list((tmp_path / 'cache').iterdir())) == 2 and not torch.equal(
        next(iter(other.state_dict().values())), next(iter(trained.state_dict().values())))
    cached.write_bytes(cached.read_bytes()[:50])                                        # a corrupt cache file
    from openpoints_dd.data.artifact import ArtifactError
    with pytest.raises(ArtifactError, match='not a readable safetensors file'):
        coresets.CoresetSelection('herding', **embedding).embedding_net(pool, seed=3)


def test_the_embedding_cache_keeps_rotated_and_aligned_pools_apart(tmp_path, caplog):
    """A rotated pool has the aligned pool's name, classes and sizes: only its recorded rotation tells them apart."""
    from openpoints_dd.data.rotation import DatasetRotation
    aligned = _pool()
    rotation = DatasetRotation.from_cfg({'mode': 'so3', 'seed': 0})
    rotated = RealPool(torch.as_tensor(rotation.apply(aligned.pos.numpy(), 'train', range(len(aligned.pos)))),
                       aligned.labels, aligned.class_names, aligned.name, rotation=rotation.to_dict())
    embedding = dict(embed_steps=4, embed_points=32, embed_batch=4, embed_widths=(8, 16, 32),
                     embed_cache=str(tmp_path / 'cache'))
    coresets.CoresetSelection('herding', **embedding).embedding_net(aligned, seed=3)
    with caplog.at_level('INFO'):
        coresets.CoresetSelection('herding', **embedding).embedding_net(rotated, seed=3)
    assert 'loaded' not in caplog.text and len(list((tmp_path / 'cache').iterdir())) == 2
    with caplog.at_level('INFO'):
        coresets.CoresetSelection('herding', **embedding).embedding_net(rotated, seed=3)
    assert 'coreset embedding net: loaded' in caplog.text and len(list((tmp_path / 'cache').iterdir())) == 2


def test_the_embedding_cache_records_the_training_seconds_and_the_selection_says_which_network_it_used(tmp_path):
    """The file keeps how long the network took to train; the selection reports the network it last used, trained
    here (its measured seconds) or loaded (the recorded ones), so a run can charge a loaded network's training."""
    from openpoints_dd.data.artifact import read_tensor_file
    pool = _pool()
    embedding = dict(embed_steps=4, embed_points=32, embed_batch=4, embed_widths=(8, 16, 32),
                     embed_cache=str(tmp_path / 'cache'))
    training = coresets.CoresetSelection('herding', **embedding)
    assert training.network_training is None
    training.select(pool, 1, torch.Generator().manual_seed(0))
    (cached,) = list((tmp_path / 'cache').iterdir())
    seconds = read_tensor_file(cached, 'coreset embedding')[1]['training_seconds']
    assert seconds > 0 and training.network_training == coresets.NetworkTraining(seconds=seconds, loaded=False)
    loading = coresets.CoresetSelection('kcenter', **embedding)
    loading.select(pool, 1, torch.Generator().manual_seed(0))
    assert loading.network_training == coresets.NetworkTraining(seconds=seconds, loaded=True)
    assert loading == coresets.CoresetSelection('kcenter', **embedding)   # the record is not part of the settings
    uncached = coresets.CoresetSelection('herding', **{**embedding, 'embed_cache': None})
    uncached.select(pool, 1, torch.Generator().manual_seed(0))
    assert uncached.network_training.loaded is False and uncached.network_training.seconds > 0
    randomly = coresets.CoresetSelection('random')
    randomly.select(pool, 1, torch.Generator().manual_seed(0))
    assert randomly.network_training is None
