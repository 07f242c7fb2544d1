"""A training YAML fitted to the distilled set it trains on: what the artifact's metadata answers, the YAML need not.

PointNeXt's YAMLs are written for their real datasets (40 ModelNet40 classes; 50 ShapeNet-part labels in 16
categories with normals as features). Given `artifact=`, `adapt_to_artifact` trains on `DistilledDataset` (val/test
from the YAML's own dataset), sizes the classes and heads from the artifact, and for a part set keeps only the
feature keys and train transforms the set can feed, each change in one logged line.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Mapping

from openpoints.utils import EasyConfig

from ..data.artifact import load_artifact

logger = logging.getLogger(__name__)

#: openpoints transforms that read the point features `x` (colours; normals in ShapeNetPartNormal) without
#: checking they exist (read from openpoints 0.1.2's transforms: `data['x']` in __call__, unguarded). A distilled
#: set has xyz only: DistilledDataset builds `x` from `pos` after the transform.
FEATURE_TRANSFORMS = ('ChromaticDropGPU', 'ChromaticPerDropGPU', 'ChromaticNormalize', 'ChromaticAutoContrast',
                      'ChromaticTranslation', 'ChromaticJitter', 'HueSaturationTranslation', 'RandomDropFeature',
                      'NumpyChromaticNormalize')
#: transforms that add `heights` (the gravity-axis coordinate, a feature key of PointNeXt's part YAMLs).
HEIGHT_TRANSFORMS = ('PointCloudCenterAndNormalize',)
FEATURE_CHANNELS = {'pos': 3, 'heights': 1}   # the feature keys a distilled set can provide, and their widths


def artifact_path(cfg: Mapping[str, Any]) -> str | None:
    """The artifact a trainer config trains on: `artifact`, else DistilledDataset's `dataset.train.distilled_path`."""
    if cfg.get('artifact'):
        return str(cfg['artifact'])
    dataset = cfg.get('dataset') or {}
    if (dataset.get('common') or {}).get('NAME') == 'DistilledDataset':
        path = (dataset.get('train') or {}).get('distilled_path')
        return str(path) if path else None
    return None


def adapt_to_artifact(cfg: EasyConfig, task: str) -> EasyConfig:
    """`cfg` (a trainer config with defaults) fitted to its artifact; unchanged without one. Not modified in place.

    * `artifact=` on a YAML whose dataset is not DistilledDataset: the train split becomes DistilledDataset on
      the artifact and the YAML's dataset (its NAME and keys) gives val/test;
    * `num_classes` and the head (`model.num_classes`, `model.cls_args.num_classes`) become the artifact's class
      count (classification) or part-label count (segmentation), and `shape_classes` its category count;
    * segmentation: `feature_keys` keeps the keys a distilled set provides (`pos`; `heights` when a
      PointCloudCenterAndNormalize transform adds them to the train and val items; never `x`, which would be
      normals in the real data and xyz in the set) and `model.encoder_args.in_channels` follows; train transforms
      that read `x` are dropped.

    Args:
        cfg: the config, with `TRAIN_DEFAULTS` filled in.
        task: 'classification' or 'segmentation': the trainer it is for.

    Raises:
        ValueError: a part-segmentation artifact for a classifier, or the reverse.
    """
    path = artifact_path(cfg)
    if path is None:
        return cfg
    cfg = copy.deepcopy(cfg)
    _wrap_dataset(cfg)
    _, metadata = load_artifact(path)
    is_segmentation = metadata.get('task') == 'segmentation'
    if is_segmentation != (task == 'segmentation'):
        kind = 'a part-segmentation' if is_segmentation else 'a classification'
        raise ValueError(f'artifact {path} is {kind} set but the config trains {task} (model '
                         f'{cfg.model.get("NAME")}, dataset {cfg.dataset.common.get("real_dataset")}). Use a '
                         f'{"part-segmentation" if is_segmentation else "classification"} YAML for it.')
    if is_segmentation:
        segmentation = metadata['segmentation']
        _set(cfg, 'num_classes', int(segmentation['num_parts']), 'the part labels of the artifact')
        _set_head(cfg, int(segmentation['num_parts']), 'part labels')
        _set(cfg, 'shape_classes', len(segmentation['cls2parts']), 'the categories of the artifact')
        _fit_features(cfg)
        _drop_feature_transforms(cfg)
    else:
        classes = int(metadata['dataset']['num_classes'])
        _set(cfg, 'num_classes', classes, f'the classes of the artifact ({metadata["dataset"]["name"]})')
        _set_head(cfg, classes, 'classes')
    return cfg


