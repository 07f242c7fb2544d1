"""Shared fixtures: a fixed seed, tiny labelled clouds and a narrow PointNet backbone."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import openpoints_dd  # noqa: F401  (registers everything, fixes openpoints on this machine)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    """Dataset caches (PointCloudFolderDataset's parsed folders) go to a temporary folder, never to ~/.cache."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path_factory.getbasetemp() / 'xdg_cache'))


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


SHAPE_NAMES = ('mug', 'lamp', 'chair', 'vase')   # a user's own classes: none of them in ModelNet40's order


def _class_clouds(num_classes: int, per_class: int, num_points: int, seed: int):
    """(K·per_class, N, 3) float32 clouds, class-major, each class its own anisotropic blob (learnable), raw scale."""
    rng = np.random.default_rng(seed)
    scales = np.array([[1.0, 0.3, 0.1], [0.2, 1.0, 0.5], [0.6, 0.6, 1.0], [1.0, 1.0, 0.2]])
    clouds = [rng.normal(size=(per_class, num_points, 3)) * scales[k % 4] * 5 + 2.0 for k in range(num_classes)]
    return np.concatenate(clouds).astype('float32'), np.repeat(np.arange(num_classes), per_class)


def make_h5_dataset(root: Path, style: str = 'modelnet', classes=SHAPE_NAMES, per_class: tuple[int, int] = (6, 3),
                    num_points: int = 256) -> Path:
    """A labelled h5 dataset with its own class names: openpoints' ModelNet40Ply2048 layout (`style='modelnet'`:
    modelnet40_ply_hdf5_2048/ply_data_{train,test}0.h5, labels (n, 1)) or ScanObjectNN's (`'scanobjectnn'`:
    training_/test_objectdataset.h5 in the folder, labels (n,)); shape_names.txt beside the files."""
    import h5py
    folder = root / 'modelnet40_ply_hdf5_2048' if style == 'modelnet' else root
    folder.mkdir(parents=True)
    files = ({'train': 'ply_data_train0.h5', 'test': 'ply_data_test0.h5'} if style == 'modelnet' else
             {'train': 'training_objectdataset.h5', 'test': 'test_objectdataset.h5'})
    for seed, (split, name) in enumerate(files.items()):
        clouds, labels = _class_clouds(len(classes), per_class[seed], num_points, seed)
        order = np.random.default_rng(seed).permutation(len(labels))   # files are not sorted by class
        with h5py.File(folder / name, 'w') as f:
            f['data'] = clouds[order]
            f['label'] = labels[order].reshape(-1, 1) if style == 'modelnet' else labels[order]
    (folder / 'shape_names.txt').write_text('\n'.join(classes) + '\n')
    return root


def make_class_folders(root: Path, classes=SHAPE_NAMES, per_class: tuple[int, int] = (6, 3), num_points: int = 256,
                       suffixes=('.txt', '.xyz', '.npy', '.ply')) -> Path:
    """One folder per class with train/ and test/ folders of point files, the suffixes taken in turn (text with
    commas and normals as ModelNet's resampled files, plain xyz, npy, ASCII ply)."""
    for seed, split in enumerate(('train', 'test')):
        clouds, labels = _class_clouds(len(classes), per_class[seed], num_points, seed)
        for i, (cloud, label) in enumerate(zip(clouds, labels)):
            folder = root / classes[label] / split
            folder.mkdir(parents=True, exist_ok=True)
            suffix = suffixes[i % len(suffixes)]
            write_cloud(folder / f'{classes[label]}_{i:04d}{suffix}', cloud)
    return root


def write_cloud(path: Path, cloud) -> None:
    """One cloud (N, 3) in the file format its suffix names."""
    if path.suffix == '.txt':      # x,y,z,nx,ny,nz per line, as ModelNet40's resampled text files
        normals = np.zeros_like(cloud)
        np.savetxt(path, np.concatenate([cloud, normals], 1), delimiter=',', fmt='%.6f')
    elif path.suffix == '.xyz':
        np.savetxt(path, cloud, fmt='%.6f')
    elif path.suffix == '.npy':
        np.save(path, cloud)
    else:
        header = f'ply\nformat ascii 1.0\nelement vertex {len(cloud)}\nproperty float x\nproperty float y\n' \
                 f'property float z\nend_header\n'
        path.write_text(header + '\n'.join(' '.join(f'{v:.6f}' for v in p) for p in cloud) + '\n')
