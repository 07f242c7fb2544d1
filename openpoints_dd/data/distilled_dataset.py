"""`DistilledDataset`: a distilled set as a regular openpoints dataset (registered in openpoints' DATASETS).

The training splits (`train`, and `trainval` as PointNeXt's YAMLs name it) come from an artifact; val/test
come from the real dataset named by `real_dataset`, built with the remaining `dataset.common` keys. Any other
split name is an error: nothing silently trains on real data. So any openpoints classification YAML trains on a
distilled set by changing `dataset.common.NAME` and adding `real_dataset` and `distilled_path`:

    dataset:
      common: {NAME: DistilledDataset, real_dataset: ModelNet40Ply2048, data_dir: ../shared/data/ModelNet40Ply2048}
      train: {distilled_path: runs/.../artifact.safetensors, repeat: 10}

A part-segmentation artifact (metadata `task: segmentation`) gives items in the format of openpoints'
ShapeNetPartNormal instead (`cls` the category, `y` per-point part ids), with val/test from a real part
dataset (EmbeddedShapesPart, ShapeNetPartNormal); `cls2parts` and `num_parts` come with either split.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from openpoints.dataset.build import DATASETS

from .openpoints_item import finish_item
from .synthetic_set import SyntheticSet

logger = logging.getLogger(__name__)

TRAIN_SPLITS = ('train', 'trainval')   # served from the artifact
EVAL_SPLITS = ('val', 'test')          # served by the real dataset


@DATASETS.register_module()
class DistilledDataset(Dataset):
    """A distilled train split with the real dataset's val/test splits.

    Args:
        split: 'train' or 'trainval' read the artifact; 'val' and 'test' are delegated to `real_dataset`.
        transform: openpoints transform applied to `{'pos', 'y'}` items, as real datasets do.
        distilled_path: the artifact (`.safetensors`) for the train split.
        real_dataset: NAME of the real openpoints dataset for val/test (e.g. ModelNet40Ply2048).
        num_points: points per cloud. A generator artifact draws any number; a point set must hold at least
            as many. Default 1024.
        repeat: the train split lists the set `repeat` times per epoch, so 40 clouds can fill batches
            (openpoints' train loader drops the last incomplete batch). Default 1.
        resample: for a generator artifact, fresh noise every epoch (True) or one fixed draw (False).
        seed: seed of the generator draws (epoch e uses seed + e). Default 0.
        part_balance: segmentation generator sets: 1 draws parts in the data's proportions, b < 1 gives part
            p a share of the points proportional to q_p^b (0: equal). Default 1.
        rotation: `{mode: so3|z|none, seed}` for the real val/test clouds (the rotated protocol, see
            `RotatedDataset`); the train split ignores it (synthetic clouds stay in the frame they were
            distilled in). Default None = no rotation.
        **kwargs: the real dataset's keys (data_dir, ...); passed to it for val/test, ignored for train.
    """

    def __init__(self, split: str = 'train', transform=None, distilled_path: str | None = None,
                 real_dataset: str | None = None, num_points: int = 1024, repeat: int = 1, resample: bool = True,
                 seed: int = 0, rotation: dict | None = None, part_balance: float = 1.0, **kwargs: Any):
        if split not in TRAIN_SPLITS + EVAL_SPLITS:
            raise ValueError(f'DistilledDataset: split {split!r} is neither a training split {TRAIN_SPLITS} (served '
                             f'from the artifact) nor an evaluation split {EVAL_SPLITS} (served by the real dataset). '
                             f'Set dataset.<section>.split to one of them.')
        self.split, self.transform, self.num_points = split, transform, int(num_points)
        self.real = None
        if split in EVAL_SPLITS:
            if real_dataset is None:
                raise ValueError('DistilledDataset: val/test splits need `real_dataset` (e.g. ModelNet40Ply2048) in '
                                 'dataset.common')
            kwargs.pop('distilled_path', None)
            if rotation is not None:
                kwargs = {'real_dataset': real_dataset, 'rotation': rotation, **kwargs}
                real_dataset = 'RotatedDataset'
            self.real = DATASETS.build({'NAME': real_dataset, **kwargs},
                                       default_args={'split': split, 'transform': transform, 'num_points': num_points})
            self.classes = list(self.real.classes)
            if hasattr(self.real, 'cls2parts'):
                self.cls2parts = [list(ids) for ids in self.real.cls2parts]
                self.num_parts = 1 + max(max(ids) for ids in self.cls2parts)
            return
        if distilled_path is None:
            raise ValueError('DistilledDataset: the train split needs `distilled_path` (dataset.train.distilled_path='
                             'runs/<run>/artifact.safetensors)')
        if kwargs:
            logger.info('DistilledDataset(train) ignores the real dataset keys %s', sorted(kwargs))
        if int(repeat) < 1:
            raise ValueError(f'DistilledDataset: repeat must be >= 1, got {repeat}')
        self.synthetic = SyntheticSet(distilled_path)
        if not self.synthetic.is_generator and self.synthetic.num_points < self.num_points:
            raise ValueError(f'{distilled_path} stores {self.synthetic.num_points} points per cloud but num_points='
                             f'{self.num_points}; lower num_points or materialize the set at more points')
        self.repeat, self.resample, self.seed = int(repeat), bool(resample), int(seed)
        self.part_balance = float(part_balance)
        self.classes = self.synthetic.class_names
        self.segmentation = self.synthetic.is_segmentation
        if self.segmentation:
            self.cls2parts, self.num_parts = self.synthetic.cls2parts, self.synthetic.num_parts
        self._epoch, self._served = 0, 0
        self._draw()

    def _draw(self) -> None:
        draw = self.seed + (self._epoch if self.resample else 0)
        generator = torch.Generator().manual_seed(draw)
        if self.segmentation:
            pos, parts, labels = self.synthetic.sample_with_parts(self.num_points, generator, self.part_balance)
            self.parts = parts.numpy().astype(np.int64)
        else:
            pos, labels = self.synthetic.sample(self.num_points, generator)
        self.pos, self.labels = pos.numpy().astype(np.float32), labels.numpy().astype(np.int64)

    @property
    def epoch(self) -> int:
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        """Set by trainers at each epoch: a generator set draws fresh clouds."""
        if int(value) != self._epoch:
            self._epoch, self._served = int(value), 0
            if self.synthetic.is_generator and self.resample:
                self._draw()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.real) if self.real is not None else len(self.labels) * self.repeat

    def __getitem__(self, index: int) -> dict:
        if self.real is not None:
            return self.real[index]
        # a trainer that never sets `epoch` still gets fresh clouds once per pass (single-process loading)
        self._served += 1
        if self._served > len(self):
            self.epoch = self._epoch + 1
            self._served = 1
        i = index % len(self.labels)
        if self.segmentation:   # ShapeNetPartNormal's item: category in `cls`, part ids in `y`
            data = {'pos': self.pos[i].copy(), 'cls': self.labels[i:i + 1].copy(), 'y': self.parts[i].copy()}
        else:
            data = {'pos': self.pos[i].copy(), 'y': self.labels[i]}
        return finish_item(data, self.transform)
