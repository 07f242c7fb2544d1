import numpy as np
import pytest
import torch
from openpoints.dataset import build_dataloader_from_cfg
from easydict import EasyDict as EasyConfig  # converts nested dicts, as openpoints needs

from openpoints_dd.data import ArtifactError, SyntheticSet, save_artifact
from openpoints_dd.synthesizers import PointGenerator
from openpoints_dd.data.synthetic_set import synthesizer_tensors

CLASSES = [f'class{i}' for i in range(10)]


def _metadata(kind, num_points=256, synthesizer=None):
    return {'kind': kind, 'synthesizer': synthesizer or {'NAME': 'ExplicitPoints'}, 'objective': {'NAME': 'GradientMatching'},
            'rotator': {'NAME': 'IdentityRotator'}, 'dataset': {'name': 'EmbeddedShapes', 'num_classes': 10,
                                                                  'class_names': CLASSES},
            'cpc': 1, 'num_points': num_points}


@pytest.fixture
def points_artifact(tmp_path):
    pos = torch.rand(10, 256, 3) * 2 - 1
    return save_artifact(tmp_path / 'points.safetensors', {'pos': pos, 'y': torch.arange(10)}, _metadata('points'))


@pytest.fixture
def generator_artifact(tmp_path):
    cfg = {'NAME': 'PointGenerator', 'hidden_dim': 16, 'w0_initial': 30}
    gen = PointGenerator(num_classes=10, cpc=1, hidden_dim=16, w0_initial=30)
    tensors, kind = synthesizer_tensors(gen, 256)
    return save_artifact(tmp_path / 'gen.safetensors', tensors, _metadata(kind, synthesizer=cfg))


def _loader_cfg(path, **train):
    return EasyConfig({
        'dataset': {'common': {'NAME': 'DistilledDataset', 'real_dataset': 'EmbeddedShapes', 'num_per_class_test': 2},
                    'train': {'split': 'train', 'distilled_path': str(path), **train},
                    'val': {'split': 'test'}},
        'dataloader': {'num_workers': 0},
        'datatransforms': {'train': ['PointsToTensor', 'PointCloudScaleAndTranslate'], 'val': ['PointsToTensor'],
                           'kwargs': {'shift': [0.2, 0.2, 0.2]}},
    })


def test_points_artifact_through_build_dataloader(points_artifact):
    cfg = _loader_cfg(points_artifact, repeat=4, num_points=128)
    loader = build_dataloader_from_cfg(8, cfg.dataset, cfg.dataloader, datatransforms_cfg=cfg.datatransforms,
                                       split='train', distributed=False)
    assert len(loader.dataset) == 40 and loader.dataset.classes == CLASSES
    batch = next(iter(loader))
    assert batch['pos'].shape == (8, 128, 3) and batch['x'].shape == (8, 128, 3)
    assert batch['y'].dtype == torch.int64
    val = build_dataloader_from_cfg(8, cfg.dataset, cfg.dataloader, datatransforms_cfg=cfg.datatransforms,
                                    split='val', distributed=False)
    assert val.dataset.num_classes == 10 and len(val.dataset) == 20                 # the real test split
    assert next(iter(val))['pos'].shape[1:] == (1024, 3)


def test_generator_artifact_resamples_each_epoch_or_stays_fixed(generator_artifact):
    from openpoints_dd.data import DistilledDataset
    resampled = DistilledDataset(split='train', distilled_path=str(generator_artifact), num_points=512)
    first = resampled[0]['pos'].clone()
    resampled.epoch = 1
    assert resampled[0]['pos'].shape == (512, 3) and not torch.equal(first, resampled[0]['pos'])
    fixed = DistilledDataset(split='train', distilled_path=str(generator_artifact), resample=False)
    before = fixed[3]['pos'].clone()
    fixed.epoch = 5
    assert torch.equal(before, fixed[3]['pos'])
    radius = np.linalg.norm(before.numpy(), axis=1).max()
    assert radius == pytest.approx(1.0, abs=1e-3)                                      # unit-sphere normalised


def test_generator_materializes_into_points(generator_artifact, tmp_path):
    fixed = SyntheticSet(generator_artifact).materialize(tmp_path / 'fixed.safetensors', num_points=300, seed=1)
    points = SyntheticSet(fixed)
    assert points.kind == 'points' and points.pos.shape == (10, 300, 3)
    assert points.metadata['materialized_from'] == str(generator_artifact)


def test_clear_errors(points_artifact, tmp_path):
    from openpoints_dd.data import DistilledDataset
    with pytest.raises(ValueError, match='stores 256 points'):
        DistilledDataset(split='train', distilled_path=str(points_artifact), num_points=1024)
    with pytest.raises(ValueError, match='distilled_path'):
        DistilledDataset(split='train')
    with pytest.raises(ValueError, match='real_dataset'):
        DistilledDataset(split='val')
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'not a safetensors file at all')
    with pytest.raises(ArtifactError):
        DistilledDataset(split='train', distilled_path=str(bad))


def test_every_training_split_name_serves_the_artifact(points_artifact):
    """PointNeXt's YAMLs name their training split `trainval`: it must be the artifact, never real clouds."""
    from openpoints_dd.data import DistilledDataset
    for split in ('train', 'trainval'):
        dataset = DistilledDataset(split=split, distilled_path=str(points_artifact), real_dataset='EmbeddedShapes',
                                   num_points=128, repeat=2)
        assert dataset.real is None and len(dataset) == 20 and dataset.classes == CLASSES
        assert torch.equal(dataset[3]['pos'], torch.from_numpy(dataset.pos[3]))
    test = DistilledDataset(split='test', distilled_path=str(points_artifact), real_dataset='EmbeddedShapes',
                            num_per_class_test=2)
    assert test.real is not None and len(test) == 20                          # the real test split


def test_trainval_in_a_loader_config_trains_on_the_artifact(points_artifact):
    cfg = _loader_cfg(points_artifact, repeat=4, num_points=128, split='trainval')
    loader = build_dataloader_from_cfg(8, cfg.dataset, cfg.dataloader, datatransforms_cfg=cfg.datatransforms,
                                       split='train', distributed=False)
    assert loader.dataset.split == 'trainval' and loader.dataset.real is None and len(loader.dataset) == 40


def test_an_unknown_split_is_an_error_not_real_data(points_artifact):
    from openpoints_dd.data import DistilledDataset
    with pytest.raises(ValueError, match=r"split 'validation' is neither a training split \('train', 'trainval'\)"):
        DistilledDataset(split='validation', distilled_path=str(points_artifact), real_dataset='EmbeddedShapes')
