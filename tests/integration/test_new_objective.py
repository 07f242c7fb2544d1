"""A new objective is one class and one registration: it runs through tools/distill.py with no engine change."""
import json
from pathlib import Path

import torch

from openpoints_dd.objectives import Objective, SetObjective
from openpoints_dd.registry import OBJECTIVES
from _tools import load_tool

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / 'cfgs' / 'distill' / 'demo.yaml')
TINY = ['+dataset.common.num_per_class_train=6', '+dataset.common.num_per_class_test=3', 'distill.iterations=2',
        'distill.outer_loop=2', 'distill.batch_real=4', 'distill.num_points=64', 'distill.export_num_points=64',
        'distill.synthesizer.hidden_dim=16', 'distill.synthesizer.init_steps=3', 'distill.progress=False',
        'evaluation=None']


def _distill_main():
    return load_tool('distill').main


class CentroidMatching(Objective):
    """Squared distance between the mean embeddings of the synthetic and real clouds of a class."""
    trains_backbone = False

    def __init__(self, *, weight: float = 1.0):
        self.weight = weight
        self.calls = 0

    def __call__(self, backbone, syn_pos, real_pos, label):
        self.calls += 1
        return self.weight * (backbone.embed(syn_pos).mean(0) - backbone.embed(real_pos).mean(0)).pow(2).sum()


class WholeSetCentroids(SetObjective):
    """Every synthetic cloud's embedding pulled towards the origin: a whole-set objective with a learnable scale."""
    trains_backbone = False

    def __init__(self):
        self.scale = torch.nn.Parameter(torch.ones(()))

    def parameters(self):
        return [self.scale]

    def optimizer(self):
        return torch.optim.SGD([self.scale], lr=0.01)

    def state_dict(self):
        return {'scale': self.scale.detach().clone()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.scale.copy_(state['scale'])

    def match_all(self, backbone, syn_pos, labels, generator):
        return (self.scale * backbone.embed(syn_pos)).pow(2).mean()


def _register_and_run(cls, tmp_path, overrides):
    OBJECTIVES.register_module(module=cls)
    try:
        run_dir = tmp_path / cls.__name__
        assert _distill_main()(['--cfg', DEMO, f'run_dir={run_dir}', *TINY, *overrides]) == 0
        return json.loads((run_dir / 'metrics.json').read_text()), run_dir
    finally:
        OBJECTIVES.module_dict.pop(cls.__name__)


def test_a_per_class_objective_registered_in_a_test_runs_through_the_cli(tmp_path):
    metrics, run_dir = _register_and_run(CentroidMatching, tmp_path,
                                         ['distill.objective={NAME: CentroidMatching, weight: 2.0}'])
    assert metrics['iterations_done'] == 2 and all(loss > 0 for loss in metrics['loss_history'])
    assert (run_dir / 'artifact.safetensors').is_file()
    assert 'CentroidMatching' in (run_dir / 'cfg.yaml').read_text()


def test_a_whole_set_objective_with_its_own_parameters_runs_and_checkpoints(tmp_path):
    metrics, run_dir = _register_and_run(WholeSetCentroids, tmp_path, ['distill.objective={NAME: WholeSetCentroids}'])
    assert metrics['iterations_done'] == 2
    state = torch.load(run_dir / 'checkpoint.pt', weights_only=True)
    assert state['objective']['scale'].item() != 1.0   # its optimizer stepped, and the checkpoint kept it
