import math

import pytest
import torch

from conftest import run_until_crash, tiny_embedded_cfg
from openpoints_dd.data import RealPool, SyntheticSet
from openpoints_dd.engine import distill as distill_module
from openpoints_dd.engine.distill import CHECKPOINT_NAME, Distiller
from openpoints_dd.utils.geometry import normalize_to_unit_sphere


def _pool(cfg):
    return RealPool.from_dataset_cfg(cfg['dataset'], split='train', num_points=128)


def _run(cfg, resume=True):
    distiller = Distiller(cfg, _pool(cfg), cfg['run_dir'])
    return distiller, distiller.run(resume=resume)


@pytest.mark.parametrize('crash_at', [1, 2, 3])   # StepLR steps after iteration 2: before, at and after it
def test_interrupted_run_resumes_bit_identical(tmp_path, crash_at):
    full_cfg = tiny_embedded_cfg(tmp_path / 'full', iterations=4)
    _, full = _run(full_cfg)

    part_cfg = tiny_embedded_cfg(tmp_path / 'part', iterations=4)
    interrupted = Distiller(part_cfg, _pool(part_cfg), part_cfg['run_dir'])
    run_until_crash(interrupted, crash_at=crash_at)
    assert (tmp_path / 'part' / 'run' / CHECKPOINT_NAME).is_file()
    resumed, result = _run(part_cfg)
    assert result.iterations_done == 4
    full_set, resumed_set = SyntheticSet(full.artifact_path), SyntheticSet(result.artifact_path)
    for (name, a), (_, b) in zip(full_set.synthesizer.state_dict().items(), resumed_set.synthesizer.state_dict().items()):
        assert torch.equal(a, b), name
    assert full.loss_history == result.loss_history


@pytest.mark.parametrize('objective', [{'NAME': 'DistributionMatching', 'ce_weight': 0.1},
                                       {'NAME': 'M3D', 'partitions': 1, 'points_per_partition': 64,
                                        'ce_weight': 0.1}])
def test_semi_trained_networks_resume_bit_identical(tmp_path, objective):
    """The queue of semi-trained networks (DM's, M3D's) is part of the checkpoint: a resume continues it exactly."""
    settings = dict(iterations=5, outer_loop=1, inner_loop=0,
                    objective={**objective, 'queue_size': 2, 'queue_lifetime': 3, 'queue_batch': 4},
                    synthesizer={'NAME': 'ExplicitPoints', 'num_points': 128},
                    syn_optimizer={'NAME': 'adam', 'lr': 0.01})
    _, full = _run(tiny_embedded_cfg(tmp_path / 'full', **settings))
    part_cfg = tiny_embedded_cfg(tmp_path / 'part', **settings)
    run_until_crash(Distiller(part_cfg, _pool(part_cfg), part_cfg['run_dir']), crash_at=3)
    resumed, result = _run(part_cfg)
    assert result.iterations_done == 5 and full.loss_history == result.loss_history
    assert torch.equal(SyntheticSet(full.artifact_path).pos, SyntheticSet(result.artifact_path).pos)
    assert resumed.objective._queue.steps == [1, 2]   # slot 0 (lifetime 2) was replaced at iteration 4, after the resume


