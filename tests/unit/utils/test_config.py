"""load_config: a component section that switches NAME is replaced, one that keeps it is merged; base files bring
their folders' defaults; a tool's defaults make its keys known; exponent floats are floats in files and overrides."""
from __future__ import annotations

import pytest

from openpoints_dd.utils.config import load_config


def test_switching_a_components_name_drops_the_old_components_arguments(tmp_path):
    (tmp_path / 'base.yaml').write_text('distill:\n  rotator: {NAME: EulerRotator, lr_scale: [1.0, 10.0, 1.0]}\n'
                                        '  synthesizer: {NAME: PointGenerator, hidden_dim: 256}\n')
    (tmp_path / 'child.yaml').write_text('base: base.yaml\ndistill:\n  rotator: {NAME: IdentityRotator}\n'
                                         '  synthesizer: {w0_initial: 30}\n')
    cfg = load_config(tmp_path / 'child.yaml')
    assert dict(cfg.distill.rotator) == {'NAME': 'IdentityRotator'}
    assert dict(cfg.distill.synthesizer) == {'NAME': 'PointGenerator', 'hidden_dim': 256, 'w0_initial': 30}


def test_a_dataset_section_switching_name_keeps_its_other_keys(tmp_path):
    (tmp_path / 'base.yaml').write_text('dataset:\n  common: {NAME: ModelNet40Ply2048, data_dir: d}\n')
    (tmp_path / 'child.yaml').write_text('base: base.yaml\ndataset:\n  common: {NAME: DistilledDataset}\n')
    assert dict(load_config(tmp_path / 'child.yaml').dataset.common) == {'NAME': 'DistilledDataset', 'data_dir': 'd'}


def test_a_yaml_outside_the_tree_gets_its_bases_folder_defaults(tmp_path):
    """A user's YAML anywhere with `base:` pointing at a project config resolves as that config does in cfgs/."""
    project = tmp_path / 'project' / 'cfgs' / 'distill'
    (project / 'shapes').mkdir(parents=True)
    (project / 'default.yaml').write_text('seed: 0\ndistill: {cpc: 1, iterations: 400, lr: 0.1}\n')
    (project / 'shapes' / 'default.yaml').write_text('dataset: {common: {NAME: A}}\ndistill: {iterations: 50}\n')
    (project / 'shapes' / 'method.yaml').write_text('distill: {cpc: 10}\n')
    user = tmp_path / 'user' / 'mine.yaml'
    user.parent.mkdir()
    user.write_text(f'base: {project / "shapes" / "method.yaml"}\ndataset: {{common: {{NAME: B}}}}\n')
    own = load_config(project / 'shapes' / 'method.yaml')
    cfg = load_config(user)
    assert dict(cfg.distill) == dict(own.distill) == {'cpc': 10, 'iterations': 50, 'lr': 0.1}
    assert cfg.seed == 0 and cfg.dataset.common.NAME == 'B'
    # the user's own folder defaults come after the base's folder defaults, and the base's keys after both
    (user.parent / 'default.yaml').write_text('distill: {iterations: 7, cpc: 3}\n')
    assert dict(load_config(user).distill) == {'cpc': 10, 'iterations': 7, 'lr': 0.1}


def test_base_walk_is_unchanged_for_bases_inside_the_walk(tmp_path):
    """A base in a sub-folder of the config's own walk adds no default twice (defaults do not re-apply)."""
    (tmp_path / 'default.yaml').write_text('a: 1\nb: 1\n')
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'sub' / 'base.yaml').write_text('a: 2\n')
    (tmp_path / 'child.yaml').write_text('base: sub/base.yaml\n')
    assert dict(load_config(tmp_path / 'child.yaml')) == {'a': 2, 'b': 1}


def test_defaults_make_a_tools_keys_known_to_overrides(tmp_path):
    (tmp_path / 'pointnext.yaml').write_text('epochs: 600\n')
    with pytest.raises(ValueError, match=r'unknown config key .run_dir.*\+run_dir'):
        load_config(tmp_path / 'pointnext.yaml', ['run_dir=x'])
    cfg = load_config(tmp_path / 'pointnext.yaml', ['run_dir=x', 'epochs=2'], defaults={'run_dir': None, 'epochs': 1})
    assert cfg.run_dir == 'x' and cfg.epochs == 2


def test_exponent_floats_without_a_dot_are_floats_in_files_and_overrides(tmp_path):
    # YAML 1.1 (PyYAML's default) reads 1e-5 as a string: an optimizer section took it and failed inside torch
    (tmp_path / 'cfg.yaml').write_text('distill:\n  syn_optimizer: {NAME: adam, lr: 1e-5}\n  steps: [2E3, -1e+2, .5e1]\n'
                                       '  name: "1e-5"\n  words: [1e, e5, .e5]\n')
    cfg = load_config(tmp_path / 'cfg.yaml', ['distill.syn_optimizer={NAME: sgd, lr: 3e-4}'])
    assert cfg.distill.syn_optimizer.lr == pytest.approx(3e-4) and isinstance(cfg.distill.syn_optimizer.lr, float)
    assert cfg.distill.steps == [2000.0, -100.0, 5.0]
    assert cfg.distill.name == '1e-5' and cfg.distill.words == ['1e', 'e5', '.e5']   # quoted or not a number
    assert load_config(tmp_path / 'cfg.yaml').distill.syn_optimizer.lr == pytest.approx(1e-5)
