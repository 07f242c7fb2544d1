"""A coreset baseline end to end through tools/distill.py: selection at iterations 0 → artifact → evaluation,
and the artifact read back by SyntheticSet and DistilledDataset."""
import json
from pathlib import Path

import pytest
import yaml

from conftest import tiny_embedded_cfg
from openpoints_dd.data import SyntheticSet
from openpoints_dd.data.distilled_dataset import DistilledDataset
from _tools import load_tool



def _distill_main():
    return load_tool('distill').main


@pytest.mark.parametrize('init', ['herding', 'kcenter'])
def test_coreset_distillation_writes_an_artifact_datasets_read(tmp_path, init):
    cfg = tiny_embedded_cfg(tmp_path, iterations=0, objective={'NAME': 'DistributionMatching'},
                            synthesizer={'NAME': 'ExplicitPoints', 'num_points': 128, 'init': init, 'embed_steps': 8,
                                         'embed_points': 32, 'embed_batch': 8, 'embed_widths': [8, 16, 32]})
    path = tmp_path / f'{init}-cpc1.yaml'
    path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg))))
    assert _distill_main()(['--cfg', str(path)]) == 0
    run_dir = Path(cfg['run_dir'])
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    network = metrics['init'].pop('selection_network')   # trained here: its seconds are in the measured start
    assert metrics['iterations_done'] == 0 and metrics['init'] == {'init': init}
    assert network['from_cache'] is False and network['training_seconds'] > 0 and network['charged_seconds'] == 0.0
    assert set(metrics['evaluation']) == {'synthetic (fixed set)', 'random (1 selections)'}
    synthetic = SyntheticSet(run_dir / 'artifact.safetensors')
    assert synthetic.kind == 'points' and synthetic.pos.shape == (10, 128, 3)
    assert synthetic.metadata['synthesizer']['init'] == init
    dataset = DistilledDataset(split='train', distilled_path=str(run_dir / 'artifact.safetensors'), num_points=128)
    assert len(dataset) == 10 and dataset[0]['pos'].shape == (128, 3)
