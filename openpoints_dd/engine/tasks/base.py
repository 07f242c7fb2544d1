"""What a task is to the engine: the steps in which shape classification and part segmentation differ.

A `Task` names its real-data pool, how a set's and a random selection's training clouds are drawn, the network's
head, a training batch and the test figures (the headline first); and the two classes that run its longer jobs,
its `distiller` (`engine.distill.Distiller` or a subclass overriding the task's steps of the loop) and its
`trainer` (`engine.train_cls.Trainer` or a subclass: PointNeXt's YAML training). The run
(`evaluate.train_and_test`), the protocol (`protocol.evaluate_set`, `protocol.random_baseline`,
`protocol.run_protocol`), the distillation run (`pipeline.run_distillation`), tools/train.py and the teachers are
written once against it: a task is one module of this package and one entry in `TASKS`.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from openpoints.utils import EasyConfig

from ...data.part_pool import PartPool
from ...data.real_pool import RealPool
from ...data.synthetic_set import SyntheticSet
from ...labels import DatasetIdentity
from ..distill import Distiller
from ..evaluate import summarize
from ..train_cls import Trainer, run_training


class Task:
    """What the engine needs to know of a task: the evaluation protocol's steps, and its distiller and trainer."""

    name: str
    #: (run key, column header) of the figures a run reports, in the tables' order; the first is the headline
    figures: tuple[tuple[str, str], ...]
    #: what the tables say about the figures, beyond mean ± std over runs
    figures_note: str = ''
    #: the run's figure that picks the best tested epoch (the papers' protocol) and heads its log line
    headline: str
    #: the distillation loop of this task (`Distiller` or a subclass with the task's matching steps)
    distiller: ClassVar[type[Distiller]]
    #: PointNeXt-YAML training of this task (`Trainer` or a subclass with the task's batches and metrics)
    trainer: ClassVar[type[Trainer]]
    #: openpoints model and dataset NAMEs that make a train YAML without a `task:` key this task's (PointNeXt
    #: picks its script by the YAML's folder, so its YAMLs carry no task key)
    models: ClassVar[tuple[str, ...]] = ()
    datasets: ClassVar[tuple[str, ...]] = ()

    def pool(self, dataset_cfg: Mapping[str, Any], split: str, num_points: int, seed: int = 0) -> RealPool | PartPool:
        """The real clouds of one split of a dataset section (`seed`: a part pool's choice of points)."""
        raise NotImplementedError

    def identity(self, pool: RealPool | PartPool) -> DatasetIdentity:
        """What a teacher labelling sets of `pool`'s dataset must have been trained on."""
        raise NotImplementedError

    def set_sampler(self, synthetic: SyntheticSet, num_points: int, resample: bool, settings: Mapping[str, Any]):
        """A set's training clouds: fresh generator noise every epoch (`resample`) or one fixed draw."""
        raise NotImplementedError

    def random_sampler(self, train: RealPool | PartPool, cpc: int, selection: int, num_points: int):
        """Random selection `selection` of `cpc` real clouds per class, as a fixed training set."""
        raise NotImplementedError

    def model_cfg(self, model: Mapping[str, Any], test: RealPool | PartPool) -> EasyConfig:
        """The evaluated network's openpoints config, its head sized for `test`'s classes (or parts)."""
        raise NotImplementedError

    def training_batch(self, pos: Tensor, targets: tuple[Tensor, ...], rotator: nn.Module | None) -> tuple[Any, Tensor]:
        """The network's input and the loss's target from a sampler's augmented clouds and its other tensors."""
        raise NotImplementedError

    def test(self, model: nn.Module, test: RealPool | PartPool, rotator: nn.Module | None, amp: str | None,
             device: str | torch.device) -> dict:
        """The figures of `model` on the test pool, `headline` among them."""
        raise NotImplementedError

    def describe_run(self, run: Mapping[str, Any]) -> str:
        """One run's headline figures, as the log line of each seed gives them."""
        raise NotImplementedError

    def summaries(self, runs: list[dict]) -> dict:
        """A set's figures over its runs, as every table keeps them: `final_<figure>` for each figure and
        `best_<headline>_papers_protocol`, each mean ± std (`evaluate.summarize`)."""
        return {**{f'final_{key}': summarize(runs, key) for key, _ in self.figures},
                f'best_{self.headline}_papers_protocol': summarize(runs, f'best_{self.headline}')}

    def train(self, cfg: Mapping[str, Any], run_dir: str | os.PathLike, *,
              overrides: Sequence[str] | None = None) -> dict:
        """Train (or resume, or test) a network of `cfg` (a train YAML: PointNeXt's keys) as this task's
        `trainer` does, logging to `<run_dir>/log.txt`; returns the run's metrics.json."""
        return run_training(self.trainer, cfg, run_dir, overrides)
