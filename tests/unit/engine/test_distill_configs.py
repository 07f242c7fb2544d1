"""Every shipped distillation config loads and builds its synthesizer, objective and rotator."""
from __future__ import annotations

from pathlib import Path

import pytest

from openpoints_dd.engine.distill import _rotator_args
from openpoints_dd.registry import SYNTHESIZERS, build_objective, build_rotator, build_synthesizer
from openpoints_dd.settings import load_distill_config

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = sorted(p for p in (ROOT / 'cfgs' / 'distill').rglob('*.yaml') if p.name != 'default.yaml')


def test_the_baseline_grid_is_shipped():
    names = {p.name for p in CONFIGS}
    expected = {f'{m}-cpc{k}{s}.yaml' for m in ('random', 'herding', 'kcenter', 'dm', 'gm', 'tm') for k in (1, 10)
                for s in ('', '-cpu30m')}
    expected |= {f'{m}-cpc{k}.yaml' for m in ('sadm', 'gm') for k in (1, 3, 10)} | {f'sadm-cpc{k}-cpu30m.yaml' for k in (1, 10)}
    expected |= {'dd3d-generator-dm-cpc10-cpu30m.yaml'} | {f'facility-cpc{k}-cpu30m.yaml' for k in (1, 10)}
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: str(p.relative_to(ROOT / 'cfgs' / 'distill')))
def test_config_loads_and_builds_its_parts(path, monkeypatch):
    monkeypatch.chdir(ROOT)                    # relative data_dir values are relative to the repository root
    cfg = load_distill_config(str(path))
    d = cfg['distill']
    num_classes = 40 if 'modelnet40' in path.parts else 10
    num_slots = num_classes * int(d['cpc'])
    if cfg.get('task') == 'segmentation':   # the part synthesizer's part table comes from the data (SegDistiller)
        assert d['synthesizer']['NAME'] in SYNTHESIZERS.module_dict
    else:
        assert build_synthesizer(d['synthesizer'], num_classes=num_classes, cpc=int(d['cpc'])).num_slots == num_slots
    objective = build_objective(d['objective'])
    if cfg.get('task') != 'segmentation':   # the sizes the Distiller refuses at construction (M3D's partitions)
        synthesizer = build_synthesizer(d['synthesizer'], num_classes=num_classes, cpc=int(d['cpc']))
        objective.check_cloud_sizes(int(d['num_points']), synthesizer.resolution or int(d['num_points']))
        # the points matching asks of a store (ExplicitPoints), refused by the Distiller at construction
        assert synthesizer.max_points is None or int(d['num_points']) <= synthesizer.max_points
    rotator = build_rotator(d['rotator'], **_rotator_args(d['rotator'], num_slots))
    if getattr(rotator, 'per_slot', False):
        assert rotator.num_slots == num_slots
    if path.stem.endswith('-cpu30m'):   # research/cpu_protocol.md: the same budget and scale for every method
        # M3D matches 255-point clouds with FPS partitions of whole real clouds (4 x 255 of 1024 points)
        points = 1024 if d['objective']['NAME'] == 'M3D' else 256
        assert (d['budget_minutes'], d['num_points']) == (30, points)
