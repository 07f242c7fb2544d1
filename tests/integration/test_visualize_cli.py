"""tools/visualize.py in-process: PNG grids of clouds and run curves, read back with matplotlib."""
from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from _artifacts import data_cfg_text, generator_artifact, points_artifact
from _tools import load_tool


def _main():
    return load_tool('visualize').main


visualize_main = _main()


def _drawn(cell: np.ndarray) -> bool:
    """Whether a panel holds anything but the white background."""
    return bool((cell[..., :3] < 0.9).any())


def test_clouds_grid_has_one_panel_per_slot_and_real_beside(tmp_path, capsys):
    artifact = generator_artifact(tmp_path / 'gen.safetensors', cpc=2)
    cfg = tmp_path / 'data.yaml'
    cfg.write_text(data_cfg_text())
    out = tmp_path / 'clouds.png'
    assert visualize_main(['clouds', str(artifact), '--out', str(out), '--max-classes', '3', '--num-points', '64',
                           '--real-cfg', str(cfg), '--real-per-class', '1', '--panel-inches', '1', '--dpi', '40']) == 0
    image = mpimg.imread(out)
    assert out.stat().st_size > 0 and image.shape[:2] == (3 * 40, 3 * 40)        # 3 classes x (2 synthetic + 1 real)
    cells = [image[r * 40:(r + 1) * 40, c * 40:(c + 1) * 40] for r in range(3) for c in range(3)]
    assert all(_drawn(cell) for cell in cells)
    assert '3 x 3 panels (6 synthetic, 3 real), 120 x 120 px' in capsys.readouterr().out


def test_clouds_grid_of_a_points_artifact_by_class_name(tmp_path):
    artifact = points_artifact(tmp_path / 'points.safetensors')
    from openpoints_dd.data import SyntheticSet
    names = SyntheticSet(artifact).class_names
    out = tmp_path / 'clouds.png'
    assert visualize_main(['clouds', str(artifact), '--out', str(out), '--classes', f'{names[1]},0',
                           '--panel-inches', '1', '--dpi', '30']) == 0
    image = mpimg.imread(out)
    assert image.shape[:2] == (2 * 30, 1 * 30) and _drawn(image[:30]) and _drawn(image[30:])


def test_bad_artifact_and_bad_class_fail_clearly(tmp_path):
    missing = tmp_path / 'missing.safetensors'
    with pytest.raises(SystemExit, match='cannot read the artifact.*missing.safetensors'):
        visualize_main(['clouds', str(missing), '--out', str(tmp_path / 'x.png')])
    garbage = tmp_path / 'garbage.safetensors'
    garbage.write_bytes(b'not a safetensors file')
    with pytest.raises(SystemExit, match='cannot read the artifact'):
        visualize_main(['clouds', str(garbage), '--out', str(tmp_path / 'x.png')])
    artifact = points_artifact(tmp_path / 'points.safetensors')
    with pytest.raises(ValueError, match="unknown class 'no-such-class'"):
        visualize_main(['clouds', str(artifact), '--out', str(tmp_path / 'x.png'), '--classes', 'no-such-class'])
    assert not (tmp_path / 'x.png').exists()


def test_curves_from_metrics_json_and_from_log_txt(tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'metrics.json').write_text(json.dumps({
        'loss_history': [1.0, 0.8, 0.7, 0.5],
        'evaluations_during_distillation': [{'oa': 30.0, 'iteration': 2, 'minutes': 1.0}],
        'evaluation': {'synthetic (fixed set)': {'final_oa': {'mean': 40.0}}}}))
    out = tmp_path / 'curves.png'
    assert visualize_main(['curves', str(run), '--out', str(out), '--dpi', '50']) == 0
    image = mpimg.imread(out)
    assert image.shape[:2] == (200, 400) and _drawn(image[:, :200]) and _drawn(image[:, 200:])
    assert 'metrics.json' in capsys.readouterr().out

    from openpoints_dd.utils.plots import read_run_curves
    seg_run = tmp_path / 'seg_run'   # a part-segmentation distillation: its headline is instance mIoU
    seg_run.mkdir()
    (seg_run / 'metrics.json').write_text(json.dumps({
        'task': 'segmentation', 'headline': 'instance_miou', 'loss_history': [1.0, 0.5],
        'evaluations_during_distillation': [{'instance_miou': 20.0, 'iteration': 1, 'minutes': 0.5}],
        'evaluation': {'synthetic (fixed set)': {'final_instance_miou': {'mean': 25.0}}}}))
    assert read_run_curves(seg_run)['accuracy'] == {'quick evaluation instance_miou (1 seed)': ([1], [20.0]),
                                                    'synthetic (fixed set), final': ([2], [25.0])}
    log_run = tmp_path / 'log_run'
    log_run.mkdir()
    (log_run / 'log.txt').write_text("10:00:00 INFO step 1/4 | loss 1.2500 | syn_lr 1.0e-03 | ...\n"
                                     "10:00:01 INFO step 2/4 | loss 0.7500 | syn_lr 1.0e-03 | ...\n"
                                     "10:00:02 INFO evaluation at step 2 (0.1 min): {'oa': 31.5, 'snapshot': 'x'}\n")
    curves = read_run_curves(log_run)
    assert curves['loss'] == ([1, 2], [1.25, 0.75])
    assert curves['accuracy']['quick evaluation OA (1 seed)'] == ([2], [31.5])
    assert visualize_main(['curves', str(log_run), '--out', str(tmp_path / 'log.png')]) == 0
    with pytest.raises(FileNotFoundError, match='neither metrics.json nor log.txt'):
        visualize_main(['curves', str(tmp_path / 'empty'), '--out', str(tmp_path / 'e.png')])
