"""The data of a PointNeXt-YAML training run: openpoints' DataLoaders built from the YAML's dataset sections.

Relative data folders resolve against the cwd, then the repository root, and a missing one is an error naming its
key (and, for a distilled set, the dataset it came from); PointNeXt's worker counts are capped to the cores this
process may use; `val_per_class` tests every class on the same first clouds.
"""
from __future__ import annotations

import copy
import inspect
import logging
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from openpoints.dataset import build_dataloader_from_cfg
from openpoints.dataset.build import DATASETS
from openpoints.utils import EasyConfig

from ..data.artifact import load_artifact
from ..data.real_pool import dataset_labels
from ..utils.config import resolve_path, to_easy
from .artifact_cfg import artifact_path

logger = logging.getLogger(__name__)


def dataset_sections(cfg: EasyConfig) -> EasyConfig:
    """The dataset sections openpoints' builder takes: the artifact as the train split's `distilled_path`, every
    data folder the dataset reads resolved (cwd, then the repository root) and checked, naming the key."""
    dataset_cfg = copy.deepcopy(cfg.dataset)  # build_dataloader_from_cfg writes split/transform into it
    if cfg.get('artifact'):                   # adapt_to_artifact made the dataset a DistilledDataset
        dataset_cfg.train = dataset_cfg.get('train') or EasyConfig()
        dataset_cfg.train.distilled_path = resolve_path(cfg.artifact)
    common = dataset_cfg.get('common') or {}
    real_name = common.get('real_dataset') if common.get('NAME') == 'DistilledDataset' else common.get('NAME')
    for section in list(dataset_cfg):
        if dataset_cfg[section] is None:
            dataset_cfg[section] = EasyConfig()
        for key in ('data_dir', 'data_root'):      # data_root: openpoints' ShapeNetPartNormal
            data_dir = dataset_cfg[section].get(key)
            if isinstance(data_dir, str) and dataset_reads(real_name, key):
                resolved = resolve_path(data_dir)
                if not os.path.exists(resolved):
                    raise FileNotFoundError(
                        f'dataset.{section}.{key} {data_dir!r} not found (looked in the cwd {os.getcwd()} and '
                        f'the repository root). Fix the path or override it: dataset.{section}.{key}=/path'
                        f'{_other_dataset_hint(cfg, real_name)}')
                dataset_cfg[section][key] = resolved
    return dataset_cfg


def _other_dataset_hint(cfg: EasyConfig, real_name: str | None) -> str:
    """The override that tests on the dataset the artifact was distilled from, when it is not the YAML's."""
    path = artifact_path(cfg)
    if path is None:
        return ''
    source = load_artifact(resolve_path(path))[1]['dataset']['name']
    if source == real_name or source not in DATASETS:
        return ''
    return (f'. The artifact was distilled from {source}: to test on that dataset instead, set '
            f'dataset.common.NAME={source} (and its own data keys)')


def build_loader(cfg: EasyConfig, split: str, batch_size: int, device: torch.device) -> DataLoader:
    """openpoints' DataLoader of one split, as PointNeXt builds it, with the workers capped to this process's cores
    and, off the train split, `val_per_class`'s per-class subset."""
    dataloader_cfg = to_easy(copy.deepcopy(cfg.dataloader or {}))
    dataloader_cfg.setdefault('num_workers', 0)
    cores = available_cores()
    if int(dataloader_cfg.num_workers) > cores:   # PointNeXt's 6 workers on a 2-core machine only contend
        if split == 'train':
            logger.info('dataloader.num_workers %s -> %d: the cores this process may use',
                        dataloader_cfg.num_workers, cores)
        dataloader_cfg.num_workers = cores
    transforms = copy.deepcopy(cfg.datatransforms)
    loader = build_dataloader_from_cfg(batch_size, dataset_sections(cfg), dataloader_cfg,
                                       datatransforms_cfg=transforms, split=split, distributed=False)
    loader.pin_memory = device.type == 'cuda'  # openpoints hard-codes True; it only warns on CPU
    if split != 'train' and cfg.val_per_class:
        loader = per_class_loader(loader, int(cfg.val_per_class))
    return loader


def per_class_loader(loader: DataLoader, per_class: int) -> DataLoader:
    """The same loader over the first `per_class` clouds of every class (in the dataset's order), so a CPU-scale
    evaluation tests every class equally and every run on the same clouds."""
    if per_class < 1:
        raise ValueError(f'val_per_class must be >= 1 (or null for the whole split), got {per_class}')
    labels = dataset_labels(loader.dataset)
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))
    return DataLoader(Subset(loader.dataset, keep.tolist()), batch_size=loader.batch_size, shuffle=False,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


def real_dataset(dataset):
    """The real dataset under DistilledDataset's val/test split (the dataset itself otherwise)."""
    return getattr(dataset, 'real', None) or dataset


def unwrap_subset(dataset):
    """The dataset under `val_per_class`'s Subset (its classes, cls2parts and num_classes are the checks' input)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not on Linux
        return max(1, os.cpu_count() or 1)


def dataset_reads(name: str | None, key: str) -> bool:
    """Whether the registered dataset `name` takes `key` as a named argument (a data folder it will open). A key
    it would only ignore (EmbeddedShapesPart under PointNeXt's ShapeNet-part `data_root`) is not checked."""
    cls = DATASETS.get(name) if isinstance(name, str) and '.' not in name else None
    if cls is None:
        return True   # unknown here: check the path, the dataset will fail on it anyway
    return key in inspect.signature(cls.__init__).parameters
