"""Shared fixtures: a fixed seed, tiny labelled clouds and a narrow PointNet backbone."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import openpoints_dd  # noqa: F401  (registers everything, fixes openpoints on this machine)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_tiny_clouds(num_classes: int = 3, per_class: int = 4, num_points: int = 64) -> SimpleNamespace:
    """Anisotropic Gaussian blobs, one shape per class, unit-sphere normalised."""
    from openpoints_dd.utils.geometry import normalize_to_unit_sphere
    generator = torch.Generator().manual_seed(1)
    scales = torch.tensor([[1.0, 0.3, 0.1], [0.2, 1.0, 0.5], [0.6, 0.6, 1.0], [1.0, 1.0, 0.2]])
    pos, y = [], []
    for label in range(num_classes):
        cloud = torch.randn(per_class, num_points, 3, generator=generator) * scales[label % len(scales)]
        cloud[..., 0] += cloud[..., 1].square() * 0.3 * (label + 1)       # skew so PCA signs are defined
        pos.append(cloud)
        y += [label] * per_class
    return SimpleNamespace(pos=normalize_to_unit_sphere(torch.cat(pos)), y=torch.tensor(y), num_classes=num_classes)


@pytest.fixture
def tiny_clouds() -> SimpleNamespace:
    return make_tiny_clouds()


@pytest.fixture
def tiny_backbone():
    from openpoints_dd.models import DistillPointNet
    return DistillPointNet(num_classes=3, widths=(8, 16, 32))


def tiny_embedded_cfg(tmp_path, **distill) -> dict:
    """A complete, seconds-long distillation config on the embedded dataset."""
    from openpoints.utils import EasyConfig
    cfg = {
        'seed': 0, 'device': 'cpu', 'run_dir': str(tmp_path / 'run'), 'resume': True,
        'dataset': {'common': {'NAME': 'EmbeddedShapes', 'num_per_class_train': 6, 'num_per_class_test': 3},
                    'train': {'split': 'train'}, 'val': {'split': 'test'}},
        'distill': {'cpc': 1, 'iterations': 4, 'outer_loop': 2, 'inner_loop': 1, 'batch_real': 4,
                    'num_points': 64, 'export_num_points': 128, 'budget_minutes': None, 'net_lr': 0.01,
                    'inner_batch': 16, 'backbone': {'NAME': 'DistillPointNet', 'widths': [8, 16, 32]},
                    'synthesizer': {'NAME': 'PointGenerator', 'hidden_dim': 16, 'w0_initial': 30},
                    'objective': {'NAME': 'GradientMatching'}, 'rotator': {'NAME': 'IdentityRotator'},
                    'syn_optimizer': {'NAME': 'adam', 'lr': 0.001, 'weight_decay': 0.0005},
                    'syn_scheduler': {'step_fraction': 0.5, 'gamma': 0.1}, 'checkpoint_every': 1, 'eval_every': 0,
                    'log_every': 1, 'progress': False},
        'evaluation': {'model': {'NAME': 'DistillPointNet', 'widths': [8, 16, 32]}, 'epochs': 2, 'batch_size': 16,
                       'num_points': 128, 'seeds': [0], 'random_selections': 1},
    }
    cfg['distill'].update(distill)
    return EasyConfig(cfg)


def run_until_crash(distiller, crash_at: int) -> None:
    """Run `distiller` and kill it (KeyboardInterrupt) when iteration `crash_at` starts, as an interrupted job."""
    import pytest
    original = distiller.run_iteration

    def crash(iteration, outer, inner):
        if iteration == crash_at:
            raise KeyboardInterrupt
        return original(iteration, outer, inner)

    distiller.run_iteration = crash
    with pytest.raises(KeyboardInterrupt):
        distiller.run()


def make_fake_modelnet40(root: Path, num_train: int = 8, num_test: int = 6, num_points: int = 2048) -> Path:
    """openpoints' ModelNet40Ply2048 layout: one train and one test h5 of random clouds, labels over 40 classes."""
    import h5py
    import numpy as np
    folder = root / 'modelnet40_ply_hdf5_2048'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (('train', num_train), ('test', num_test)):
        with h5py.File(folder / f'ply_data_{split}0.h5', 'w') as f:
            f['data'] = rng.normal(size=(n, num_points, 3)).astype('float32')
            labels = rng.integers(0, 40, size=(n, 1))
            labels[0] = 39  # openpoints derives num_classes from the largest label
            f['label'] = labels.astype('int64')
    (folder / 'shape_names.txt').write_text('\n'.join(f'class{i}' for i in range(40)) + '\n')
    return root
