"""load_config: a component section that switches NAME is replaced, one that keeps it is merged."""
from __future__ import annotations

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
