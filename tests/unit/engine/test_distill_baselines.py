"""The engine with the baseline parts: coreset selection at iterations 0, frozen-backbone objectives, and a
per-slot rotator with its own learning rates, baked into the export."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_embedded_cfg
from openpoints_dd.data import RealPool, SyntheticSet
from openpoints_dd.engine.distill import Distiller
from openpoints_dd.utils.geometry import normalize_to_unit_sphere

SMALL_EMBED = {'embed_steps': 8, 'embed_points': 32, 'embed_batch': 8, 'embed_widths': [8, 16, 32]}


def _distiller(cfg):
    pool = RealPool.from_dataset_cfg(cfg['dataset'], split='train', num_points=128)
    return Distiller(cfg, pool, cfg['run_dir'])


@pytest.mark.parametrize('init', ['random', 'herding', 'kcenter', 'facility'])
def test_coreset_at_iterations_zero_exports_the_selected_clouds(tmp_path, init):
    cfg = tiny_embedded_cfg(tmp_path, iterations=0, objective={'NAME': 'DistributionMatching'},
                            synthesizer={'NAME': 'ExplicitPoints', 'num_points': 128, 'init': init, **SMALL_EMBED})
    distiller = _distiller(cfg)
    result = distiller.run()
    assert result.iterations_done == 0 and result.loss_history == []
    index = torch.tensor(distiller.init_report['real_indices'])
    assert distiller.pool.labels[index].tolist() == list(range(10))
    synthetic = SyntheticSet(result.artifact_path)
    assert synthetic.kind == 'points' and synthetic.labels.tolist() == list(range(10))
    torch.testing.assert_close(synthetic.pos, normalize_to_unit_sphere(distiller.pool.pos[index]))


def test_random_init_keeps_the_previous_real_draw(tmp_path):
    """'random' (and its alias 'real') draws exactly what the engine drew before coresets existed."""
    cfg = tiny_embedded_cfg(tmp_path, iterations=0, synthesizer={'NAME': 'ExplicitPoints', 'num_points': 128, 'init': 'real'})
    distiller = _distiller(cfg)
    report = distiller.initialize()
    _, index = distiller.pool.random_per_class(1, torch.Generator().manual_seed(cfg['seed']))
    assert report['real_indices'] == index.tolist()


def test_a_fixed_canonicaliser_makes_the_picks_in_its_frame_and_the_set_keeps_the_stored_clouds(tmp_path):
    """Under PCA + sign the selection network is trained on, and Herding picks among, the canonicalised clouds (the
    frame the student trains in); the synthesizer starts from the picked clouds as the pool stores them."""
    synthesizer = {'NAME': 'ExplicitPoints', 'num_points': 128, 'init': 'herding', **SMALL_EMBED}
    cfg = tiny_embedded_cfg(tmp_path, iterations=0, objective={'NAME': 'DistributionMatching'}, synthesizer=synthesizer,
                            rotator={'NAME': 'PCASignRotator'})
    distiller = _distiller(cfg)
    report = distiller.initialize()
    view = distiller.selection_pool()
    assert report['selection_frame'] == 'PCASignRotator' and view is not distiller.pool
    torch.testing.assert_close(view.pos, distiller.rotator(normalize_to_unit_sphere(distiller.pool.pos)))
    _, expected = distiller.synthesizer.selection.select(view, 1, torch.Generator().manual_seed(cfg['seed']))
    assert report['real_indices'] == expected.tolist()
    torch.testing.assert_close(distiller.synthesizer.points.detach(), normalize_to_unit_sphere(distiller.pool.pos[expected]))
    aligned = _distiller(tiny_embedded_cfg(tmp_path / 'aligned', iterations=0, objective={'NAME': 'DistributionMatching'},
                                           synthesizer=synthesizer))
    assert aligned.selection_pool() is aligned.pool and 'selection_frame' not in aligned.initialize()


def test_a_selection_network_from_the_embedding_cache_is_charged_its_recorded_training_time(tmp_path, monkeypatch,
                                                                                            caplog):
    """Two runs share an embed_cache. The first trains the Herding selection network (100 s on a fake clock, inside
    its measured start) and records the seconds in the cache file; the second loads the network and is charged
    those 100 s, so both start their budget at the same cost. A file written before the seconds were recorded
    still loads, with a warning, and charges nothing."""
    from openpoints_dd.data.artifact import read_tensor_file, save_tensor_file
    from openpoints_dd.synthesizers import coresets
    clock = [0.0]
    monkeypatch.setattr('openpoints_dd.engine.distill.time.perf_counter', lambda: clock[0])
    train = coresets.train_embedding_net

    def hundred_seconds(*args, **kwargs):
        clock[0] += 100.0
        return train(*args, **kwargs)

    monkeypatch.setattr(coresets, 'train_embedding_net', hundred_seconds)
    synthesizer = {'NAME': 'ExplicitPoints', 'num_points': 128, 'init': 'herding', **SMALL_EMBED,
                   'embed_cache': str(tmp_path / 'cache')}

    def run(name):
        cfg = tiny_embedded_cfg(tmp_path / name, iterations=0, objective={'NAME': 'DistributionMatching'},
                                synthesizer=synthesizer)
        distiller = _distiller(cfg)
        caplog.clear()
        with caplog.at_level('INFO'):
            return distiller, distiller.run()

    first, trained = run('first')
    assert trained.seconds == 100.0
    assert first.init_report['selection_network'] == {'training_seconds': 100.0, 'from_cache': False,
                                                      'charged_seconds': 0.0}
    (cached,) = list((tmp_path / 'cache').iterdir())
    second, loaded = run('second')
    assert clock[0] == 100.0                                   # not trained again
    assert loaded.seconds >= 100.0 and loaded.seconds == trained.seconds
    assert second.init_report['selection_network'] == {'training_seconds': 100.0, 'from_cache': True,
                                                       'charged_seconds': 100.0}
    assert 'charged to the run' in caplog.text and second.init_report['real_indices'] == first.init_report['real_indices']
    assert SyntheticSet(loaded.artifact_path).metadata['seconds'] == 100.0

    tensors, metadata = read_tensor_file(cached, 'coreset embedding')
    del metadata['training_seconds']
    save_tensor_file(cached, tensors, metadata)                # a file of the cache as it was written before
    third, old = run('third')
    assert old.seconds == 0.0 and clock[0] == 100.0
    assert third.init_report['selection_network'] == {'training_seconds': None, 'from_cache': True,
                                                      'charged_seconds': 0.0}
    assert 'cannot be charged' in caplog.text and third.init_report['real_indices'] == first.init_report['real_indices']


@pytest.mark.parametrize('objective', [{'NAME': 'DistributionMatching'}, {'NAME': 'SADM', 'alpha_kernel': 'linear'}])
def test_frozen_backbone_objectives_skip_the_inner_loop(tmp_path, monkeypatch, objective):
    def no_inner_loop(*args, **kwargs):
        raise AssertionError('the inner loop ran for an objective that does not train the backbone')

    monkeypatch.setattr(Distiller, 'train_backbone', no_inner_loop)
    built = []
    original = Distiller.build_backbone

    def record_backbone(self):
        built.append(original(self))
        return built[-1]

    monkeypatch.setattr(Distiller, 'build_backbone', record_backbone)
    cfg = tiny_embedded_cfg(tmp_path, iterations=2, outer_loop=2, objective=objective,
                            synthesizer={'NAME': 'ExplicitPoints', 'num_points': 128, 'init': 'random'},
                            syn_optimizer={'NAME': 'sgd', 'lr': 0.1})
    distiller = _distiller(cfg)
    distiller.initialize()
    start = distiller.synthesizer.points.detach().clone()
    distiller.run(resume=False)
    assert len(built) == 2                                                   # a fresh backbone per iteration
    assert all(not p.requires_grad and p.grad is None for net in built for p in net.parameters())
    assert not torch.equal(distiller.synthesizer.points.detach(), start)


def test_euler_rotator_learns_with_its_own_rates_and_is_baked_into_the_export(tmp_path):
    cfg = tiny_embedded_cfg(tmp_path, iterations=3, outer_loop=1, objective={'NAME': 'SADM', 'alpha_kernel': 'linear',
                                                                             'alpha_weight': 1.0, 'beta_weight': 1.0},
                            synthesizer={'NAME': 'ExplicitPoints', 'num_points': 128, 'init': 'random'},
                            rotator={'NAME': 'EulerRotator', 'lr_scale': [1.0, 10.0, 1.0]},
                            syn_optimizer={'NAME': 'sgd', 'lr': 0.01, 'momentum': 0.5},
                            syn_scheduler={'step_fraction': 1.0, 'gamma': 1.0},
                            rotator_optimizer={'lr': 0.5, 'momentum': 0.5, 'weight_decay': 0.0, 'step_size': 2, 'gamma': 0.5})
    distiller = _distiller(cfg)
    assert distiller.rotator.num_slots == 10
    assert [g['lr'] for g in distiller.optimizer.param_groups] == [0.01, 0.5, 5.0, 0.5]
    result = distiller.run(resume=False)
    assert [g['lr'] for g in distiller.optimizer.param_groups] == [0.01, 0.25, 2.5, 0.25]   # one halving at step 2
    assert distiller.rotator.angle_y.detach().abs().min() > 0
    synthetic = SyntheticSet(result.artifact_path)
    with torch.no_grad():
        expected = distiller.synthetic_clouds(torch.arange(10), 128, None)
        base = normalize_to_unit_sphere(distiller.synthesizer.points)
    torch.testing.assert_close(synthetic.pos, expected)
    assert synthetic.metadata['rotator'] == {'NAME': 'IdentityRotator'}         # nothing left to apply downstream
    assert synthetic.metadata['baked_rotator']['NAME'] == 'EulerRotator'
    assert not torch.allclose(synthetic.pos, base, atol=1e-4)

    resumed = _distiller(tiny_embedded_cfg(tmp_path, **{**cfg['distill'], 'iterations': 4}))
    resumed.run()                                                      # the LambdaLR checkpoint loads
    assert resumed.iteration == 4


def test_bad_rotator_optimizer_is_a_clear_error(tmp_path):
    cfg = tiny_embedded_cfg(tmp_path, rotator={'NAME': 'EulerRotator'}, rotator_optimizer={'learning_rate': 0.5})
    with pytest.raises(ValueError, match=r"unknown key distill\.rotator_optimizer\.learning_rate\. Known keys of distill\.rotator_optimizer: lr,"):
        _distiller(cfg)
    cfg = tiny_embedded_cfg(tmp_path, rotator={'NAME': 'EulerRotator'}, rotator_optimizer={'momentum': 0.5})
    with pytest.raises(ValueError, match=r'distill\.rotator_optimizer\.lr is required'):
        _distiller(cfg)


def test_parameter_groups_scale_the_synthesizers_and_give_a_plain_rotator_its_own_rate():
    from openpoints_dd.engine.distill import _parameter_groups
    from openpoints_dd.registry import build_synthesizer
    synthesizer = build_synthesizer({'NAME': 'MorphedClouds', 'points': 8, 'init': 'noise', 'blend_lr_scale': 0.1},
                                    num_classes=2, cpc=1)
    rotator = torch.nn.Linear(2, 2)                 # parameters, no param_groups of its own
    groups, schedules = _parameter_groups(synthesizer, rotator, {'lr': 0.5, 'momentum': 0.5}, 0.01)
    assert [g.get('lr') for g in groups] == [None, pytest.approx(0.001), 0.5] and len(schedules) == 1
    assert groups[2]['momentum'] == 0.5 and [id(p) for p in groups[2]['params']] == [id(p) for p in rotator.parameters()]
    groups, schedules = _parameter_groups(synthesizer, rotator, None, 0.01)
    assert schedules == [] and len(groups) == 2
    assert {id(p) for p in rotator.parameters()} <= {id(p) for p in groups[0]['params']}


OBJECTIVES_TINY = {'GradientMatching': {}, 'DistributionMatching': {}, 'SADM': {'alpha_kernel': 'linear'},
                   'M3D': {'partitions': 2, 'points_per_partition': 16, 'neighbours': 8},
                   'TrajectoryMatching': {'num_experts': 1, 'expert_epochs': 2, 'max_start_epoch': 1, 'syn_steps': 1}}


@pytest.mark.parametrize('init', ['random', 'herding', 'kcenter', 'facility'])
@pytest.mark.parametrize('objective', sorted(OBJECTIVES_TINY))
def test_every_objective_accepts_every_coreset_start(tmp_path, objective, init):
    frozen = objective in ('DistributionMatching', 'SADM', 'M3D')
    cfg = tiny_embedded_cfg(tmp_path, iterations=1, outer_loop=1 if frozen else 2, inner_loop=0 if frozen else 1,
                            objective={'NAME': objective, **OBJECTIVES_TINY[objective]},
                            synthesizer={'NAME': 'ExplicitPoints', 'num_points': 128, 'init': init, **SMALL_EMBED},
                            syn_optimizer={'NAME': 'sgd', 'lr': 0.01, 'momentum': 0.5})
    if objective == 'TrajectoryMatching':
        cfg['distill']['objective']['buffer_dir'] = str(tmp_path / 'experts')
    distiller = _distiller(cfg)
    result = distiller.run()
    assert result.iterations_done == 1 and all(torch.isfinite(torch.tensor(result.loss_history)))
    index = torch.tensor(distiller.init_report['real_indices'])
    assert distiller.pool.labels[index].tolist() == list(range(10))
    assert SyntheticSet(result.artifact_path).kind == 'points'
