"""Typed settings: a YAML key and an override are checked alike, before any data loads, and defaults live in one
place (openpoints_dd/settings.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from openpoints_dd.settings import (SettingsError, describe_schema, load_distill_config, resolve_distill_config,
                                    resolve_section, schema)
from _tools import load_tool

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / 'cfgs' / 'distill' / 'demo.yaml'
CONFIGS = sorted(p for p in (ROOT / 'cfgs' / 'distill').rglob('*.yaml') if p.name != 'default.yaml')


def _yaml(tmp_path: Path, text: str) -> Path:
    """A user's YAML outside cfgs/, on top of the demo config."""
    path = tmp_path / 'exp.yaml'
    path.write_text(f'base: {DEMO}\n' + text)
    return path


def _distill_main():
    return load_tool('distill').main


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: str(p.relative_to(ROOT / 'cfgs' / 'distill')))
def test_every_shipped_config_resolves_and_resolving_is_idempotent(path):
    cfg = load_distill_config(str(path))
    assert resolve_distill_config(cfg) == cfg
    fields = schema(cfg['task'])['distill'].fields
    assert set(fields) - {'rotator_optimizer'} <= set(cfg['distill'])   # every default filled in


@pytest.mark.parametrize('text, match', [
    ('distill:\n  iteratons: 2\n', r"unknown key distill\.iteratons \(did you mean 'iterations'\?\)"),
    ('evalution:\n  epochs: 2\n', r"unknown key evalution \(did you mean 'evaluation'\?\)"),
    ('distill:\n  cpc: 1.5\n', r'distill\.cpc must be an integer; got 1\.5'),
    ('distill:\n  iterations: -1\n', r'distill\.iterations must be >= 0; got -1'),
    ('distill:\n  batch_real: 0\n', r'distill\.batch_real must be >= 1; got 0'),
    ('distill:\n  progress: 1\n', r'distill\.progress must be true or false'),
    ('distill:\n  synthesizer: {hidden_dimm: 8}\n', r"distill\.synthesizer\.hidden_dimm: PointGenerator takes no such "
                                                    r"key \(did you mean 'hidden_dim'\?\)"),
    ('distill:\n  synthesizer: {init: facilty}\n', r"distill\.synthesizer\.init must be one of 'noise', 'real'"),
    ('distill:\n  objective: {NAME: GradientMatchin}\n', r"unknown objective 'GradientMatchin' \(did you mean "
                                                         r"'GradientMatching'\?\)"),
    ('distill:\n  syn_optimizer: {NAME: adam, lrr: 0.1}\n', r"syn_optimizer\.lrr: Adam takes no such key \(did you "
                                                            r"mean 'lr'\?\)"),
    ('distill:\n  syn_scheduler: {gamma: 2}\n', r'distill\.syn_scheduler\.gamma must be <= 1'),
    ('distill:\n  budget_minutes: null\n  syn_scheduler: {by: time}\n',
     r'distill\.syn_scheduler\.by: time counts the run by its budget; set distill\.budget_minutes'),
    ('distill:\n  rotator_optimizer: {momentum: 0.5}\n', r'distill\.rotator_optimizer\.lr is required'),
    ('distill:\n  tail_average: {start_fraction: 1.0}\n', r'distill\.tail_average\.start_fraction must be below 1'),
    ('distill:\n  tail_average: {by: time}\n', r'distill\.tail_average\.start_fraction is required'),
    ('distill:\n  tail_average: {start_fractoin: 0.5}\n', r"unknown key distill\.tail_average\.start_fractoin"),
    ('distill:\n  budget_minutes: null\n  tail_average: {start_fraction: 0.75, by: time}\n',
     r'distill\.tail_average\.by: time counts the run by its budget; set distill\.budget_minutes'),
    ('distill:\n  bn_warmup: 4\n', r"unknown key distill\.bn_warmup"),            # a segmentation key
    ('evaluation:\n  model: {NAME: NoSuchNet}\n', r"evaluation\.model\.NAME: unknown model 'NoSuchNet'"),
    ('evaluation:\n  labels: {NAME: TeacherLabels, teacher: x.yaml, temprature: 3}\n',
     r"evaluation\.labels\.temprature: TeacherLabels takes no such key \(did you mean 'temperature'\?\)"),
    ('evaluation:\n  generator_modes: [resampled, fixd]\n', r"'fixd' is not one of 'resampled', 'fixed'"),
    ('evaluation:\n  augment: {scale: [0.8]}\n', r'evaluation\.augment\.scale must have 2 items'),
    ('evaluation:\n  amp: fp16\n', r"evaluation\.amp must be one of 'fp32', 'bf16' or null"),
    ('device: gpu\n', r'device must be cpu, cuda, cuda:N or auto'),
    ('resume: maybe\n', r"resume must be one of 'auto', 'force', 'never'"),
    ('dataset:\n  common: {num_per_clas_train: 3}\n', r"dataset\.common\.num_per_clas_train"),
    ('dataset:\n  common: {NAME: ModelNet40Ply2048, data_dri: x}\n', r"dataset\.common\.data_dri: dataset "
                                                                    r"ModelNet40Ply2048 takes no such key \(did you "
                                                                    r"mean 'data_dir'\?\)"),
    ('dataset:\n  common: {rotation: {mode: so4}}\n', r"dataset\.common\.rotation\.mode must be one of 'so3'"),
    ('dataset:\n  trian: {split: train}\n', r"unknown key dataset\.trian \(did you mean 'train'\?\)"),
])
def test_a_wrong_yaml_key_or_value_is_an_error_naming_it(tmp_path, text, match):
    with pytest.raises(SettingsError, match=match):
        load_distill_config(str(_yaml(tmp_path, text)))


