"""The real part-segmentation set as category-sorted tensors with per-point part labels, built once.

Sources: our `EmbeddedShapesPart` (arrays in memory) or openpoints' `ShapeNetPartNormal` (the standard
`shapenetcore_partanno_segmentation_benchmark_v0_normal` layout). For the latter, openpoints gives the file
list, category ids and part ids, and the `.txt` files are read here: its `presample` path needs CUDA and
writes pickles, and its `__getitem__` draws points with numpy's global RNG.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from ..utils.geometry import normalize_to_unit_sphere
from .real_pool import RealPool

logger = logging.getLogger(__name__)


def part_table(cls2parts: Any, num_parts: int) -> Tensor:
    """(categories, num_parts) bool: row c marks the part ids of category c (`cls2parts[c]`)."""
    table = torch.zeros(len(cls2parts), num_parts, dtype=torch.bool)
    for category, ids in enumerate(cls2parts):
        table[category, list(ids)] = True
    return table


class PartPool:
    """Real clouds sorted by category, with global part ids per point and per-category batches.

    Args:
        pos: (M, N, 3) float clouds.
        parts: (M, N) int64 global part ids (category c owns the ids `cls2parts[c]`).
        labels: (M,) int64 category ids in [0, K).
        class_names: K category names.
        cls2parts: K lists of the global part ids of each category.
        name: dataset name recorded in artifacts.
        part_names: optional K lists of part names (default: the ids as strings).
    """

    def __init__(self, pos: Tensor, parts: Tensor, labels: Tensor, class_names: list[str],
                 cls2parts: list[list[int]], name: str, part_names: list[list[str]] | None = None):
        if pos.dim() != 3 or pos.shape[-1] != 3 or parts.shape != pos.shape[:2] or labels.shape != pos.shape[:1]:
            raise ValueError(f'PartPool needs pos (M, N, 3), parts (M, N) and labels (M,), got '
                             f'{tuple(pos.shape)}, {tuple(parts.shape)} and {tuple(labels.shape)}')
        if len(cls2parts) != len(class_names):
            raise ValueError(f'cls2parts has {len(cls2parts)} categories but class_names {len(class_names)}')
        order = torch.argsort(labels, stable=True)
        self.pos, self.parts = pos[order].float().contiguous(), parts[order].long().contiguous()
        self.labels = labels[order].long()
        self.class_names, self.name = list(class_names), name
        self.cls2parts = [[int(p) for p in ids] for ids in cls2parts]
        self.part_names = [list(n) for n in part_names] if part_names else [[str(p) for p in ids] for ids in self.cls2parts]
        self.num_classes = len(self.class_names)
        self.num_parts = max(max(ids) for ids in self.cls2parts) + 1
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        if (counts == 0).any():
            missing = [self.class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
            raise ValueError(f'part dataset {name} has no clouds for categories {missing}')
        self.counts = counts
        self.offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
        for c, ids in enumerate(self.cls2parts):
            stray = set(self.parts[self.labels == c].unique().tolist()) - set(ids)
            if stray:
                raise ValueError(f'category {self.class_names[c]} of {name} has points labelled {sorted(stray)}, '
                                 f'outside its parts {ids}; check the data or the category-to-part table')

    @classmethod
    def from_dataset_cfg(cls, dataset_cfg: Mapping[str, Any], split: str = 'train', num_points: int | None = None,
                         seed: int = 0) -> 'PartPool':
        """Build from an openpoints dataset cfg (`common` + `<split>` sections), without transforms.

        Clouds with more than `num_points` points keep a random subset (seeded by `seed`); clouds with fewer
        repeat random points, as openpoints' ShapeNetPartNormal does for training.
        """
        from openpoints.dataset.build import DATASETS
        common = dict(dataset_cfg['common'])
        split_cfg = dict(dataset_cfg.get(split) or {})
        split_cfg.update(split=split_cfg.get('split', split), transform=None)
        if num_points is not None:
            split_cfg['num_points'] = num_points
        name = common.get('NAME')
        if name == 'ShapeNetPartNormal':
            split_cfg['presample'] = False     # its presample path needs CUDA and writes pickles
        for key in ('data_root', 'data_dir'):
            folder = common.get(key)
            if folder is not None and not os.path.isdir(os.path.expanduser(str(folder))):
                raise FileNotFoundError(f'dataset {name}: {key} {folder!r} does not exist. Point dataset.common.{key} '
                                        f'at the shapenetcore_partanno_segmentation_benchmark_v0_normal folder.')
        dataset = DATASETS.build(common, default_args=split_cfg)
        rng = np.random.default_rng([seed, 0 if split_cfg['split'] == 'train' else 1])
        if hasattr(dataset, 'points') and hasattr(dataset, 'parts'):              # our EmbeddedShapesPart
            pos, parts = np.asarray(dataset.points)[..., :3], np.asarray(dataset.parts)
            labels = np.asarray(dataset.labels).reshape(-1)
            class_names, part_names = list(dataset.classes), dataset.part_names
        elif hasattr(dataset, 'datapath'):                                         # openpoints' ShapeNetPartNormal
            pos, parts, labels = _read_shapenetpart(dataset, int(split_cfg.get('num_points') or 2048), rng)
            class_names, part_names = list(dataset.classes_original), None   # ids as in synsetoffset2category.txt
        else:
            raise TypeError(f'dataset {name} is not a part-segmentation dataset this pool can read (needs '
                            f'EmbeddedShapesPart or ShapeNetPartNormal); set dataset.common.NAME to one of them')
        if num_points is not None and pos.shape[1] > num_points:
            keep = rng.permutation(pos.shape[1])[:num_points]
            pos, parts = pos[:, keep], parts[:, keep]
        category_ids = sorted(set(labels.tolist()))
        cls2parts = [list(dataset.cls2parts[c]) for c in range(len(class_names))]
        if len(category_ids) and max(category_ids) >= len(class_names):
            raise ValueError(f'dataset {name}: category id {max(category_ids)} but only {len(class_names)} names')
        logger.info('part pool %s/%s: %d clouds x %d points, %d categories, %d parts', name, split, len(labels),
                    pos.shape[1], len(class_names), sum(len(p) for p in cls2parts))
        return cls(torch.from_numpy(np.ascontiguousarray(pos, dtype=np.float32)),
                   torch.from_numpy(np.ascontiguousarray(parts, dtype=np.int64)),
                   torch.from_numpy(np.asarray(labels, dtype=np.int64)), class_names, cls2parts, str(name), part_names)

    def part_proportions(self, cpc: int | None = None) -> list[list[float]]:
        """Per category, the fraction of its training points in each of its parts (sums to 1).

        With `cpc`: one list per slot (category-major) that also reproduces how often each part is present.
        Slot j of category c shows part p iff j < floor(cpc·r_p + 1/2), r_p the fraction of the category's
        clouds that show p (at cpc 1: the parts most clouds show; always at least the most frequent part), and
        its proportions are those of the clouds that show exactly its parts (of all the category's clouds,
        renormalised, when none does). A part shown by few clouds then gets 0 in most slots instead of a share
        of every synthetic cloud, which would teach a segmenter to find it on every shape.
        """
        if cpc is None:
            result = []
            for c, ids in enumerate(self.cls2parts):
                parts = self.parts[self.labels == c]
                counts = torch.stack([(parts == p).sum() for p in ids]).double()
                result.append((counts / counts.sum()).tolist())
            return result
        result = []
        for c, shown in enumerate(self._shown_per_cloud()):
            rate = shown.double().mean(0)                                                   # (P,)
            slots_with = torch.floor(cpc * rate + 0.5).long()
            slots_with[rate.argmax()] = max(int(slots_with[rate.argmax()]), cpc)
            parts = self.parts[self.labels == c]
            for j in range(cpc):
                mask = slots_with > j
                same = (shown == mask).all(1)
                chosen = parts[same] if same.any() else parts
                counts = torch.stack([(chosen == p).sum() for p in self.cls2parts[c]]).double() * mask
                result.append((counts / counts.sum()).tolist())
        return result

    def _shown_per_cloud(self) -> list[Tensor]:
        """Per category, (clouds, P_c) bool: which of its parts each of its clouds shows."""
        return [torch.stack([(self.parts[self.labels == c] == p).any(1) for p in ids], 1)
                for c, ids in enumerate(self.cls2parts)]

    def select_by_parts(self, part_proportions: list[list[float]], cpc: int,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """For every slot (category-major, `cpc` per category), a random cloud of its category that shows exactly
        the slot's parts (those with a proportion > 0), else one that differs in the fewest parts; no cloud twice
        in a category. Returns (pos normalised, pool indices). The clouds a part-by-part fit can reproduce:
        every noise interval needs its part in the target cloud, and a part the slot lacks is better absent."""
        per_slot = len(part_proportions) == self.num_classes * cpc
        picks = []
        for c, shown in enumerate(self._shown_per_cloud()):
            start, count = int(self.offsets[c]), int(self.counts[c])
            if count < cpc:
                raise ValueError(f'category {self.class_names[c]} has {count} clouds, fewer than {cpc}')
            used: set[int] = set()
            for j in range(cpc):
                q = torch.tensor(part_proportions[c * cpc + j] if per_slot else part_proportions[c])
                mismatch = (shown != (q > 0)).sum(1)                                    # (clouds,)
                order = torch.randperm(count, generator=generator)
                ranked = order[torch.argsort(mismatch[order], stable=True)].tolist()   # random among equals
                pick = next(i for i in ranked if i not in used)
                used.add(pick)
                picks.append(pick + start)
        index = torch.tensor(picks, dtype=torch.long)
        return normalize_to_unit_sphere(self.pos[index]), index

    def sample(self, label: int, batch_size: int, num_points: int,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """`batch_size` clouds of one category without replacement (all if fewer), `num_points` random points
        each (one index draw for the batch), unit-sphere normalised: ((B, n, 3), (B, n) part ids)."""
        count, total = int(self.counts[label]), self.pos.shape[1]
        if not 1 <= num_points <= total:
            raise ValueError(f'num_points must be in [1, {total}] (the pool holds {total} points per cloud), '
                             f'got {num_points}')
        pick = torch.randperm(count, generator=generator)[:batch_size] + int(self.offsets[label])
        index = torch.randperm(total, generator=generator)[:num_points]
        return normalize_to_unit_sphere(self.pos[pick][:, index]), self.parts[pick][:, index]

    # `per_class` random clouds of every category, category-major: (pos normalised, their pool indices);
    # `parts[index]` and `labels[index]` give their labels. The same sorted layout as RealPool's.
    random_per_class = RealPool.random_per_class

    def complete_per_class(self, per_class: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """`per_class` random clouds of every category that show every part of it (the most complete ones when
        too few do): `select_by_parts` for slots that show every part."""
        return self.select_by_parts([[1.0] * len(ids) for ids in self.cls2parts], per_class, generator)

def _read_shapenetpart(dataset, num_points: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Every shape of a ShapeNetPartNormal split: rows `x y z nx ny nz part`, `num_points` points each."""
    pos, parts, labels = [], [], []
    for category, path in dataset.datapath:
        data = np.loadtxt(path, dtype=np.float32, ndmin=2)
        if data.shape[1] < 7:
            raise ValueError(f'{path}: expected rows of x y z nx ny nz part (7 columns), got {data.shape[1]}')
        choice = rng.choice(len(data), num_points, replace=len(data) < num_points)
        pos.append(data[choice, :3])
        parts.append(data[choice, -1].astype(np.int64))
        labels.append(dataset.classes[category])
    if not pos:
        raise FileNotFoundError(f'ShapeNetPartNormal {dataset.split}: no shapes under {dataset.root}; check '
                                f'train_test_split/shuffled_{dataset.split}_file_list.json and the category folders')
    return np.stack(pos), np.stack(parts), np.asarray(labels, dtype=np.int64)
