"""The interface of a labeler: the training loss of a batch, from its clouds, its logits and its hard labels."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor


@dataclass(frozen=True)
class DatasetIdentity:
    """The real dataset a set's classes come from: what a teacher must have been trained on.

    `cls2parts` (category -> its part ids) is set for a part-segmentation dataset and None for classification:
    a teacher labels a student only if both agree on it, so a part teacher never labels classes, nor the reverse.
    """
    name: str
    class_names: tuple[str, ...]
    cls2parts: tuple[tuple[int, ...], ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def task(self) -> str:
        return 'classification' if self.cls2parts is None else 'segmentation'

    @property
    def num_parts(self) -> int:
        """Part labels over all categories (segmentation identities only)."""
        return 1 + max(max(ids) for ids in self.cls2parts)

    def describe(self) -> str:
        parts = '' if self.cls2parts is None else f', {self.num_parts} part labels'
        return f'{self.name} ({self.num_classes} classes{parts})'

    @classmethod
    def of(cls, dataset: Any, default_name: str | None = None, segmentation: bool = False) -> DatasetIdentity:
        """An openpoints dataset's identity, named as `RealPool` names it: its own `name` if it has one (our
        datasets), else `default_name`, else its class name (openpoints' registry NAME). `segmentation`: the
        dataset's `cls2parts` is part of it (a part dataset trained for classification has none)."""
        name = getattr(dataset, 'name', None)
        if not isinstance(name, str):
            name = default_name or type(dataset).__name__
        cls2parts = parts_of(dataset.cls2parts) if segmentation else None
        classes = getattr(dataset, 'classes', None) or range(len(cls2parts or ()))
        return cls(name, tuple(str(c) for c in classes), cls2parts)


def parts_of(cls2parts: Any) -> tuple[tuple[int, ...], ...]:
    """`cls2parts` of any part dataset (lists, arrays) as the hashable tuples an identity compares."""
    return tuple(tuple(int(p) for p in ids) for ids in cls2parts)


class Labeler(ABC):
    """Turns a training batch into its loss. Artifacts keep hard labels; a labeler is a training choice.

    `prepare` runs once before training (a teacher is loaded, or trained and cached); `loss` runs on every
    batch, on the same (augmented) inputs the student sees.
    """

    def prepare(self, dataset: DatasetIdentity, device: torch.device | str) -> None:
        """Get ready to label batches of `dataset`'s classes on `device`. Default: nothing to do."""

    @abstractmethod
    def loss(self, logits: Tensor, target: Tensor, inputs: Tensor | Mapping[str, Any]) -> Tensor:
        """Scalar training loss.

        Args:
            logits: (B, K) student logits, or (B, K, N) per-point logits (part segmentation); any float dtype,
                the loss is computed in fp32.
            target: (B,) int64 hard labels, or (B, N) per-point part ids.
            inputs: the batch the student saw: (B, N, 3) points or an openpoints batch dict (with `cls` for
                part segmentation).
        """

    @abstractmethod
    def describe(self) -> str:
        """How a results table names this labeler's rows ('hard labels', 'teacher labels (...)')."""

    def report(self) -> dict:
        """What a results file records about the labels (for a teacher: its accuracy and training minutes)."""
        return {'labels': self.describe()}

    def run_record(self) -> dict:
        """What a run's results record of its labels: the table's name for them and the full report (one place for
        the protocol's runs and tools/train.py's metrics.json, which results tables read alike)."""
        return {'labels': self.describe(), 'labels_report': self.report()}

    def __repr__(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in vars(self).items() if not k.startswith('_'))
        return f'{type(self).__name__}({args})'
