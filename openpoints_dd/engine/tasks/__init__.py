"""The engine's tasks, registered once: `TASKS` maps a config's `task:` to its `Task` (tasks/base.py).

Adding a task is one module of this package (its `Task`, and a `Distiller` / `Trainer` subclass for the steps
in which it differs) and one entry below; the distillation run, the evaluation protocol, tools/train.py and the
teachers find it here.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from .base import Task
from .classification import Classification
from .part_segmentation import PartSegmentation

TASKS: dict[str, Task] = {task.name: task for task in (Classification(), PartSegmentation())}


def task_of(cfg: Mapping[str, Any]) -> Task:
    """The task of a config: its top-level `task` key (as in cfgs/distill), else the task whose `models` or
    `datasets` name the config's model (`model.NAME`) or dataset (`dataset.common.NAME`, or the `real_dataset` of
    a DistilledDataset), else classification; so PointNeXt's ShapeNet-part YAMLs run as they are."""
    name = cfg.get('task')
    if name is not None:
        if name not in TASKS:
            raise ValueError(f'task must be one of {tuple(TASKS)}, got {name!r}')
        return TASKS[str(name)]
    model = (cfg.get('model') or {}).get('NAME')
    common = (cfg.get('dataset') or {}).get('common') or {}
    for task in TASKS.values():
        if model in task.models or common.get('NAME') in task.datasets or common.get('real_dataset') in task.datasets:
            return task
    return TASKS['classification']


def train(cfg: Mapping[str, Any], run_dir: str | os.PathLike, *, overrides: Sequence[str] | None = None) -> dict:
    """Train (or resume, or test) the network of a train YAML as its task's trainer does (`Task.train`)."""
    return task_of(cfg).train(cfg, run_dir, overrides=overrides)


__all__ = ['TASKS', 'Task', 'Classification', 'PartSegmentation', 'task_of', 'train']
