"""The rotated-data protocol: one random rotation per real cloud, fixed by (seed, split, index).

Used by `RealPool` (distillation and the CPU evaluation protocol), `RotatedDataset` (any openpoints
trainer) and `DistilledDataset`'s real val/test splits, from a `rotation: {mode, seed}` key in the
dataset config. DD3D's rotated setting (spec §2.3) rotates train and test clouds at random; its script is
missing, so here the rotations are a documented function of the seed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..utils.geometry import UP_AXIS, random_rotation_matrices, random_z_rotation_matrices

__all__ = ['ROTATION_MODES', 'DatasetRotation']

ROTATION_MODES = ('none', 'so3', 'z')


@dataclass(frozen=True)
class DatasetRotation:
    """Per-sample rotations of a real dataset, reproducible and independent of order and batching.

    Sample `i` of split `s` is rotated by `R(seed, stream(s), i)`: a generator seeded from a SHA-256 of
    those three values draws one matrix, so a sample's rotation does not depend on which other samples
    are loaded, in what order, or by which worker. `stream` maps 'val' to 'test', because openpoints'
    classification datasets serve the same clouds for both (ModelNet40Ply2048: val = test); any other
    split name is its own stream. Clouds are row vectors rotated as `pos @ R`, about the origin.

    Args:
        mode: 'so3' uniform (Haar) rotations (`random_rotation_matrices`), 'z' rotations about the up
            axis `UP_AXIS` by an angle uniform in [0, 2π) (`random_z_rotation_matrices`; the common
            "z/z" protocol), or 'none'. Default 'none'.
        seed: the seed of the rotations. Default 0.
    """

    mode: Literal['none', 'so3', 'z'] = 'none'
    seed: int = 0

    def __post_init__(self):
        if self.mode not in ROTATION_MODES:
            raise ValueError(f'dataset rotation mode must be one of {list(ROTATION_MODES)}, got {self.mode!r} '
                             f'(from `rotation.mode` in the dataset config).')
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f'dataset rotation seed must be an int, got {self.seed!r} (from `rotation.seed`).')

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> 'DatasetRotation':
        """Build from the `rotation` section of a dataset config; None (no section) means no rotation.

        Raises:
            ValueError: if the section is not a mapping or has keys other than `mode` and `seed`.
        """
        if cfg is None:
            return cls()
        if isinstance(cfg, DatasetRotation):
            return cfg
        if not isinstance(cfg, Mapping):
            raise ValueError(f'the dataset `rotation` section must be a mapping like {{mode: so3, seed: 0}}, '
                             f'got {cfg!r}.')
        unknown = sorted(set(cfg) - {'mode', 'seed'})
        if unknown:
            raise ValueError(f'unknown keys {unknown} in the dataset `rotation` section; it takes mode '
                             f'({"/".join(ROTATION_MODES)}) and seed.')
        return cls(mode=cfg.get('mode', 'none'), seed=cfg.get('seed', 0))

    @property
    def active(self) -> bool:
        return self.mode != 'none'

    def to_dict(self) -> dict:
        """JSON form recorded in artifacts: `{'mode': 'none'}`, or `{'mode', 'seed'}` plus `'up_axis'` for 'z'."""
        if not self.active:
            return {'mode': 'none'}
        out: dict = {'mode': self.mode, 'seed': self.seed}
        if self.mode == 'z':
            out['up_axis'] = UP_AXIS
        return out

    def matrices(self, split: str, indices: Sequence[int] | Tensor | np.ndarray) -> Tensor:
        """The rotations of the given samples of `split`.

        Args:
            split: the dataset split ('train', 'val', 'test', ...).
            indices: M sample indices in the dataset's own order.

        Returns:
            (M, 3, 3) float64 rotations (det +1); identities for mode 'none'.
        """
        indices = [int(i) for i in (indices.tolist() if hasattr(indices, 'tolist') else indices)]
        if not self.active:
            return torch.eye(3, dtype=torch.float64).repeat(len(indices), 1, 1)
        stream = _stream(split)
        out = torch.empty(len(indices), 3, 3, dtype=torch.float64)
        for row, index in enumerate(indices):
            generator = torch.Generator().manual_seed(_sample_seed(self.seed, stream, index))
            if self.mode == 'so3':
                out[row] = random_rotation_matrices(1, generator, dtype=torch.float64)[0]
            else:
                out[row] = random_z_rotation_matrices(1, generator, axis=UP_AXIS, dtype=torch.float64)[0]
        return out

    def apply(self, pos: Tensor | np.ndarray, split: str, indices: Sequence[int] | Tensor | np.ndarray):
        """Rotate clouds by their samples' rotations, keeping the container type and dtype.

        Args:
            pos: (M, N, C) tensor or array with C >= 3; only the first three channels (xyz) are rotated.
            split: the dataset split of the samples.
            indices: the M samples' indices in the dataset.

        Returns:
            The rotated clouds, same type, shape and dtype as `pos` (a new object when mode != 'none').

        Raises:
            ValueError: if `pos` is not (M, N, C>=3) or the number of indices is not M.
        """
        if pos.ndim != 3 or pos.shape[-1] < 3 or len(indices) != pos.shape[0]:
            raise ValueError(f'DatasetRotation.apply expects pos (M, N, >=3) and M indices, got pos '
                             f'{tuple(pos.shape)} and {len(indices)} indices.')
        if not self.active:
            return pos
        rotations = self.matrices(split, indices)
        if isinstance(pos, np.ndarray):
            out = pos.copy()
            out[..., :3] = (pos[..., :3].astype(np.float64) @ rotations.numpy()).astype(pos.dtype)
            return out
        out = pos.clone()
        out[..., :3] = (pos[..., :3].double() @ rotations.to(pos.device)).to(pos.dtype)
        return out


def _stream(split: str) -> str:
    return 'test' if split == 'val' else str(split)


def _sample_seed(seed: int, stream: str, index: int) -> int:
    """A 63-bit seed from (seed, stream, index): stable across processes (unlike Python's salted hash)."""
    digest = hashlib.sha256(f'{seed}/{stream}/{index}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') & ((1 << 63) - 1)
