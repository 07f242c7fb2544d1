"""benchmarks/m3d_bandwidth.py and benchmarks/m3d_ce_weight.py on the embedded toy dataset: they measure what the
run's M3D computes (its matching term alone; the run's own queue settings) and refuse configs whose numbers M3D
never uses, before any data loads."""
from __future__ import annotations

import importlib.util
import re

import pytest

from conftest import tiny_embedded_cfg
from openpoints_dd.data import RealPool
from openpoints_dd.engine.distill import Distiller
from openpoints_dd.objectives import M3D
from openpoints_dd.objectives.model_queue import QUEUE_DEFAULTS, SemiTrainedNetworks
from openpoints_dd.utils.config import REPO_ROOT

M3D_QUEUE = {'NAME': 'M3D', 'partitions': 1, 'points_per_partition': 64, 'neighbours': 8, 'queue_size': 2,
             'queue_lifetime': 3, 'ce_weight': 0.5}


def _benchmark(name):
    spec = importlib.util.spec_from_file_location(f'{name}_benchmark', REPO_ROOT / 'benchmarks' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _start(tmp_path, **distill):
    """A config of M3D with a queue and the cross-entropy term, and a points artifact of its dataset (its start)."""
    cfg = tiny_embedded_cfg(tmp_path, iterations=0, outer_loop=1, inner_loop=0, batch_real=4,
                            export_num_points=64, objective=M3D_QUEUE,
                            synthesizer={'NAME': 'ExplicitPoints', 'num_points': 64}, **distill)
    pool = RealPool.from_dataset_cfg(cfg['dataset'], split='train', num_points=128)
    return cfg, Distiller(cfg, pool, cfg['run_dir']).run().artifact_path


@pytest.mark.parametrize('name', ['m3d_bandwidth', 'm3d_ce_weight'])
def test_the_benchmarks_import_and_print_their_usage(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        _benchmark(name).main(['--help'])
    assert exit_.value.code == 0 and '--artifact' in capsys.readouterr().out


@pytest.mark.parametrize('name, distill, message', [
    ('m3d_bandwidth', {'objective': {'NAME': 'M3D'}, 'num_points': 1024},
     'objective.partitions 4, objective.points_per_partition 255, distill.num_points 1024: this benchmark describes '
     'whole clouds'),
    ('m3d_bandwidth', {'objective': {'NAME': 'M3D', 'partitions': 1, 'points_per_partition': 255}, 'num_points': 1024},
     'objective.partitions 1, objective.points_per_partition 255, distill.num_points 1024'),
    ('m3d_bandwidth', {'objective': {'NAME': 'M3D', 'partitions': 1, 'points_per_partition': 1024},
                       'num_points': 1024, 'rotator': {'NAME': 'PCASignRotator'}},
     'distill.rotator is PCASignRotator; this benchmark describes the clouds as stored'),
    ('m3d_ce_weight', {'objective': {'NAME': 'M3D', 'queue_size': 2}, 'num_points': 1024,
                       'rotator': {'NAME': 'PCASignRotator'}},
     'distill.rotator is PCASignRotator; this benchmark takes the real and synthetic clouds as stored'),
], ids=['partitions', 'fps-subset', 'rotator', 'ce-rotator'])
def test_configs_whose_numbers_m3d_never_uses_are_refused_before_any_data_loads(name, distill, message, monkeypatch,
                                                                                 capsys):
    """The bandwidth benchmark describes whole clouds as stored: M3D with partitions > 1 (the default, 4) or an FPS
    subset of the real clouds describes others, and a rotator turns both sets before matching."""
    benchmark = _benchmark(name)
    monkeypatch.setattr(benchmark, 'load_distill_config', lambda path: {'distill': distill, 'dataset': {}})
    monkeypatch.setattr(benchmark.RealPool, 'from_dataset_cfg', lambda *a, **k: pytest.fail('data loaded first'))
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(['--cfg', 'the.yaml', '--artifact', 'start.safetensors'])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_bandwidth_benchmark_measures_m3d_without_the_queue_and_the_cross_entropy_term(tmp_path, monkeypatch,
                                                                                             capsys):
    """With a config's ce_weight and queue the printed loss and gradient were M3D's plus the cross-entropy through
    a fresh network's head; they are M3D's matching term alone."""
    cfg, artifact = _start(tmp_path)
    benchmark = _benchmark('m3d_bandwidth')
    monkeypatch.setattr(benchmark, 'load_distill_config', lambda path: cfg)
    monkeypatch.setattr(SemiTrainedNetworks, 'cross_entropy_term',
                        lambda *a: pytest.fail('the cross-entropy term is in the measured loss'))
    benchmark.main(['--cfg', 'the.yaml', '--artifact', str(artifact), '--classes', '0', '--shifts', '1', '4'])
    out = capsys.readouterr().out
    assert len(re.findall(r'widths / (1|4): loss \d+\.\d+, gradient norm', out)) == 2, out


def test_the_ce_weight_benchmark_trains_with_the_run_objective_queue_settings_and_builds_no_queue_of_its_own(
        tmp_path, monkeypatch, capsys):
    """queue_batch and queue_lr come from the Distiller's objective, not from defaults repeated in the benchmark (a
    default changed in M3D is followed), and no objective with an unused queue is built besides the run's."""
    cfg, artifact = _start(tmp_path)
    # a default of M3D's that the config leaves out, changed where it is declared
    monkeypatch.setitem(QUEUE_DEFAULTS, 'queue_batch', 3)
    monkeypatch.setitem(M3D.__init__.__kwdefaults__, 'queue_batch', 3)
    benchmark = _benchmark('m3d_ce_weight')
    monkeypatch.setattr(benchmark, 'load_distill_config', lambda path: cfg)
    queues = []
    original = benchmark.SemiTrainedQueue.__init__

    def recorded(self, **settings):
        queues.append(settings)
        original(self, **settings)
    monkeypatch.setattr(benchmark.SemiTrainedQueue, '__init__', recorded)
    benchmark.main(['--cfg', 'the.yaml', '--artifact', str(artifact), '--steps', '0', '2', '--classes', '0', '1'])
    assert queues == [{'size': 2, 'lifetime': 3, 'batch': 3, 'lr': 1e-3},             # the run's own objective's
                      {'size': 1, 'lifetime': 1, 'batch': 3, 'lr': 1e-3},             # the benchmark's, per steps
                      {'size': 1, 'lifetime': 2, 'batch': 3, 'lr': 1e-3}]
    out = capsys.readouterr().out
    assert re.search(r'2 steps \(last training loss \d+\.\d+\): M3D / cross-entropy gradient norms', out), out