def test_chunks_of_classes_match_one_class_at_a_time(tmp_path):
    """The engine's chunking (all classes in one grouped pass, or one class per chunk) does not change the step."""
    losses, grads = [], []
    for chunk_points in (1, 1 << 20):
        cfg = tiny_embedded_cfg(tmp_path / str(chunk_points), iterations=1, outer_loop=1, chunk_points=chunk_points)
        distiller = Distiller(cfg, _pool(cfg), cfg['run_dir'])
        backbone = distiller.build_backbone()
        assert distiller.class_chunk(backbone, 4, 64) == (1 if chunk_points == 1 else distiller.num_classes)
        losses.append(distiller.accumulate_matching_gradients(backbone, 0, 0, 64))
        grads.append(torch.cat([p.grad.flatten() for p in distiller.synthesizer.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    # fp32: a product's rounding depends on its batch, which can flip a near-tie of the max-point search
    assert (grads[0] - grads[1]).norm() < 1e-3 * grads[0].norm()


def test_matching_backward_reaches_the_synthesizer_only(tmp_path, monkeypatch):
    """The restricted backward gives the synthesizer the gradient of a full backward, the backbone none (on the
    per-class route of a backbone whose batches share statistics, where the graph does reach its weights)."""
    cfg = tiny_embedded_cfg(tmp_path, iterations=1)
    distiller = Distiller(cfg, _pool(cfg), cfg['run_dir'])
    backbone = distiller.build_backbone()
    backbone.per_sample_separable = False
    distiller.accumulate_matching_gradients(backbone, 0, 0, 64)
    restricted = [p.grad.clone() for p in distiller.synthesizer.parameters()]
    assert all(p.grad is None for p in backbone.parameters())

    distiller.synthesizer.zero_grad(set_to_none=True)
    monkeypatch.setattr(distiller, 'matched_parameters', None)   # a plain backward into every leaf
    distiller.accumulate_matching_gradients(backbone, 0, 0, 64)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())
    for a, p in zip(restricted, distiller.synthesizer.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-8)


def test_budget_stops_cleanly_and_exports(tmp_path):
    cfg = tiny_embedded_cfg(tmp_path, iterations=1000, budget_minutes=0.02)
    _, result = _run(cfg)
    assert result.stopped_by_budget and 0 < result.iterations_done < 1000
    assert SyntheticSet(result.artifact_path).metadata['iterations_done'] == result.iterations_done


def _seven_second_iterations(monkeypatch) -> list[float]:
    """Iterations of 7 s on a fake clock that do no work; returns the list each appends its starting rate to."""
    clock, rates = [0.0], []
    monkeypatch.setattr('openpoints_dd.engine.distill.time.perf_counter', lambda: clock[0])

    def seven_second_iteration(self, iteration, outer, inner):
        rates.append(self.optimizer.param_groups[0]['lr'])
        clock[0] += 7.0
        return 1.0

    monkeypatch.setattr(Distiller, 'run_iteration', seven_second_iteration)
    return rates


def test_budget_is_a_cap_an_iteration_starts_only_if_it_fits(tmp_path, monkeypatch):
    """Iterations of 7 s on a fake clock against a 30 s budget: 4 iterations (28 s), not a 5th ending at 35 s."""
    _seven_second_iterations(monkeypatch)
    cfg = tiny_embedded_cfg(tmp_path, iterations=1000, budget_minutes=0.5)
    _, result = _run(cfg)
    assert result.stopped_by_budget and result.iterations_done == 4 and result.seconds == 28.0


@pytest.mark.parametrize('by, rates', [('time', [1e-3, 1e-3, 1e-3, 1e-4]), ('iterations', [1e-3] * 4)])
def test_a_schedule_by_time_falls_at_its_share_of_the_budget(tmp_path, monkeypatch, by, rates):
    """7 s iterations against a 30 s budget and 1000 iterations: by time, the rate falls once half the budget is
    spent (after the 3rd iteration, at 21 s); by iterations, at iteration 500, which the budget never reaches."""
    seen = _seven_second_iterations(monkeypatch)
    cfg = tiny_embedded_cfg(tmp_path, iterations=1000, budget_minutes=0.5,
                            syn_scheduler={'step_fraction': 0.5, 'gamma': 0.1, 'by': by})
    _, result = _run(cfg)
    assert result.iterations_done == 4 and seen == pytest.approx(rates)


def test_a_schedule_by_time_resumes_on_the_run_clock(tmp_path, monkeypatch):
    """Interrupted as iteration 3 starts (21 s of a 45 s budget spent), the resumed run's rate falls after its first
    iteration (28 s, past half the budget) and it stops at 42 s: the checkpoint's clock, not the new process's,
    says how much of the budget is spent."""
    seen = _seven_second_iterations(monkeypatch)
    cfg = tiny_embedded_cfg(tmp_path, iterations=1000, budget_minutes=0.75,
                            syn_scheduler={'step_fraction': 0.5, 'gamma': 0.1, 'by': 'time'})
    run_until_crash(Distiller(cfg, _pool(cfg), cfg['run_dir']), crash_at=3)
    _, result = _run(cfg)
    assert result.iterations_done == 6 and seen == pytest.approx([1e-3] * 4 + [1e-4] * 2)


def test_nan_loss_names_step_and_class(tmp_path):
    cfg = tiny_embedded_cfg(tmp_path, iterations=1)
    distiller = Distiller(cfg, _pool(cfg), cfg['run_dir'])
    with torch.no_grad():
        distiller.synthesizer.output.weight.fill_(float('nan'))
    with pytest.raises(FloatingPointError, match=r'GradientMatching returned nan at iteration 0, outer step 0 \(class 0: '):
        distiller.run()


def test_explicit_points_from_real_export_points_artifact(tmp_path):
    cfg = tiny_embedded_cfg(tmp_path, iterations=2, synthesizer={'NAME': 'ExplicitPoints', 'num_points': 128, 'init': 'real'},
                            syn_optimizer={'NAME': 'sgd', 'lr': 0.1, 'momentum': 0.5})
    _, result = _run(cfg)
    synthetic = SyntheticSet(result.artifact_path)
    assert synthetic.kind == 'points' and synthetic.pos.shape == (10, 128, 3)
    assert synthetic.labels.tolist() == list(range(10))


_POINTS = dict(synthesizer={'NAME': 'ExplicitPoints', 'num_points': 128, 'init': 'real'},
               syn_optimizer={'NAME': 'sgd', 'lr': 0.1, 'momentum': 0.5})


def test_a_tail_average_exports_the_mean_of_the_tail_iterates_and_the_last_beside_it(tmp_path):
    """Of 4 iterations, the last half's iterates (after iterations 3 and 4) are averaged; the run's trajectory is
    the run without the mean, whose artifact is the one beside it; the live set keeps its last iterate."""
    _, plain = _run(tiny_embedded_cfg(tmp_path / 'plain', **_POINTS))
    cfg = tiny_embedded_cfg(tmp_path / 'mean', **_POINTS, tail_average={'start_fraction': 0.5})
    distiller = Distiller(cfg, _pool(cfg), cfg['run_dir'])
    iterates, original = [], distiller.run_iteration

    def recording(iteration, outer, inner):
        loss = original(iteration, outer, inner)
        iterates.append(distiller.synthesizer.points.detach().clone())
        return loss

    distiller.run_iteration = recording
    result = distiller.run()
    mean = (iterates[2] + iterates[3]) / 2
    assert distiller.tail_average.iterates == 2
    assert not torch.equal(iterates[2], iterates[3])   # the mean is not either iterate
    assert torch.equal(distiller.synthesizer.points, iterates[3])
    exported = SyntheticSet(result.artifact_path)
    torch.testing.assert_close(exported.pos, normalize_to_unit_sphere(mean), rtol=0, atol=1e-6)
    assert exported.metadata['tail_average'] == {'start_fraction': 0.5, 'by': 'iterations', 'iterates': 2}
    last = SyntheticSet(result.artifact_path.with_name('artifact-last.safetensors'))
    assert torch.equal(last.pos, SyntheticSet(plain.artifact_path).pos)
    assert 'tail_average' not in last.metadata


def test_a_tail_average_resumes_bit_identical(tmp_path):
    """Interrupted inside the tail (iteration 3 of 5, the mean from 0.4 on holding one iterate), the resumed run
    exports the same mean and the same last iterate."""
    settings = dict(**_POINTS, iterations=5, tail_average={'start_fraction': 0.4})
    _, full = _run(tiny_embedded_cfg(tmp_path / 'full', **settings))
    part_cfg = tiny_embedded_cfg(tmp_path / 'part', **settings)
    run_until_crash(Distiller(part_cfg, _pool(part_cfg), part_cfg['run_dir']), crash_at=3)
    resumed, result = _run(part_cfg)
    assert resumed.tail_average.iterates == 3
    for name in ('artifact.safetensors', 'artifact-last.safetensors'):
        assert torch.equal(SyntheticSet(full.artifact_path.with_name(name)).pos,
                           SyntheticSet(result.artifact_path.with_name(name)).pos), name


def test_a_tail_average_by_time_starts_at_its_share_of_the_budget(tmp_path, monkeypatch):
    """7 s iterations against a 30 s budget and 1000 iterations: past half the budget after the 3rd iteration
    (21 s), so iterations 3 and 4 are averaged; by iterations the tail (iteration 500 on) is never reached, and
    the run exports its last iterate alone."""
    _seven_second_iterations(monkeypatch)
    for by, iterates in (('time', 2), ('iterations', 0)):
        cfg = tiny_embedded_cfg(tmp_path / by, **_POINTS, iterations=1000, budget_minutes=0.5,
                                tail_average={'start_fraction': 0.5, 'by': by})
        distiller, result = _run(cfg)
        assert result.iterations_done == 4 and distiller.tail_average.iterates == iterates
        assert result.artifact_path.with_name('artifact-last.safetensors').is_file() == bool(iterates)


def _seven_second_real_iterations(monkeypatch) -> None:
    """Real iterations that take 7 s each on a fake clock (the set moves, unlike `_seven_second_iterations`')."""
    clock = [0.0]
    monkeypatch.setattr('openpoints_dd.engine.distill.time.perf_counter', lambda: clock[0])
    original = Distiller.run_iteration

    def seven_seconds(self, iteration, outer, inner):
        loss = original(self, iteration, outer, inner)
        clock[0] += 7.0
        return loss

    monkeypatch.setattr(Distiller, 'run_iteration', seven_seconds)


def test_a_run_its_budget_stopped_resumes_to_the_same_artifact(tmp_path, monkeypatch):
    """7 s iterations against a 30 s budget stop after 4 (28 s: a 5th would end at 35 s), the tail mean (by time,
    past half the budget) holding iterations 3 and 4. Running the same run_dir again restores the iterations' time
    record and the stop with the checkpoint: no 5th iteration (a fresh record expected it to cost nothing), the
    same tail mean, the same artifact and last iterate, tensor for tensor."""
    from safetensors.torch import load_file
    _seven_second_real_iterations(monkeypatch)
    cfg = tiny_embedded_cfg(tmp_path, **_POINTS, iterations=1000, budget_minutes=0.5,
                            tail_average={'start_fraction': 0.5, 'by': 'time'})
    first, stopped = _run(cfg)
    assert stopped.stopped_by_budget and stopped.iterations_done == 4 and first.tail_average.iterates == 2
    names = ('artifact.safetensors', 'artifact-last.safetensors')
    before = {name: load_file(stopped.artifact_path.with_name(name)) for name in names}
    again, resumed = _run(cfg)
    assert resumed.stopped_by_budget and resumed.iterations_done == 4 and resumed.seconds == stopped.seconds == 28.0
    assert again.tail_average.iterates == 2 and resumed.loss_history == stopped.loss_history
    for name in names:
        after = load_file(resumed.artifact_path.with_name(name))
        assert after.keys() == before[name].keys()
        for key in after:
            assert torch.equal(after[key], before[name][key]), (name, key)
    assert SyntheticSet(resumed.artifact_path).metadata['iterations_done'] == 4


def test_a_checkpoint_without_the_time_record_still_resumes(tmp_path, monkeypatch):
    """A checkpoint written before the iterations' time record and the budget stop were kept resumes with an empty
    record and no stop (as it did before): interrupted at 21 s of 45, it ends at 42 s."""
    _seven_second_iterations(monkeypatch)
    cfg = tiny_embedded_cfg(tmp_path, iterations=1000, budget_minutes=0.75)
    run_until_crash(Distiller(cfg, _pool(cfg), cfg['run_dir']), crash_at=3)
    path = tmp_path / 'run' / CHECKPOINT_NAME
    state = torch.load(path, weights_only=True)
    assert state['iteration_seconds'] == [7.0] * 3 and state['stopped_by_budget'] is False
    del state['iteration_seconds'], state['stopped_by_budget']
    torch.save(state, path)
    _, result = _run(cfg)
    assert result.stopped_by_budget and result.iterations_done == 6 and result.seconds == 42.0


def test_every_process_reads_rank_0s_clock_for_its_schedule(tmp_path, monkeypatch):
    """The scheduler and the tail read the run's clock as rank 0 keeps it (`distributed.value_of_main`), not this
    process's: with 7 s iterations here and rank 0 one second slower per iteration (8 s each), a schedule by time
    falls once rank 0 has spent half the 30 s budget (after the 2nd iteration, 16 s), not at 21 s here."""
    from openpoints_dd.utils import distributed
    seen = _seven_second_iterations(monkeypatch)
    monkeypatch.setattr(distributed, 'value_of_main', lambda value, device='cpu': value + 1.0, raising=False)
    cfg = tiny_embedded_cfg(tmp_path, iterations=1000, budget_minutes=0.5,
                            syn_scheduler={'step_fraction': 0.5, 'gamma': 0.1, 'by': 'time'})
    _, result = _run(cfg)
    # rank 0's 24 s after 3 iterations + the 7 s one is expected to take pass the budget
    assert result.iterations_done == 3 and result.seconds == 24.0 and seen == pytest.approx([1e-3, 1e-3, 1e-4])


def test_a_snapshot_is_the_live_iterate_and_the_final_export_alone_is_the_tail_mean(tmp_path, caplog):
    """Mid-run snapshots (an evaluation's `snapshot`) before and inside the tail hold the set as it stands, with no
    tail metadata, no last-iterate file beside them and no 'ended before its tail' warning; the run's own export
    at the end is still the mean of the tail with its last iterate beside it."""
    cfg = tiny_embedded_cfg(tmp_path, **_POINTS, tail_average={'start_fraction': 0.5}, eval_every=1)
    live = {}

    def snapshot(distiller, iteration):
        live[iteration] = distiller.synthesizer.points.detach().clone()
        return {'snapshot': str(distiller.snapshot(tmp_path / 'snapshots' / f'step{iteration:05d}.safetensors'))}

    distiller = Distiller(cfg, _pool(cfg), cfg['run_dir'], evaluate_fn=snapshot)
    with caplog.at_level('INFO'):
        result = distiller.run()
    assert sorted(live) == [1, 2, 3, 4] and 'ended before its tail' not in caplog.text
    assert sorted(p.name for p in (tmp_path / 'snapshots').iterdir()) == [f'step{i:05d}.safetensors' for i in (1, 2, 3, 4)]
    for iteration, points in live.items():
        snapshot_set = SyntheticSet(tmp_path / 'snapshots' / f'step{iteration:05d}.safetensors')
        assert torch.equal(snapshot_set.pos, normalize_to_unit_sphere(points)) and 'tail_average' not in snapshot_set.metadata
        assert snapshot_set.metadata['iterations_done'] == iteration
    exported = SyntheticSet(result.artifact_path)
    torch.testing.assert_close(exported.pos, normalize_to_unit_sphere((live[3] + live[4]) / 2), rtol=0, atol=1e-6)
    assert exported.metadata['tail_average']['iterates'] == 2
    assert result.artifact_path.with_name('artifact-last.safetensors').is_file()


def test_a_max_radius_keeps_every_matched_point_inside_it(tmp_path):
    """At a rate that throws points far out, the projection after every step holds them on the sphere."""
    def run(max_radius):
        synthesizer = {'NAME': 'ExplicitPoints', 'num_points': 128, 'init': 'real', 'max_radius': max_radius}
        cfg = tiny_embedded_cfg(tmp_path / str(max_radius), iterations=3, synthesizer=synthesizer,
                                syn_optimizer={'NAME': 'sgd', 'lr': 1.0e4, 'momentum': 0.5})
        distiller, _ = _run(cfg)
        return distiller.synthesizer.points.detach().norm(dim=-1).max().item()

    assert run(None) > 1.5
    assert run(1.0) <= 1.0 + 1e-6


def test_learned_rotator_weights_travel_with_the_artifact(tmp_path):
    cfg = tiny_embedded_cfg(tmp_path, iterations=2, rotator={'NAME': 'LearnedSignRotator'})
    distiller = Distiller(cfg, _pool(cfg), tmp_path / 'run')
    distiller.run()
    trained = distiller.rotator.state_dict()
    synthetic = SyntheticSet(tmp_path / 'run' / 'artifact.safetensors')
    rebuilt = synthetic.build_rotator()
    assert type(rebuilt).__name__ == 'LearnedSignRotator' and not rebuilt.training
    assert trained.keys() == rebuilt.state_dict().keys()
    for name, value in trained.items():
        assert torch.equal(rebuilt.state_dict()[name], value), name
    assert any(not torch.equal(v, type(distiller.rotator)().state_dict()[k]) for k, v in trained.items())   # it learned


def test_progress_total_follows_the_budget():
    from openpoints_dd.engine.distill import expected_iterations
    # 2-minute budget, 10 s per iteration, 3 done after 30 s: 9 more fit, not all 400
    assert expected_iterations(3, 400, 30.0, 10.0, 120.0) == 12
    assert expected_iterations(3, 5, 30.0, 10.0, 120.0) == 5               # the iterations end first
    assert expected_iterations(3, 400, 30.0, 10.0, math.inf) == 400        # no budget
    assert expected_iterations(20, 400, 130.0, 10.0, 120.0) == 20          # past the budget: what is done


def test_progress_bar_total_is_set_from_the_budget(tmp_path, monkeypatch):
    """7 s iterations on a fake clock, 30 s budget, 1000 iterations: the bar's total is the 4 that fit."""
    totals = []
    _seven_second_iterations(monkeypatch)

    class RecordingBar(distill_module.tqdm):
        def update(self, n=1):
            totals.append(self.total)
            return super().update(n)
    monkeypatch.setattr(distill_module, 'tqdm', RecordingBar)
    cfg = tiny_embedded_cfg(tmp_path, iterations=1000, budget_minutes=0.5)
    _, result = _run(cfg)
    assert result.iterations_done == 4 and totals == [4, 4, 4, 4]


@pytest.mark.parametrize('synthesizer, objective', [
    ({'NAME': 'MorphedClouds', 'anchors': 2, 'morphs': 2, 'points': 16, 'init': 'random'},
     {'NAME': 'M3D', 'partitions': 2, 'points_per_partition': 16, 'neighbours': 8}),
    ({'NAME': 'MorphedClouds', 'anchors': 2, 'morphs': 2, 'points': 16, 'init': 'random'}, {'NAME': 'GradientMatching'}),
    ({'NAME': 'PointGenerator', 'hidden_dim': 16, 'w0_initial': 30},
     {'NAME': 'M3D', 'partitions': 2, 'points_per_partition': 16, 'neighbours': 8}),
], ids=['morphs+m3d', 'morphs+gm', 'generator+m3d'])
def test_packed_slots_and_m3d_compose_with_the_other_parts(tmp_path, synthesizer, objective):
    cfg = tiny_embedded_cfg(tmp_path, iterations=2, synthesizer=synthesizer, objective=objective,
                            syn_optimizer={'NAME': 'sgd', 'lr': 0.01, 'momentum': 0.5})
    distiller, result = _run(cfg)
    synthetic = SyntheticSet(result.artifact_path)
    accounting = synthetic.metadata['accounting']
    assert accounting == distiller.synthesizer.accounting(128)       # both accountings round-trip
    pos, labels = synthetic.sample(generator=torch.Generator().manual_seed(0))
    assert len(pos) == len(labels) == distiller.num_classes * accounting['training_clouds_per_class']
    assert pos.shape[1] == accounting['points_per_training_cloud'] and torch.isfinite(pos).all()
    if synthesizer['NAME'] == 'MorphedClouds':
        assert accounting['training_clouds_per_class'] == 4 and accounting['points_per_training_cloud'] == 16
        assert accounting['floats_per_class'] == 2 * 16 * 3 + 2 * 2


def test_a_points_artifact_records_the_points_it_holds(tmp_path):
    cfg = tiny_embedded_cfg(tmp_path, iterations=1, synthesizer={'NAME': 'ExplicitPoints', 'num_points': 96},
                            export_num_points=128)
    _, result = _run(cfg)
    synthetic = SyntheticSet(result.artifact_path)
    assert synthetic.pos.shape[1] == synthetic.num_points == synthetic.metadata['accounting']['points_per_training_cloud'] == 96


@pytest.mark.parametrize('objective, missing', [
    ({'NAME': 'DistributionMatching', 'queue_size': 1}, 'embed'),
    ({'NAME': 'DistributionMatching', 'queue_size': 1, 'ce_weight': 0.5}, 'embed, classify'),
    ({'NAME': 'M3D', 'partitions': 1, 'points_per_partition': 64}, 'point_features'),
    ({'NAME': 'M3D', 'partitions': 1, 'points_per_partition': 64, 'queue_size': 1, 'ce_weight': 0.5},
     'point_features, classify'),
    ({'NAME': 'SADM'}, 'point_features')])
def test_a_backbone_without_the_methods_an_objective_calls_is_refused_before_any_work(tmp_path, monkeypatch,
                                                                                       objective, missing):
    """The objective declares the backbone methods it calls (`backbone_methods`); the engine checks them once, at
    construction, before the objective's set-up (experts, queue) and before any selection network or matching."""
    from openpoints_dd.registry import OBJECTIVES
    cls = OBJECTIVES.module_dict[objective['NAME']]
    monkeypatch.setattr(cls, 'prepare', lambda *args, **kwargs: pytest.fail('set-up ran before the check'))
    cfg = tiny_embedded_cfg(tmp_path, backbone={'NAME': 'PCTClassifier'}, objective=objective,
                            synthesizer={'NAME': 'ExplicitPoints', 'num_points': 64, 'init': 'herding'})
    with pytest.raises(TypeError, match=f"{objective['NAME']} calls the backbone's {missing}; "
                                        f"distill.backbone PCTClassifier has no {missing}"):
        Distiller(cfg, _pool(cfg), cfg['run_dir'])


def test_a_backbone_whose_method_lacks_a_keyword_the_objective_passes_is_refused_before_any_work(tmp_path,
                                                                                               monkeypatch):
    """M3D asks `point_features` for the channel-major map (`channels_first`): a backbone whose point_features
    takes only the points is refused at construction, by name, not by a TypeError inside the first step."""
    from openpoints.models.build import MODELS
    from openpoints_dd.models.pointnet import DistillPointNet

    class PointsLastPointNet(DistillPointNet):
        def point_features(self, points):
            return super().point_features(points)

    monkeypatch.setitem(MODELS.module_dict, 'PointsLastPointNet', PointsLastPointNet)
    synthesizer = {'NAME': 'ExplicitPoints', 'num_points': 64, 'init': 'herding'}
    cfg = tiny_embedded_cfg(tmp_path, backbone={'NAME': 'PointsLastPointNet'}, synthesizer=synthesizer,
                            objective={'NAME': 'M3D', 'partitions': 1, 'points_per_partition': 64})
    with pytest.raises(TypeError, match="M3D calls the backbone's point_features with channels_first; "
                                        "distill.backbone PointsLastPointNet's point_features does not take it"):
        Distiller(cfg, _pool(cfg), cfg['run_dir'])
    cfg = tiny_embedded_cfg(tmp_path / 'sadm', backbone={'NAME': 'PointsLastPointNet'}, synthesizer=synthesizer,
                            objective={'NAME': 'SADM'}, iterations=0)
    Distiller(cfg, _pool(cfg), cfg['run_dir'])   # SADM passes no keyword: accepted


def test_m3d_on_every_layer_refuses_a_backbone_whose_point_features_gives_only_the_last_map(tmp_path, monkeypatch):
    """`layers: every` passes `every_layer` to point_features: a backbone without it is refused at construction."""
    from openpoints.models.build import MODELS
    from openpoints_dd.models.pointnet import DistillPointNet

    class LastMapPointNet(DistillPointNet):
        def point_features(self, points, channels_first=False):
            return super().point_features(points, channels_first)

    monkeypatch.setitem(MODELS.module_dict, 'LastMapPointNet', LastMapPointNet)
    synthesizer = {'NAME': 'ExplicitPoints', 'num_points': 64, 'init': 'herding'}
    objective = {'NAME': 'M3D', 'partitions': 1, 'points_per_partition': 64, 'layers': 'every'}
    cfg = tiny_embedded_cfg(tmp_path, backbone={'NAME': 'LastMapPointNet'}, synthesizer=synthesizer,
                            objective=objective)
    with pytest.raises(TypeError, match="M3D calls the backbone's point_features with every_layer; "
                                        "distill.backbone LastMapPointNet's point_features does not take it"):
        Distiller(cfg, _pool(cfg), cfg['run_dir'])
    cfg = tiny_embedded_cfg(tmp_path / 'last', backbone={'NAME': 'LastMapPointNet'}, synthesizer=synthesizer,
                            objective={**objective, 'layers': 'last'}, iterations=0)
    Distiller(cfg, _pool(cfg), cfg['run_dir'])   # the last map alone: accepted


def test_an_objective_declaring_no_backbone_methods_runs_on_a_backbone_with_only_a_forward(tmp_path):
    """Gradient matching calls the forward only: PCTClassifier (no embed, no point_features) is accepted."""
    from openpoints_dd.registry import OBJECTIVES
    assert OBJECTIVES.module_dict['GradientMatching']().backbone_methods() == ()
    cfg = tiny_embedded_cfg(tmp_path, backbone={'NAME': 'PCTClassifier'}, iterations=0)
    Distiller(cfg, _pool(cfg), cfg['run_dir'])   # no TypeError


@pytest.mark.parametrize('num_points, points, message', [
    (64, 32, 'need real clouds of at least 128 points; distill.num_points is 64'),
    (128, 16, r'makes training clouds of 16 points, fewer than objective.points_per_partition \(32\)')])
def test_m3d_sizes_it_cannot_match_are_refused_at_construction(tmp_path, num_points, points, message):
    """Before any work: the Distiller is built (no selection network trained, no matching step) and refuses."""
    cfg = tiny_embedded_cfg(tmp_path, num_points=num_points,
                            synthesizer={'NAME': 'MorphedClouds', 'anchors': 2, 'morphs': 2, 'points': points,
                                         'init': 'herding'},
                            objective={'NAME': 'M3D', 'partitions': 4, 'points_per_partition': 32, 'neighbours': 8})
    with pytest.raises(ValueError, match=message):
        Distiller(cfg, _pool(cfg), cfg['run_dir'])


def test_matching_more_points_than_explicit_clouds_store_is_refused_at_construction(tmp_path):
    """ExplicitPoints refused it only when matching first asked for the clouds, after a coreset start's selection
    network had trained: the Distiller refuses it when built, naming both keys."""
    cfg = tiny_embedded_cfg(tmp_path, num_points=64,
                            synthesizer={'NAME': 'ExplicitPoints', 'num_points': 32, 'init': 'herding'})
    with pytest.raises(ValueError, match=r'distill.num_points is 64, but distill.synthesizer \(ExplicitPoints\) '
                                         r'stores 32 points per cloud'):
        Distiller(cfg, _pool(cfg), cfg['run_dir'])
    cfg = tiny_embedded_cfg(tmp_path, num_points=32,
                            synthesizer={'NAME': 'ExplicitPoints', 'num_points': 32, 'init': 'herding'})
    Distiller(cfg, _pool(cfg), cfg['run_dir'])   # as many points as stored: accepted
