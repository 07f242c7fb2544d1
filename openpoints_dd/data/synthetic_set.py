"""A distilled set in memory: the bridge between the engine, artifacts and DistilledDataset.

Artifacts hold either a fixed point set (kind 'points': `pos` (S, N, 3), `y` (S,)) or a synthesizer's
weights (kind 'generator': `synthesizer.<param>` tensors), from which any number of points can be drawn.
Clouds are unit-sphere normalised and stored before any rotator; the rotator is recorded in the
metadata (its learned weights as `rotator.<param>` tensors) and applied by whoever trains on the set:
`SyntheticSet.build_rotator()` rebuilds it.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..registry import build_rotator, build_synthesizer
from ..synthesizers import ExplicitPoints, Synthesizer
from ..utils.geometry import normalize_to_unit_sphere
from .artifact import ArtifactError, load_artifact, save_artifact

_PREFIX = 'synthesizer.'
ROTATOR_PREFIX = 'rotator.'


def synthesizer_tensors(synthesizer: Synthesizer, num_points: int, seed: int = 0) -> tuple[dict[str, Tensor], str]:
    """The tensors an artifact stores for a synthesizer, and its kind.

    Explicit point sets are stored as points; every other synthesizer as its weights.
    """
    if isinstance(synthesizer, ExplicitPoints):
        with torch.no_grad():
            slots = torch.arange(synthesizer.num_slots, device=synthesizer.points.device)
            generator = torch.Generator().manual_seed(seed)
            pos = normalize_to_unit_sphere(synthesizer.synthesize(slots, min(num_points, synthesizer.num_points), generator))
        return {'pos': pos.cpu().contiguous(), 'y': synthesizer.labels.cpu().clone()}, 'points'
    return {_PREFIX + k: v.detach().cpu().contiguous() for k, v in synthesizer.state_dict().items()}, 'generator'


class SyntheticSet:
    """A distilled set read from an artifact.

    Args:
        path: the `.safetensors` artifact.
        expect_dataset, expect_num_classes: checked against the metadata when given.

    Raises:
        ArtifactError: the file is missing, corrupt, foreign, of another version or for another dataset.
    """

    def __init__(self, path: str | os.PathLike, *, expect_dataset: str | None = None,
                 expect_num_classes: int | None = None):
        self.path = Path(path)
        tensors, self.metadata = load_artifact(path, expect_dataset=expect_dataset, expect_num_classes=expect_num_classes)
        self.kind = self.metadata.get('kind')
        self.num_classes = int(self.metadata['dataset']['num_classes'])
        self.class_names = list(self.metadata['dataset']['class_names'])
        self.cpc = int(self.metadata['cpc'])
        self.num_points = int(self.metadata['num_points'])
        self.synthesizer: Synthesizer | None = None
        self.rotator_state = {k[len(ROTATOR_PREFIX):]: v for k, v in tensors.items() if k.startswith(ROTATOR_PREFIX)}
        if self.kind == 'points':
            if 'pos' not in tensors or 'y' not in tensors:
                raise ArtifactError(f'{path}: a points artifact needs `pos` and `y` tensors, found {sorted(tensors)}')
            self.pos, self.labels = tensors['pos'].float(), tensors['y'].long()
            self.parts = tensors['parts'].long() if 'parts' in tensors else None
            if self.is_segmentation and (self.parts is None or self.parts.shape != self.pos.shape[:2]):
                raise ArtifactError(f'{path}: a segmentation points artifact needs `parts` (S, N) part ids beside '
                                    f'`pos` (S, N, 3), found {sorted(tensors)}')
        elif self.kind == 'generator':
            self.synthesizer = build_synthesizer(self.metadata['synthesizer'], num_classes=self.num_classes, cpc=self.cpc)
            state = {k[len(_PREFIX):]: v for k, v in tensors.items() if k.startswith(_PREFIX)}
            try:
                self.synthesizer.load_state_dict(state)
            except RuntimeError as e:
                raise ArtifactError(f'{path}: its weights do not fit its own synthesizer config: {e}') from e
            self.synthesizer.eval()
            self.labels = self.synthesizer.cloud_labels.clone()
        else:
            raise ArtifactError(f"{path}: unknown artifact kind {self.kind!r} (expected 'points' or 'generator')")

    def build_rotator(self) -> torch.nn.Module:
        """The canonicaliser the set was distilled with (learned weights included), in eval mode."""
        rotator = build_rotator(self.metadata.get('rotator'))
        try:
            rotator.load_state_dict(self.rotator_state)
        except RuntimeError as e:
            raise ArtifactError(f'{self.path}: its rotator weights do not fit its rotator config: {e}') from e
        return rotator.eval()

    @property
    def is_generator(self) -> bool:
        return self.synthesizer is not None

    @property
    def is_segmentation(self) -> bool:
        """Written by the part-segmentation engine: clouds carry per-point part ids (`sample_with_parts`)."""
        return self.metadata.get('task') == 'segmentation'

    @property
    def cls2parts(self) -> list[list[int]]:
        """Segmentation sets: the global part ids of every category."""
        return [list(ids) for ids in self._segmentation()['cls2parts']]

    @property
    def num_parts(self) -> int:
        return int(self._segmentation()['num_parts'])

    def _segmentation(self) -> dict:
        if not self.is_segmentation or 'segmentation' not in self.metadata:
            raise ArtifactError(f'{self.path} is not a part-segmentation set (metadata task '
                                f'{self.metadata.get("task", "classification")!r}); train a classification model on it')
        return self.metadata['segmentation']

    def sample_with_parts(self, num_points: int | None = None, generator: torch.Generator | None = None,
                          balance: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        """Segmentation sets: all clouds, unit-sphere normalised, with their part ids and categories:
        ((S, n, 3), (S, n), (S,)). A generator draws fresh noise (its interval decides the part); `balance`
        < 1 gives small parts more points (`PartPointGenerator.synthesize_with_parts`; generators only)."""
        self._segmentation()
        num_points = num_points or self.num_points
        if self.synthesizer is not None:
            with torch.no_grad():
                slots = torch.arange(len(self.labels))
                pos, parts = self.synthesizer.synthesize_with_parts(slots, num_points, generator, balance)
            return normalize_to_unit_sphere(pos), parts, self.labels
        if num_points > self.pos.shape[1]:
            raise ValueError(f'{self.path} stores {self.pos.shape[1]} points per cloud; {num_points} were requested')
        keep = torch.randperm(self.pos.shape[1], generator=generator)[:num_points]
        return normalize_to_unit_sphere(self.pos[:, keep]), self.parts[:, keep], self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, num_points: int | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """All clouds, unit-sphere normalised: ((S, num_points, 3), (S,)).

        A generator draws fresh noise (seeded by `generator`); a point set returns its clouds, cut to
        `num_points` by a random subset when fewer are asked for.
        """
        num_points = num_points or self.num_points
        if self.synthesizer is not None:
            with torch.no_grad():
                slots = torch.arange(self.synthesizer.num_slots)
                return normalize_to_unit_sphere(self.synthesizer.synthesize(slots, num_points, generator)), self.labels
        if num_points > self.pos.shape[1]:
            raise ValueError(f'{self.path} stores {self.pos.shape[1]} points per cloud; {num_points} were requested')
        if num_points == self.pos.shape[1]:
            return self.pos, self.labels
        keep = torch.randperm(self.pos.shape[1], generator=generator)[:num_points]
        return normalize_to_unit_sphere(self.pos[:, keep]), self.labels

    def materialize(self, out_path: str | os.PathLike, num_points: int | None = None, seed: int = 0) -> Path:
        """Write a fixed point-set artifact drawn from this set (e.g. a generator's clouds at 1024 points)."""
        pos, labels = self.sample(num_points, torch.Generator().manual_seed(seed))
        metadata = {**self.metadata, 'kind': 'points', 'num_points': int(pos.shape[1]),
                    'materialized_from': str(self.path), 'materialize_seed': seed}
        rotator = {ROTATOR_PREFIX + k: v for k, v in self.rotator_state.items()}
        return save_artifact(out_path, {'pos': pos.contiguous(), 'y': labels.contiguous(), **rotator}, metadata)
