"""`RotatedDataset`: any openpoints classification dataset with one fixed random rotation per cloud.

The rotated protocol for plain openpoints training (tools/train.py): change `dataset.common.NAME` to
`RotatedDataset`, name the real dataset in `real_dataset` and add a `rotation` section:

    dataset:
      common: {NAME: RotatedDataset, real_dataset: ModelNet40Ply2048, data_dir: ..., rotation: {mode: so3, seed: 0}}
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from openpoints.dataset.build import DATASETS

from .openpoints_item import finish_item
from .rotation import DatasetRotation

logger = logging.getLogger(__name__)


@DATASETS.register_module()
class RotatedDataset(Dataset):
    """Wraps `real_dataset`: item i is the real item i rotated by `DatasetRotation` sample i, then transformed.

    The real dataset is built without a transform, so the rotation happens before any augmentation or
    canonicalisation (as if the files themselves were rotated); then `transform` runs and `x` is rebuilt
    from `pos` (and `heights`) as openpoints' ModelNet40Ply2048 does.

    Args:
        split: passed to the real dataset; also selects the rotation stream (val and test share one).
        transform: openpoints transform applied after the rotation.
        real_dataset: NAME of the wrapped openpoints dataset (e.g. ModelNet40Ply2048).
        rotation: `{mode: so3|z|none, seed: int}` (see `DatasetRotation`). Default None = no rotation.
        **kwargs: the real dataset's keys (data_dir, num_points, ...). Shared openpoints keys are passed on
            as they are, so a misspelt one fails in the real dataset's constructor.
    """

    def __init__(self, split: str = 'train', transform=None, real_dataset: str | None = None,
                 rotation: Mapping[str, Any] | None = None, **kwargs: Any):
        if not isinstance(real_dataset, str) or real_dataset not in DATASETS:
            raise ValueError(f'RotatedDataset needs `real_dataset`, the NAME of a registered openpoints dataset '
                             f'(e.g. ModelNet40Ply2048), in dataset.common; got {real_dataset!r}.')
        self.split, self.transform = split, transform
        self.rotation = DatasetRotation.from_cfg(rotation)
        self.real = DATASETS.build({'NAME': real_dataset, **kwargs}, default_args={'split': split, 'transform': None})
        self.rotations = self.rotation.matrices(split, range(len(self.real))).float().numpy()
        self.classes = list(getattr(self.real, 'classes', None) or [])
        logger.info('RotatedDataset %s/%s: %d clouds, rotation %s', real_dataset, split, len(self.real),
                    self.rotation.to_dict())

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.real.num_classes)

    def __len__(self) -> int:
        return len(self.real)

    def __getitem__(self, index: int) -> dict:
        data = dict(self.real[index])
        data.pop('x', None)
        pos = data['pos']
        if self.rotation.active:
            rotation = self.rotations[index]
            if torch.is_tensor(pos):
                rotated = pos[:, :3] @ torch.from_numpy(rotation).to(pos.device, pos.dtype)
                data['pos'] = torch.cat([rotated, pos[:, 3:]], dim=1)
            else:
                pos = np.array(pos, copy=True)
                pos[:, :3] = pos[:, :3] @ rotation.astype(pos.dtype)
                data['pos'] = pos
        return finish_item(data, self.transform)
