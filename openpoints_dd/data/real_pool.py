"""The real training set of any openpoints classification dataset as class-sorted tensors, built once."""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from ..utils.geometry import normalize_to_unit_sphere, subsample_points
from .rotation import DatasetRotation

logger = logging.getLogger(__name__)


class RealPool:
    """Real clouds sorted by class, in memory, with per-class random batches.

    Args:
        pos: (M, N, 3) float32 clouds.
        labels: (M,) int64 class ids in [0, K).
        class_names: K names.
        name: dataset name recorded in artifacts.
        rotation: how `pos` was rotated (`DatasetRotation.to_dict()`), recorded in artifacts. Default
            None = {'mode': 'none'}.
    """

    def __init__(self, pos: Tensor, labels: Tensor, class_names: list[str], name: str,
                 rotation: Mapping[str, Any] | None = None):
        order = torch.argsort(labels, stable=True)
        self.pos, self.labels = pos[order].float().contiguous(), labels[order].long()
        self.class_names, self.name = list(class_names), name
        self.rotation = dict(rotation or {'mode': 'none'})
        self.num_classes = len(self.class_names)
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        if (counts == 0).any():
            missing = [self.class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
            raise ValueError(f'real dataset {name} has no training clouds for classes {missing} ({len(missing)} of '
                             f'the {self.num_classes} classes its loader lists). If your data has its own class '
                             f'list (e.g. a shape_names.txt with fewer classes than the 40 openpoints\' '
                             f'ModelNet40Ply2048 hard-codes), read it with dataset.common.NAME: '
                             f'PointCloudFolderDataset, which takes the class names and count from the data; '
                             f'otherwise add training clouds of these classes.')
        self.counts = counts
        self.offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])

    @classmethod
    def from_dataset_cfg(cls, dataset_cfg: Mapping[str, Any], split: str = 'train',
                         num_points: int | None = None) -> 'RealPool':
        """Build from an openpoints dataset cfg (`common` + `<split>` sections), without transforms.

        A `rotation: {mode: so3|z|none, seed}` key (in `<split>`, else in `common`) rotates cloud i of the
        dataset by its `DatasetRotation` matrix before sorting (the rotated protocol).
        """
        from openpoints.dataset.build import DATASETS
        common = dict(dataset_cfg['common'])
        split_cfg = dict(dataset_cfg.get(split) or {})
        common_rotation = common.pop('rotation', None)   # never passed on: real datasets do not take it
        rotation = DatasetRotation.from_cfg(split_cfg.pop('rotation', common_rotation))
        split_cfg.update(split=split_cfg.get('split', split), transform=None)
        if num_points is not None:
            split_cfg['num_points'] = num_points
        name = common.get('NAME')
        data_dir = common.get('data_dir')
        if data_dir is not None and not os.path.isdir(os.path.expanduser(str(data_dir))):
            raise FileNotFoundError(f'dataset {name}: dataset.common.data_dir {data_dir!r} does not exist (resolved '
                                    f'to {os.path.abspath(os.path.expanduser(str(data_dir)))}). Point dataset.common.'
                                    f'data_dir at the dataset folder (e.g. ../shared/data/ModelNet40Ply2048).')
        dataset = DATASETS.build(common, default_args=split_cfg)
        # a dataset that knows its own name (PointCloudFolderDataset: the `name` key or the folder's name) is
        # recorded under it; openpoints' datasets under their NAME
        own_name = getattr(dataset, 'name', None)
        if isinstance(own_name, str):
            name = own_name
        pos, labels = _dataset_arrays(dataset)
        if num_points is not None:
            pos = pos[:, :num_points]
        pos = rotation.apply(pos, split_cfg['split'], np.arange(len(pos)))
        class_names = list(getattr(dataset, 'classes', None) or [str(i) for i in range(int(labels.max()) + 1)])
        logger.info('real pool %s/%s: %d clouds x %d points, %d classes, rotation %s', name, split, len(labels),
                    pos.shape[1], len(class_names), rotation.to_dict())
        return cls(torch.from_numpy(np.ascontiguousarray(pos, dtype=np.float32)), torch.from_numpy(labels),
                   class_names, name, rotation=rotation.to_dict())

    def indices_of_class(self, label: int) -> Tensor:
        start = int(self.offsets[label])
        return torch.arange(start, start + int(self.counts[label]))

    def sample(self, label: int, batch_size: int, num_points: int,
               generator: torch.Generator | None = None) -> Tensor:
        """`batch_size` clouds of one class without replacement (all if fewer), subsampled and renormalised.

        Returns:
            (B, num_points, 3) float32.
        """
        count = int(self.counts[label])
        pick = torch.randperm(count, generator=generator)[:batch_size] + int(self.offsets[label])
        return subsample_points(self.pos[pick], num_points, generator=generator)

    def random_per_class(self, per_class: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """`per_class` random clouds of every class, class-major: ((K·per_class, N, 3), their pool indices)."""
        picks = []
        for label in range(self.num_classes):
            count = int(self.counts[label])
            if count < per_class:
                raise ValueError(f'class {self.class_names[label]} has {count} clouds, fewer than {per_class}')
            picks.append(torch.randperm(count, generator=generator)[:per_class] + int(self.offsets[label]))
        index = torch.cat(picks)
        return normalize_to_unit_sphere(self.pos[index]), index


#: Random baseline: selection i draws its clouds with seed RANDOM_SEED_OFFSET + i (every table, every task)
RANDOM_SEED_OFFSET = 10_000


def random_selection_generator(selection: int) -> torch.Generator:
    """The generator of the Random baseline's selection `selection` (`random_per_class` of a real or part pool)."""
    return torch.Generator().manual_seed(RANDOM_SEED_OFFSET + int(selection))


def dataset_labels(dataset) -> np.ndarray:
    """(M,) int64 class labels of an openpoints classification dataset, without loading its clouds when it keeps
    them as an array (our EmbeddedShapes and DistilledDataset's val/test, openpoints' ModelNet40Ply2048)."""
    real = getattr(dataset, 'real', None)                                # DistilledDataset's val/test split
    if real is not None:
        return dataset_labels(real)
    for name in ('labels', 'label'):                                     # EmbeddedShapes / ModelNet40Ply2048
        if hasattr(dataset, name):
            return np.asarray(getattr(dataset, name)).reshape(-1).astype(np.int64)
    items = (dataset[i] for i in range(len(dataset)))                   # 'cls': part datasets' shape category
    return np.array([int(np.asarray(item.get('cls', item['y'])).reshape(-1)[0]) for item in items], dtype=np.int64)


def _dataset_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    """(M, N, 3) float32 points and (M,) int64 labels of an openpoints dataset, fast path when possible."""
    if hasattr(dataset, 'points') and hasattr(dataset, 'labels'):       # our EmbeddedShapes
        return np.asarray(dataset.points)[..., :3], dataset_labels(dataset)
    if hasattr(dataset, 'data') and hasattr(dataset, 'label'):          # ModelNet40Ply2048
        num_points = getattr(dataset, 'num_points', None)
        return np.asarray(dataset.data)[:, :num_points, :3], dataset_labels(dataset)
    items = [dataset[i] for i in range(len(dataset))]                    # generic: any openpoints dataset
    pos = np.stack([np.asarray(item['pos'])[:, :3] for item in items])
    labels = np.array([int(np.asarray(item['y']).reshape(-1)[0]) for item in items], dtype=np.int64)
    return pos, labels
