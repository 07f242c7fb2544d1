"""Shape classification: one label per cloud, overall and mean class accuracy."""
from __future__ import annotations

import torch

from ...data.real_pool import RealPool, random_selection_generator
from ...labels import DatasetIdentity
from ...utils.config import to_easy
from ..distill import Distiller
from ..evaluate import TrainSampler, fixed_sampler, test_accuracy
from ..train_cls import Trainer
from .base import Task


class Classification(Task):
    """Shape classification: one label per cloud. Its distiller and trainer are the engine's base classes."""

    name = 'classification'
    figures = (('oa', 'OA'), ('macc', 'mAcc'))
    headline = figures[0][0]
    distiller = Distiller
    trainer = Trainer

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
