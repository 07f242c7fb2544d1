"""Tiny artifacts and data configs shared by the evaluate / visualize CLI tests (not a test module)."""
from __future__ import annotations

from pathlib import Path

import torch

from openpoints_dd.data import RealPool, save_artifact
from openpoints_dd.data.synthetic_set import synthesizer_tensors
from openpoints_dd.registry import build_synthesizer

EMBEDDED = {'common': {'NAME': 'EmbeddedShapes', 'num_per_class_train': 3, 'num_per_class_test': 2, 'num_points': 128},
            'train': {'split': 'train'}, 'val': {'split': 'test'}}


def data_cfg_text(epochs: int = 1) -> str:
    """A distill-style config: the embedded dataset, tiny fast-protocol evaluation settings."""
    return ('dataset:\n  common: {NAME: EmbeddedShapes, num_per_class_train: 3, num_per_class_test: 2, '
            'num_points: 128}\n'
            '  train: {split: train}\n  val: {split: test}\n'
            f'evaluation:\n  model: {{NAME: DistillPointNet, widths: [8, 16, 32]}}\n  epochs: {epochs}\n'
            '  batch_size: 16\n  num_points: 64\n')


def points_artifact(path: Path, cpc: int = 1) -> Path:
    """The first `cpc` real clouds of each embedded class, saved as a points artifact (10 classes)."""
    pool = RealPool.from_dataset_cfg(EMBEDDED, split='train')
    index = torch.cat([pool.indices_of_class(k)[:cpc] for k in range(pool.num_classes)])
    metadata = {'kind': 'points', 'cpc': cpc, 'num_points': int(pool.pos.shape[1]),
                'synthesizer': {'NAME': 'ExplicitPoints'}, 'objective': {'NAME': 'GradientMatching'},
                'rotator': {'NAME': 'IdentityRotator'},
                'dataset': {'name': 'EmbeddedShapes', 'num_classes': pool.num_classes, 'class_names': pool.class_names}}
    return save_artifact(path, {'pos': pool.pos[index], 'y': pool.labels[index]}, metadata)


def generator_artifact(path: Path, num_classes: int = 10, cpc: int = 1, class_names: list[str] | None = None,
                       dataset: str = 'EmbeddedShapes') -> Path:
    """An untrained, narrow PointGenerator saved as a generator artifact (of `dataset`'s classes)."""
    cfg = {'NAME': 'PointGenerator', 'hidden_dim': 16, 'w0_initial': 30}
    synthesizer = build_synthesizer(cfg, num_classes=num_classes, cpc=cpc)
    tensors, kind = synthesizer_tensors(synthesizer, 64)
    names = class_names or RealPool.from_dataset_cfg(EMBEDDED, split='train').class_names
    metadata = {'kind': kind, 'cpc': cpc, 'num_points': 64, 'synthesizer': cfg,
                'objective': {'NAME': 'GradientMatching'}, 'rotator': {'NAME': 'IdentityRotator'},
                'dataset': {'name': dataset, 'num_classes': num_classes, 'class_names': names}}
    return save_artifact(path, tensors, metadata)


def fake_modelnet40_artifact(path: Path, data_dir: Path) -> Path:
    """A generator artifact of the fake ModelNet40 folder's dataset (`make_fake_modelnet40`): its name and classes."""
    from openpoints_dd.labels import dataset_identity
    identity = dataset_identity({'common': {'NAME': 'ModelNet40Ply2048', 'data_dir': str(data_dir)}, 'train': {}})
    return generator_artifact(path, num_classes=identity.num_classes, class_names=list(identity.class_names),
                              dataset=identity.name)