def _wrap_dataset(cfg: EasyConfig) -> None:
    common = cfg.dataset.common
    if not cfg.get('artifact') or common.get('NAME') == 'DistilledDataset':
        return
    real = common.get('NAME')
    common.NAME, common.real_dataset = 'DistilledDataset', real
    logger.info('artifact=%s: the train split is DistilledDataset on it; val/test are the YAML\'s %s',
                cfg.artifact, real)


def _set(cfg: EasyConfig, key: str, value: int, why: str) -> None:
    if cfg.get(key) != value:
        logger.info('%s %s -> %s: %s', key, cfg.get(key), value, why)
        cfg[key] = value


def _set_head(cfg: EasyConfig, value: int, what: str) -> None:
    model = cfg.model
    for owner, where in ((model, 'model'), (model.get('cls_args'), 'model.cls_args')):
        if isinstance(owner, Mapping) and 'num_classes' in owner and owner['num_classes'] != value:
            logger.info('%s.num_classes %s -> %s: the artifact\'s %s', where, owner['num_classes'], value, what)
            owner['num_classes'] = value


def _transform_names(cfg: EasyConfig, split: str) -> list[str]:
    transforms = (cfg.get('datatransforms') or {}).get(split)
    return [str(t) for t in transforms] if isinstance(transforms, (list, tuple)) else []


def _fit_features(cfg: EasyConfig) -> None:
    requested = [k.strip() for k in str(cfg.get('feature_keys') or 'pos').split(',') if k.strip()]
    heights = all(any(t in HEIGHT_TRANSFORMS for t in _transform_names(cfg, split)) for split in ('train', 'val'))
    available = {'pos'} | ({'heights'} if heights else set())
    kept = [k for k in requested if k in available] or ['pos']
    if kept == requested:
        return
    dropped = [k for k in requested if k not in kept]
    channels = sum(FEATURE_CHANNELS[k] for k in kept)
    logger.info('feature_keys %s -> %s: a distilled set has no %s (xyz only%s)', ','.join(requested), ','.join(kept),
                ', '.join(dropped), '; heights come from PointCloudCenterAndNormalize' if heights else '')
    cfg.feature_keys = ','.join(kept)
    model = cfg.model
    for owner, where in ((model.get('encoder_args'), 'model.encoder_args'), (model, 'model')):
        if isinstance(owner, Mapping) and owner.get('in_channels') is not None and owner['in_channels'] != channels:
            logger.info('%s.in_channels %s -> %s: the channels of feature_keys %s', where, owner['in_channels'],
                        channels, cfg.feature_keys)
            owner['in_channels'] = channels


def _drop_feature_transforms(cfg: EasyConfig) -> None:
    transforms = (cfg.get('datatransforms') or {}).get('train')
    if not isinstance(transforms, (list, tuple)):
        return
    kept = [t for t in transforms if str(t) not in FEATURE_TRANSFORMS]
    for name in transforms:
        if str(name) in FEATURE_TRANSFORMS:
            logger.info('datatransforms.train: dropped %s: it changes the point features x, which a distilled set '
                        'does not have', name)
    if len(kept) != len(transforms):
        cfg.datatransforms.train = kept


__all__ = ['adapt_to_artifact', 'artifact_path', 'FEATURE_TRANSFORMS']