@pytest.mark.parametrize('override, match', [
    ('distill.outer_lop=3', r"unknown key distill\.outer_lop \(did you mean 'outer_loop'\?\)"),
    ('distill.cpc=1.5', r'distill\.cpc must be an integer; got 1\.5'),
    ('distill.iterations=-1', r'distill\.iterations must be >= 0'),
    ('distill.batch_real=0', r'distill\.batch_real must be >= 1'),
    ('distill.budget_minutes=abc', r"distill\.budget_minutes must be a number; got 'abc'"),
    ('evaluation.model.NAME=NoSuchNet', r"evaluation\.model\.NAME: unknown model 'NoSuchNet'"),
])
def test_an_override_is_checked_like_a_yaml_key(override, match):
    with pytest.raises(SettingsError, match=match):
        load_distill_config(str(DEMO), [override])


def test_values_keep_their_kinds_and_defaults_fill_in(tmp_path):
    cfg = load_distill_config(str(_yaml(tmp_path, 'distill:\n  net_lr: 1e-3\n  objective: {autocast: all}\n')),
                              ['distill.budget_minutes=5', 'distill.cpc=2'])
    d = cfg.distill
    assert d.cpc == 2 and type(d.cpc) is int
    assert d.budget_minutes == 5.0 and type(d.budget_minutes) is float   # an int given for a number
    assert d.net_lr == 1e-3 and type(d.net_lr) is float                  # PyYAML reads 1e-3 as a string
    assert d.objective == {'NAME': 'GradientMatching', 'autocast': 'all'}   # merged over the default component
    assert d.syn_scheduler == {'step_fraction': 0.5, 'gamma': 0.1, 'by': 'iterations'}
    assert d.rotator_optimizer is None and 'inner_batch' in d
    assert cfg.evaluation.augment.jitter_clip == 0.05                   # nested sections: attribute access
    # a component of another NAME keeps the default's other keys (as the default.yaml merge did)
    cfg = load_distill_config(str(DEMO), ["distill.syn_optimizer={NAME: sgd, lr: 0.1}"])
    assert cfg.distill.syn_optimizer == {'NAME': 'sgd', 'lr': 0.1, 'weight_decay': 5e-4}


def test_no_evaluation_stays_none_and_tasks_have_their_own_sections(tmp_path):
    assert load_distill_config(str(DEMO), ['evaluation=None']).evaluation is None
    seg = resolve_section('evaluation', {}, 'segmentation')
    assert seg.model == {'NAME': 'DistillPointNetSeg'} and seg.random_selections == 3 and 'part_balance' in seg
    assert 'part_balance' not in resolve_section('evaluation', {}, 'classification')
    # part segmentation takes the same labelers (per-point teacher labels); an unknown one is refused
    labels = resolve_section('evaluation', {'labels': {'NAME': 'TeacherLabels', 'teacher': 'x.yaml'}}, 'segmentation')
    assert labels.labels['NAME'] == 'TeacherLabels'
    with pytest.raises(SettingsError, match='SoftLabels'):
        resolve_section('evaluation', {'labels': {'NAME': 'SoftLabels'}}, 'segmentation')
    with pytest.raises(SettingsError, match=r"task: the config says 'classification'"):
        resolve_distill_config(load_distill_config(str(DEMO)), task='segmentation')


def test_the_cli_refuses_a_bad_key_before_loading_any_data(tmp_path):
    """An unknown evaluation model fails in settings, not after a whole distillation (the data folder here
    does not exist: reaching the data would be a FileNotFoundError)."""
    bad = _yaml(tmp_path, f'dataset:\n  common: {{NAME: ModelNet40Ply2048, data_dir: {tmp_path}/missing}}\n'
                          'evaluation:\n  model: {NAME: NoSuchNet}\n')
    with pytest.raises(SettingsError, match='NoSuchNet'):
        _distill_main()(['--cfg', str(bad), f'run_dir={tmp_path / "run"}'])
    assert not (tmp_path / 'run').exists()


def test_the_schema_is_printed_with_every_key(capsys):
    assert _distill_main()(['--settings']) == 0
    text = capsys.readouterr().out
    for key in schema('classification')['distill'].fields:
        assert f'  {key}:' in text
    assert 'bn_warmup' in describe_schema('segmentation') and 'bn_warmup' not in text


def test_a_run_records_every_resolved_value(tmp_path):
    """cfg.yaml is the resolved config: a resume compares every value, defaults included."""
    from openpoints_dd.utils.run import start_run
    cfg = load_distill_config(str(DEMO), [f'run_dir={tmp_path / "run"}'])
    with start_run(cfg, str(DEMO), []) as run_dir:
        saved = yaml.safe_load((run_dir / 'cfg.yaml').read_text())
    assert saved['distill']['inner_batch'] == 256 and saved['evaluation']['augment']['scale'] == [0.8, 1.25]
