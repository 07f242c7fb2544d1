"""adapt_to_artifact: a YAML written for a real dataset (PointNeXt's) fitted to the distilled set it trains on."""
from __future__ import annotations

import json

import pytest
import torch

from openpoints.utils import EasyConfig
from openpoints_dd.data import save_artifact
from openpoints_dd.engine.artifact_cfg import FEATURE_TRANSFORMS, adapt_to_artifact, artifact_path


def _easy(cfg: dict) -> EasyConfig:
    out = EasyConfig()
    out.update(json.loads(json.dumps(cfg)))
    return out


def _artifact(path, task='classification', num_classes=5):
    metadata = {'kind': 'points', 'cpc': 1, 'num_points': 16, 'synthesizer': {'NAME': 'ExplicitPoints'},
                'objective': {'NAME': 'GradientMatching'}, 'rotator': {'NAME': 'IdentityRotator'},
                'dataset': {'name': 'mine', 'num_classes': num_classes,
                            'class_names': [f'c{i}' for i in range(num_classes)]}}
    tensors = {'pos': torch.rand(num_classes, 16, 3), 'y': torch.arange(num_classes)}
    if task == 'segmentation':
        metadata.update(task='segmentation', segmentation={'num_parts': 7, 'cls2parts': [[0, 1, 2], [3, 4], [5, 6]]})
        tensors['parts'] = torch.zeros(num_classes, 16, dtype=torch.long)
    return str(save_artifact(path, tensors, metadata))


def _classification_yaml(artifact):   # PointNeXt's ModelNet40 YAML, in short
    return _easy({'artifact': artifact, 'num_classes': 40,
                  'dataset': {'common': {'NAME': 'ModelNet40Ply2048', 'data_dir': 'x'}, 'train': {'split': 'train'}},
                  'model': {'NAME': 'BaseCls', 'cls_args': {'NAME': 'ClsHead', 'num_classes': 40}}})


def _part_yaml(artifact, val=('PointsToTensor', 'PointCloudCenterAndNormalize')):   # PointNeXt's ShapeNet-part YAML
    return _easy({'artifact': artifact, 'num_classes': 50, 'shape_classes': 16, 'feature_keys': 'pos,x,heights',
                  'dataset': {'common': {'NAME': 'ShapeNetPartNormal'}, 'train': {'split': 'trainval'}},
                  'datatransforms': {'train': ['PointsToTensor', 'PointCloudScaling', 'PointCloudCenterAndNormalize',
                                               'PointCloudJitter', 'ChromaticDropGPU'], 'val': list(val)},
                  'model': {'NAME': 'BasePartSeg', 'encoder_args': {'NAME': 'PointNextEncoder', 'in_channels': 7},
                            'decoder_args': {'NAME': 'PointNextPartDecoder', 'cls_map': 'curvenet'},
                            'cls_args': {'NAME': 'SegHead', 'num_classes': 50}}})


def test_a_classification_yaml_trains_on_the_artifact_with_its_classes(tmp_path, caplog):
    path = _artifact(tmp_path / 'a.safetensors')
    cfg = _classification_yaml(path)
    with caplog.at_level('INFO'):
        fitted = adapt_to_artifact(cfg, 'classification')
    common = fitted.dataset.common
    assert common.NAME == 'DistilledDataset' and common.real_dataset == 'ModelNet40Ply2048'
    assert fitted.num_classes == fitted.model.cls_args.num_classes == 5
    assert cfg.num_classes == 40 and cfg.dataset.common.NAME == 'ModelNet40Ply2048'       # not modified in place
    assert 'num_classes 40 -> 5: the classes of the artifact (mine)' in caplog.text
    assert 'model.cls_args.num_classes 40 -> 5' in caplog.text


def test_no_artifact_no_change():
    cfg = _classification_yaml(None)
    assert artifact_path(cfg) is None and adapt_to_artifact(cfg, 'classification') is cfg


def test_a_part_artifact_fills_pointnexts_shapenetpart_yaml(tmp_path, caplog):
    path = _artifact(tmp_path / 'p.safetensors', task='segmentation', num_classes=3)
    with caplog.at_level('INFO'):
        fitted = adapt_to_artifact(_part_yaml(path), 'segmentation')
    assert (fitted.num_classes, fitted.model.cls_args.num_classes, fitted.shape_classes) == (7, 7, 3)
    assert fitted.feature_keys == 'pos,heights' and fitted.model.encoder_args.in_channels == 4
    assert 'ChromaticDropGPU' not in fitted.datatransforms.train and len(fitted.datatransforms.train) == 4
    assert 'dropped ChromaticDropGPU' in caplog.text and 'feature_keys pos,x,heights -> pos,heights' in caplog.text
    # without heights at evaluation time, only xyz is fed
    fitted = adapt_to_artifact(_part_yaml(path, val=('PointsToTensor',)), 'segmentation')
    assert fitted.feature_keys == 'pos' and fitted.model.encoder_args.in_channels == 3
    assert set(FEATURE_TRANSFORMS) >= {'ChromaticDropGPU', 'ChromaticPerDropGPU', 'ChromaticNormalize'}


def test_a_set_of_the_other_task_is_a_clear_error(tmp_path):
    part = _artifact(tmp_path / 'p.safetensors', task='segmentation', num_classes=3)
    with pytest.raises(ValueError, match='is a part-segmentation set but the config trains classification.*'
                                         'Use a part-segmentation YAML'):
        adapt_to_artifact(_classification_yaml(part), 'classification')
    points = _artifact(tmp_path / 'a.safetensors')
    with pytest.raises(ValueError, match='is a classification set but the config trains segmentation'):
        adapt_to_artifact(_part_yaml(points), 'segmentation')
