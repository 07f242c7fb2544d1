"""The two tasks of the evaluation protocol, as data: what differs between shape classification and part
segmentation when a set is trained and tested.

A `Task` names its real-data pool, how a set's and a random selection's training clouds are drawn, the network's
head, a training batch and the test figures (the headline first). The run (`evaluate.train_and_test`) and the
protocol (`protocol.evaluate_set`, `protocol.random_baseline`, `protocol.run_protocol`) are written once against
it, so tools/evaluate.py and a distillation's own evaluation treat a part-segmentation set as they treat a
classification set.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from openpoints.utils import EasyConfig

from ..data.part_pool import PartPool
from ..data.real_pool import RealPool, random_selection_generator
from ..data.synthetic_set import SyntheticSet
from ..labels import DatasetIdentity, parts_of
from ..utils.config import to_easy
from .evaluate import TrainSampler, fixed_sampler, summarize, test_accuracy
from .evaluate_seg import PartSampler, fixed_part_sampler, part_batch, test_miou


class Task:
    """What the evaluation protocol needs to know of a task."""

    name: str
    #: (run key, column header) of the figures a run reports, in the tables' order; the first is the headline
    figures: tuple[tuple[str, str], ...]
    #: what the tables say about the figures, beyond mean ± std over runs
    figures_note: str = ''
    #: the run's figure that picks the best tested epoch (the papers' protocol) and heads its log line
    headline: str

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


class Classification(Task):
    name = 'classification'
    figures = (('oa', 'OA'), ('macc', 'mAcc'))
    headline = figures[0][0]

    def pool(self, dataset_cfg, split, num_points, seed=0):
        return RealPool.from_dataset_cfg(dataset_cfg, split=split, num_points=num_points)

    def identity(self, pool):
        return DatasetIdentity(pool.name, tuple(pool.class_names))

    def set_sampler(self, synthetic, num_points, resample, settings) -> TrainSampler:
        if synthetic.is_generator and resample:
            return lambda epoch, generator: synthetic.sample(num_points, generator)
        pos, labels = synthetic.sample(num_points, torch.Generator().manual_seed(0))
        return fixed_sampler(pos, labels)

    def random_sampler(self, train, cpc, selection, num_points) -> TrainSampler:
        clouds, _ = train.random_per_class(cpc, random_selection_generator(selection))
        return fixed_sampler(clouds[:, :num_points], torch.arange(train.num_classes).repeat_interleave(cpc))

    def model_cfg(self, model, test):
        cfg = to_easy(model)   # a copy, nested sections as EasyConfigs, as openpoints' builders read them
        cfg.setdefault('num_classes', test.num_classes)
        return cfg

    def training_batch(self, pos, targets, rotator):
        return (pos if rotator is None else rotator(pos)), targets[0]

    def test(self, model, test, rotator, amp, device):
        oa, macc = test_accuracy(model, test.pos.to(device), test.labels.to(device), test.num_classes, rotator, amp=amp)
        return {'oa': oa, 'macc': macc}

    def describe_run(self, run):
        return f"final-epoch OA {run['oa']:.2f} (best tested {run['best_oa']:.2f})"


class PartSegmentation(Task):
    name = 'segmentation'
    figures = (('instance_miou', 'inst mIoU'), ('class_miou', 'class mIoU'),
               ('unrestricted_instance_miou', 'inst (unrestr.)'), ('unrestricted_class_miou', 'class (unrestr.)'))
    figures_note = ("mIoU over the parts of each shape's true category, the argmax restricted to them; unrestr.: "
                    "over all part logits.")
    headline = figures[0][0]

    def pool(self, dataset_cfg, split, num_points, seed=0):
        return PartPool.from_dataset_cfg(dataset_cfg, split, num_points=num_points, seed=seed)

    def identity(self, pool):
        return DatasetIdentity(pool.name, tuple(pool.class_names), parts_of(pool.cls2parts))

    def set_sampler(self, synthetic, num_points, resample, settings) -> PartSampler:
        """`settings['part_balance']` < 1 gives a generator's small parts more of the points."""
        balance = float(settings['part_balance'])
        if synthetic.is_generator and resample:
            return lambda epoch, generator: synthetic.sample_with_parts(num_points, generator, balance)
        fixed = synthetic.sample_with_parts(num_points, torch.Generator().manual_seed(0), balance)
        return lambda epoch, generator: fixed

    def random_sampler(self, train, cpc, selection, num_points) -> PartSampler:
        pos, index = train.random_per_class(cpc, random_selection_generator(selection))
        return fixed_part_sampler(pos[:, :num_points], train.parts[index, :num_points], train.labels[index])

    def model_cfg(self, model, test):
        cfg = to_easy(model)   # a copy, nested sections as EasyConfigs, as openpoints' builders read them
        if cfg.get('cls_args') is not None:                    # openpoints BasePartSeg (PointNeXt): the head's size
            cfg.cls_args.setdefault('num_classes', test.num_parts)
        else:
            cfg.setdefault('num_classes', test.num_parts)
            cfg.setdefault('num_shape_classes', test.num_classes)
        return cfg

    # no canonicaliser in part segmentation (dd3d_spec §7.4): the rotator is the identity and is not applied
    def training_batch(self, pos, targets, rotator):
        parts, categories = targets
        return part_batch(pos, categories), parts

    def test(self, model, test, rotator, amp, device):
        return test_miou(model, test.pos.to(device), test.parts.to(device), test.labels.to(device), test.cls2parts,
                         amp=amp)

    def describe_run(self, run):
        return f'final-epoch {self.figures[0][1]} {run[self.headline]:.2f}'


TASKS: dict[str, Task] = {task.name: task for task in (Classification(), PartSegmentation())}
