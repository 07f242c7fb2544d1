"""Supervised point-cloud classification on openpoints, driven by PointNeXt's classification YAML keys.

`train_classifier(cfg, run_dir)` is PointNeXt's `examples/classification/train.py` rebuilt for any device
(CPU included) and for repeated in-process calls: same config keys, same data path
(`build_dataloader_from_cfg`), same optimiser and scheduler factories, same metrics (`ConfusionMatrix`).
"""
from __future__ import annotations

import copy
import itertools
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from openpoints.loss import build_criterion_from_cfg
from openpoints.models import build_model_from_cfg
from openpoints.models.layers import furthest_point_sample
from openpoints.optim import build_optimizer_from_cfg
from openpoints.scheduler import build_scheduler_from_cfg
from openpoints.utils import ConfusionMatrix, EasyConfig, set_random_seed

from ..labels import DatasetIdentity
from ..registry import build_labeler
from ..utils.config import config_hash, load_config, save_config, to_easy
from ..utils.device import resolve_device
from ..utils.fit import fit_batches
from ..utils.io import write_atomically
from ..utils.precision import autocast, check_amp, fp32_criteria
from ..utils.progress import bar_disabled, tqdm_safe_logging
from ..utils.run import run_log_file
from ..utils.trackers import Trackers
from .artifact_cfg import adapt_to_artifact
from .train_data import build_loader, dataset_sections, real_dataset, unwrap_subset
from .train_checkpoint import (find_checkpoint, load_model_weights, readable_json, restore_checkpoint,
                               save_checkpoint)

logger = logging.getLogger(__name__)

MODES = ('train', 'finetune', 'resume', 'val', 'test')
REQUIRED_KEYS = ('dataset', 'model', 'num_classes', 'num_points', 'epochs', 'batch_size', 'lr', 'optimizer')
BEST_NOTE = ("best epoch = papers' protocol: the validated epoch with the highest OA on the evaluation split "
             "(optimistic when that split is the test set, as for ModelNet40); `last_*` is the final epoch")

#: Optional keys and their values when a config leaves them out (cfgs/train/default.yaml lists them all).
TRAIN_DEFAULTS: dict[str, Any] = {
    'mode': 'train',            # train | finetune | resume | val | test
    'pretrained_path': None,    # weights to start from (train/finetune), to resume (resume) or to test
    'device': 'auto',           # cpu | cuda | auto
    'seed': None,               # None draws one (logged and saved in cfg.yaml)
    'deterministic': False,
    'val_batch_size': None,     # None: batch_size
    'dataloader': {'num_workers': 0},
    'datatransforms': None,
    'criterion_args': None,     # used when model.criterion_args is not set; None: cross-entropy
    'sched': 'cosine',
    'warmup_epochs': 0,
    'min_lr': None,             # None: lr / 1000 (openpoints)
    't_max': None,              # None: epochs
    'sched_on_epoch': True,
    'start_epoch': 1,
    'step_per_update': 1,
    'grad_norm_clip': None,
    'val_freq': 1,
    'print_freq': 50,
    'progress': True,
    'point_resampling': 'fps',  # fps | random | first: how training clouds with > num_points are reduced
    'max_train_batches': None,  # cut every epoch short: smoke tests, or the full train set at a small step budget
    'amp': None,                # None | 'fp32' | 'bf16': bf16 autocast of the forward and loss (fp32 master weights)
    'max_val_batches': None,
    'val_per_class': None,      # CPU-scale budgets: validate/test on the first k clouds of every class only
    'root_dir': 'runs',
    'run_dir': None,
    'artifact': None,           # the distilled set to train on: DistilledDataset's train split (engine/artifact_cfg.py)
    'labels': None,             # None: hard labels (the model's criterion); {NAME: TeacherLabels, teacher: <train YAML>}
    'tensorboard': False,
    'wandb': {'use_wandb': False},
}

Resampling = Literal['fps', 'random', 'first']


# ============================================================================================ public API
def train_classifier(cfg: Mapping[str, Any], run_dir: str | os.PathLike, *,
                     overrides: Sequence[str] | None = None) -> dict:
    """Train (or resume, or test) a classifier as PointNeXt's classification `train.py` does.

    Config keys (PointNeXt's; defaults in `TRAIN_DEFAULTS`): `dataset.{common,train,val,test}`,
    `dataloader.num_workers`, `datatransforms.{train,val,test,kwargs}`, `model` (`model.criterion_args`,
    else top-level `criterion_args`; `model.in_channels`, else `model.encoder_args.in_channels`, else 3),
    `optimizer` + `lr` (`build_optimizer_from_cfg`), `sched`, `epochs`, `warmup_epochs`, `min_lr`, `t_max`,
    `sched_on_epoch` and the other top-level scheduler keys (`build_scheduler_from_cfg`), `batch_size`,
    `val_batch_size`, `num_points`, `num_classes`, `classes`, `val_freq`, `grad_norm_clip`, `step_per_update`,
    `start_epoch`, `seed`, `deterministic`, `print_freq`, `mode`, `pretrained_path`; and ours: `device`,
    `progress`, `point_resampling`, `max_train_batches`, `max_val_batches`, `val_per_class`, `amp`, `artifact`,
    `labels` (`labels.TeacherLabels`: the loss of every batch from a cached teacher), `tensorboard`,
    `wandb.use_wandb`.

    `artifact=` trains on a distilled set with any YAML: `engine.artifact_cfg.adapt_to_artifact` puts the train
    split on DistilledDataset (val/test stay the YAML's dataset) and sizes the classes and head from the artifact.
    `dataloader.num_workers` is capped to the cores this process may use.

    `amp: bf16` runs every forward (training and evaluation) under `torch.autocast(device, bfloat16)`, on CPU
    and CUDA; the loss is computed in fp32 on fp32 logits, and parameters, gradients and optimizer state stay
    fp32 (`utils.precision`). `amp: null` or `fp32` (the default) trains in full precision.

    Behaviour that differs from PointNeXt: the last epoch is always validated; training clouds with more
    than `num_points` points are reduced for any `num_points` (`resample_points`); `num_classes` is checked
    against the dataset's class list, and the model's output size on the first batch; an epoch without a
    batch is an error; relative `data_dir`s resolve against the cwd, then the repository root.

    Files written in `run_dir`: `cfg.yaml` (the config with defaults and the seed filled in), `log.txt`,
    `checkpoint/{last,best}.safetensors` (model weights) + `.json` (epoch, metrics, history),
    `checkpoint/last_state.pt` (optimizer, scheduler and RNG state; tensors and primitives only, for
    `torch.load(weights_only=True)`) and `metrics.json`.

    Args:
        cfg: the experiment config (not modified).
        run_dir: output folder, created if needed.
        overrides: the command-line overrides, only to log them. Default None.

    Returns:
        The content of `metrics.json`. For training: `last_{epoch,oa,macc,acc_per_class}`,
        `best_{epoch,oa,macc,acc_per_class}` with `best_note` (papers' protocol), `eval_split`, `history`
        (one entry per epoch), `test_{last,best}_{oa,macc}` when a separate `dataset.test` is configured, and
        `seed`, `device`, `num_params`, `cfg_hash`, `run_dir`, `seconds`. For `mode: val|test`: `oa`, `macc`,
        `acc_per_class`, `split`, `checkpoint`.

    Raises:
        ValueError: missing or inconsistent keys (num_classes, mode, device, an empty train loader, ...).
        FileNotFoundError: a missing `data_dir` or checkpoint.
        FloatingPointError: a non-finite training loss.
    """
    return run_training(Trainer, cfg, run_dir, overrides)


def run_training(trainer: type['Trainer'], cfg: Mapping[str, Any], run_dir: str | os.PathLike,
                 overrides: Sequence[str] | None = None) -> dict:
    """One run of `trainer` (a task's: `Task.trainer`) in `run_dir`, created if needed, logging to its log.txt."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_log_file(run_dir / 'log.txt'):
        return trainer(cfg, run_dir, overrides).run()


def resample_points(points: Tensor, num_points: int, method: Resampling = 'fps',
                    generator: torch.Generator | None = None) -> Tensor:
    """Reduce every cloud of a batch to `num_points` points (a no-op when it has no more than that).

    `fps` is PointNeXt's training-time resampling made general: furthest point sampling down to
    `round(1.171875 * num_points)` points (1200 for 1024, 4800 for 4096, as upstream), then the same random
    `num_points` of those for the whole batch. `random` takes an independent random subset per cloud;
    `first` keeps the first `num_points` (PointNeXt's validation rule).

    Args:
        points: (B, N, C) float, xyz in the first 3 channels.
        num_points: M, the number of points to keep.
        method: 'fps' | 'random' | 'first'. Default 'fps'.
        generator: torch generator for the random choices. Default None (global RNG).

    Returns:
        (B, min(N, M), C) points, same dtype and device.
    """
    if method not in ('fps', 'random', 'first'):
        raise ValueError(f"point_resampling must be 'fps', 'random' or 'first', got {method!r}")
    B, N, C = points.shape
    if N <= num_points:
        return points
    if method == 'first':
        return points[:, :num_points]
    if method == 'random':
        keys = torch.rand(B, N, generator=generator, device='cpu').to(points.device)
        idx = keys.argsort(dim=1)[:, :num_points]
    else:
        pool = min(N, round(num_points * 1.171875))
        fps_idx = furthest_point_sample(points[..., :3].contiguous(), pool).long()         # (B, pool)
        choice = torch.randperm(pool, generator=generator, device='cpu')[:num_points].to(points.device)
        idx = fps_idx[:, choice]
    return torch.gather(points, 1, idx.unsqueeze(-1).expand(-1, -1, C))


def load_train_config(path: str | os.PathLike, overrides: Sequence[str] | None = None) -> EasyConfig:
    """A trainer YAML as tools/train.py loads it: `load_config` with `TRAIN_DEFAULTS` as the lowest layer, so the
    trainer's own keys (run_dir, artifact, val_per_class, ...) are known to any YAML, PointNeXt's included, and
    take `key=value` overrides without a `+`."""
    return load_config(path, overrides, defaults=TRAIN_DEFAULTS)


def with_defaults(cfg: Mapping[str, Any]) -> EasyConfig:
    """A deep copy of `cfg` as `EasyConfig` with `TRAIN_DEFAULTS` filled in where keys are missing."""
    out = to_easy(copy.deepcopy(dict(cfg)))
    for key, value in TRAIN_DEFAULTS.items():
        if key not in out:
            out[key] = to_easy(copy.deepcopy(value))
    return out


# ============================================================================================ the trainer
class Trainer:
    """One call of `train_classifier`: holds the built objects; `run()` does the work.

    Subclasses (a task's `trainer`, e.g. engine/tasks/part_segmentation.py) change the task through `METRIC` (the
    validation figure that picks the best epoch), `HEADLINE` (the figures logged and kept per epoch) and the hooks
    `_check_head`, `_check_dataset`, `_prepare` and `evaluate`.
    """

    TASK = 'classification'
    METRIC = 'oa'
    HEADLINE: tuple[str, ...] = ('oa', 'macc')
    BEST_NOTE = BEST_NOTE

    def __init__(self, cfg: Mapping[str, Any], run_dir: Path, overrides: Sequence[str] | None):
        self.t0 = time.perf_counter()
        self.given_hash = config_hash(cfg)
        self.cfg = cfg = adapt_to_artifact(with_defaults(cfg), self.TASK)
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / 'checkpoint'
        self.last_val: dict | None = None   # the latest validation of this call (with per-class accuracies)
        self._check_keys()
        if cfg.seed is None:
            cfg.seed = secrets.randbelow(2 ** 31)
        self.device = resolve_device(cfg.device)
        save_config(cfg, run_dir / 'cfg.yaml')
        logger.info('train_cls | run dir %s | device %s | seed %d | mode %s | cfg hash %s',
                    run_dir, self.device, cfg.seed, cfg.mode, self.given_hash)
        if overrides:
            logger.info('overrides: %s', ' '.join(overrides))
        set_random_seed(int(cfg.seed), deterministic=bool(cfg.deterministic))
        self.num_classes = int(cfg.num_classes)
        self.num_points = int(cfg.num_points)
        self.in_channels = int(cfg.model.get('in_channels') or (cfg.model.get('encoder_args') or {}).get('in_channels')
                               or 3)
        self._dataset_cfg()   # a missing data folder fails here, before the model is built

    # ------------------------------------------------------------------------------------------ setup
    def _check_keys(self) -> None:
        cfg = self.cfg
        missing = [k for k in REQUIRED_KEYS if cfg.get(k) is None]
        if missing:
            raise ValueError(f'the training config lacks {", ".join(missing)}. See cfgs/train/*.yaml for a '
                             f'complete example (openpoints_dd.engine.train_cls.REQUIRED_KEYS).')
        if cfg.mode not in MODES:
            raise ValueError(f'mode must be one of {", ".join(MODES)}, got {cfg.mode!r}')
        if cfg.mode in ('finetune', 'resume', 'val', 'test') and not cfg.pretrained_path:
            raise ValueError(f'mode {cfg.mode} needs pretrained_path= (a run dir or a checkpoint file)')
        if not isinstance(cfg.dataset.get('common'), Mapping) or not cfg.dataset.common.get('NAME'):
            raise ValueError('dataset.common.NAME is missing: it names the dataset class for every split '
                             '(openpoints builds all splits from dataset.common)')
        for key in ('epochs', 'batch_size', 'num_points', 'num_classes', 'val_freq', 'step_per_update'):
            if int(cfg[key]) < 1:
                raise ValueError(f'{key} must be >= 1, got {cfg[key]!r}')
        check_amp(cfg.amp)
        if cfg.get('labels') is not None:
            build_labeler(to_easy(cfg.labels))   # an unknown labeler or key fails here, before any data loads

    def _build_model(self) -> nn.Module:
        model_cfg = copy.deepcopy(self.cfg.model)  # BaseCls writes cls_args.in_channels into its cfg
        if not model_cfg.get('criterion_args'):
            model_cfg.criterion_args = copy.deepcopy(self.cfg.criterion_args)
        model = build_model_from_cfg(model_cfg)
        if model is None:
            raise ValueError(f'model.NAME {self.cfg.model.get("NAME")!r} is not registered in openpoints MODELS. '
                             f'Did you import openpoints_dd?')
        criterion = getattr(model, 'criterion', None)
        if hasattr(model, 'get_logits_loss') and criterion is not None:
            self.loss_fn = None
        else:
            self.loss_fn = build_criterion_from_cfg(to_easy(self.cfg.criterion_args or {'NAME': 'CrossEntropy'}))
        return model.to(self.device)

    @torch.no_grad()
    def _check_head(self, model: nn.Module) -> None:
        """Run 2 random clouds through the model (eval mode, own RNG) and check it outputs num_classes logits."""
        generator = torch.Generator().manual_seed(0)
        points = torch.randn(2, self.num_points, self.in_channels, generator=generator).to(self.device)
        model.eval()
        logits = model({'pos': points[..., :3].contiguous(), 'x': points.transpose(1, 2).contiguous()})
        model.train()
        if logits.dim() != 2 or logits.shape[-1] != self.num_classes:
            raise ValueError(f'the model {self.cfg.model.get("NAME")} outputs logits of shape {tuple(logits.shape)} '
                             f'for 2 clouds but num_classes is {self.num_classes}: set the head size '
                             f'(model.num_classes or model.cls_args.num_classes) to {self.num_classes}')

    def _build_optimizer(self, model: nn.Module):
        opt_cfg = dict(copy.deepcopy(self.cfg.optimizer))
        # openpoints calls model.module.no_weight_decay() on an unwrapped model that defines no_weight_decay;
        # give it the `module` it expects for the duration of the call (not registered as a submodule).
        shim = hasattr(model, 'no_weight_decay') and not hasattr(model, 'module')
        if shim:
            object.__setattr__(model, 'module', model)
        previous_disable = logging.root.manager.disable
        logging.disable(logging.INFO)  # openpoints dumps every parameter name at INFO here
        try:
            optimizer = build_optimizer_from_cfg(model, lr=float(self.cfg.lr), **opt_cfg)
        except ValueError as e:
            raise ValueError(f'optimizer {opt_cfg.get("NAME")!r} could not be built (from the optimizer section '
                             f'{opt_cfg}): {e}. Common names: adamw, adam, sgd (nesterov), momentum.') from e
        finally:
            logging.disable(previous_disable)
            if shim:
                object.__delattr__(model, 'module')
        sched_view = copy.deepcopy(self.cfg)
        if sched_view.get('t_max') is None:
            sched_view.t_max = int(self.cfg.epochs)
        scheduler = build_scheduler_from_cfg(sched_view, optimizer) if self.cfg.sched else None
        if self.cfg.sched and scheduler is None:
            raise ValueError(f'sched {self.cfg.sched!r} is unknown to openpoints; use cosine, tanh, step, '
                             f'multistep, plateau, poly or null (constant lr)')
        return optimizer, scheduler

    def _dataset_cfg(self) -> EasyConfig:
        return dataset_sections(self.cfg)

    def _loader(self, split: str, batch_size: int):
        return build_loader(self.cfg, split, batch_size, self.device)

    def _check_same_classes(self, train, val) -> None:
        """A training set (an artifact) made from another dataset than the evaluation split's: another dataset
        name, class count or class list is an error (the set's label i would be trained as another class)."""
        synthetic = getattr(train, 'synthetic', None)
        train_names, val_names = getattr(train, 'classes', None), getattr(val, 'classes', None)
        if synthetic is None or val_names is None:
            return
        made_from = synthetic.metadata['dataset']['name']
        tested_on = DatasetIdentity.of(real_dataset(val))
        if made_from == tested_on.name and list(map(str, train_names)) == list(tested_on.class_names):
            return
        raise ValueError(f'the training set {synthetic.path} was distilled from {made_from} ({len(train_names)} '
                         f'classes: {", ".join(map(str, train_names[:4]))}, ...) but this config tests on '
                         f'{tested_on.name} ({tested_on.num_classes} classes: '
                         f'{", ".join(tested_on.class_names[:4])}, ...). Point dataset.common (NAME, data_dir) at '
                         f'the dataset the set was distilled from.')

    def _check_dataset(self, dataset, split: str) -> list[str]:
        classes = getattr(dataset, 'classes', None)
        declared = len(classes) if classes is not None else getattr(dataset, 'num_classes', None)
        if declared is not None and int(declared) != self.num_classes:
            raise ValueError(f'num_classes is {self.num_classes} but the {split} dataset '
                             f'{type(dataset).__name__} has {int(declared)} classes. Set num_classes={int(declared)} '
                             f'and the model head to match (model.num_classes or model.cls_args.num_classes).')
        from_labels = getattr(dataset, 'num_classes', None)
        if from_labels is not None and int(from_labels) > self.num_classes:
            raise ValueError(f'the {split} dataset has labels up to {int(from_labels) - 1} but num_classes is '
                             f'{self.num_classes}. Set num_classes={int(from_labels)}.')
        names = self.cfg.get('classes') or classes
        if names is None:
            names = [str(i) for i in range(self.num_classes)]
        return [str(n) for n in names]

    # ------------------------------------------------------------------------------------------ run
    def run(self) -> dict:
        cfg = self.cfg
        model = self._build_model()
        num_params = sum(p.numel() for p in model.parameters())
        self._check_head(model)
        logger.info('model %s: %.3fM parameters, in_channels %d', cfg.model.get('NAME'), num_params / 1e6,
                    self.in_channels)
        if cfg.mode in ('val', 'test'):
            return self._evaluate_only(model, num_params)

        val_batch_size = int(cfg.val_batch_size or cfg.batch_size)
        train_loader = self._loader('train', int(cfg.batch_size))
        val_loader = self._loader('val', val_batch_size)
        self._check_same_classes(unwrap_subset(train_loader.dataset), unwrap_subset(val_loader.dataset))
        self.classes = self._check_dataset(unwrap_subset(train_loader.dataset), 'train')
        self._check_dataset(unwrap_subset(val_loader.dataset), 'val')
        if len(train_loader) == 0:
            n = len(train_loader.dataset)
            raise ValueError(f'the train loader has no batch: {n} training clouds, batch_size {cfg.batch_size}, and '
                             f'the last incomplete batch is dropped. Set batch_size<={max(n, 1)} or repeat the set '
                             f'(e.g. +dataset.train.repeat=k for a dataset that supports `repeat`).')
        if len(val_loader.dataset) == 0:
            raise ValueError('the val split is empty; check dataset.val (ModelNet40Ply2048 reads split test for val)')
        logger.info('data %s | train %d clouds (%d batches of %d) | val %d clouds (split %r) | %d classes | '
                    'num_points %d (dataset gives %s)', cfg.dataset.common.NAME, len(train_loader.dataset),
                    len(train_loader), cfg.batch_size, len(val_loader.dataset), self._split_name('val'),
                    self.num_classes, self.num_points, getattr(train_loader.dataset, 'num_points', '?'))

        self.labeler = None
        if cfg.get('labels') is not None:   # the teacher labels this dataset's classes: checked, trained or loaded once
            self.labeler = build_labeler(to_easy(cfg.labels))
            self.labeler.prepare(DatasetIdentity.of(real_dataset(unwrap_subset(val_loader.dataset)),
                                                     segmentation=self.TASK == 'segmentation'), self.device)
            logger.info('labels: %s', self.labeler.report())

        optimizer, scheduler = self._build_optimizer(model)
        history: list[dict] = []
        best: dict | None = None
        start_epoch = int(cfg.start_epoch)
        if cfg.mode == 'resume':
            start_epoch, history, best = self._resume(model, optimizer, scheduler)
        elif cfg.pretrained_path:
            path = find_checkpoint(cfg.pretrained_path, 'last')
            load_model_weights(model, path)
            logger.info('starting from the weights of %s', path)

        trackers = Trackers(cfg, self.run_dir)
        epochs = int(cfg.epochs)
        model.zero_grad(set_to_none=True)
        try:
            for epoch in range(start_epoch, epochs + 1):
                t_epoch = time.perf_counter()
                if hasattr(train_loader.dataset, 'epoch'):
                    train_loader.dataset.epoch = epoch - 1
                train = self._train_one_epoch(model, train_loader, optimizer, scheduler, epoch)
                entry = {'epoch': epoch, 'train_loss': train['loss'], 'train_oa': train['oa'],
                         'lr': optimizer.param_groups[0]['lr']}
                if epoch % int(cfg.val_freq) == 0 or epoch == epochs:
                    val = self.evaluate(model, val_loader)
                    entry.update({f'val_{k}': val[k] for k in self.HEADLINE})
                    if best is None or val[self.METRIC] > best[self.METRIC]:
                        best = {'epoch': epoch, **val}
                        self._save(model, 'best', {'epoch': epoch, 'metrics': val})
                    self.last_val = val
                if scheduler is not None and cfg.sched_on_epoch:
                    scheduler.step(epoch)
                entry['seconds'] = round(time.perf_counter() - t_epoch, 3)
                history.append(entry)
                trackers.log(entry, epoch)
                logger.info('epoch %d/%d | train loss %.4f oa %.2f | %s | lr %.2e | %.1f s', epoch, epochs,
                            train['loss'], train['oa'],
                            f"val {self._describe(val)} | best {self.METRIC} {best[self.METRIC]:.2f} "
                            f"@{best['epoch']}" if f'val_{self.METRIC}' in entry else 'no val', entry['lr'],
                            entry['seconds'])
                self._save(model, 'last', {'epoch': epoch, 'history': history, 'best': best},
                           optimizer=optimizer, scheduler=scheduler)
        finally:
            trackers.close()

        if best is None:
            raise ValueError(f'nothing to report: start epoch {start_epoch} is past epochs {epochs} and the '
                             f'checkpoint holds no validation. Raise epochs= to train further.')
        validated = [h for h in history if f'val_{self.METRIC}' in h]
        last_epoch = validated[-1]['epoch']
        last = self.last_val or {k: validated[-1].get(f'val_{k}') for k in best if k != 'epoch'}
        result = {'mode': cfg.mode, 'last_epoch': last_epoch, **{f'last_{k}': last.get(k) for k in best if k != 'epoch'},
                  'best_epoch': best['epoch'], **{f'best_{k}': v for k, v in best.items() if k != 'epoch'}}
        result.update({
            'best_note': self.BEST_NOTE,
            'eval_split': self._split_name('val'),
            'classes': self.classes,
        })
        if self._has_separate_test():
            result.update(self._final_test(model))
        result.update(self._run_info(num_params, history), **self._labels_info())
        self._write_metrics(result)
        logger.info("final | last epoch %d: %s | best epoch %d (papers' protocol): %s", last_epoch,
                    self._describe(last), best['epoch'], self._describe(best))
        return result

    def _train_one_epoch(self, model: nn.Module, loader, optimizer, scheduler, epoch: int) -> dict:
        cfg = self.cfg
        model.train()
        cm = ConfusionMatrix(num_classes=self.num_classes)
        total_batches = capped_batches(len(loader), cfg.max_train_batches)
        loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
        bar = tqdm(total=total_batches, desc=f'epoch {epoch}/{cfg.epochs}', leave=False, dynamic_ncols=True,
                   disable=bar_disabled(cfg.progress))

        def batch_loss(data: Mapping[str, Any]) -> Tensor:
            data, target = self._prepare(data, training=True)
            with self._forward_precision(), fp32_criteria(getattr(model, 'criterion', None), self.loss_fn):
                if self.labeler is not None:
                    logits = model(data)
                    loss = self.labeler.loss(logits, target, data)
                elif self.loss_fn is None:
                    logits, loss = model.get_logits_loss(data, target)
                else:
                    logits = model(data)
                    loss = self.loss_fn(logits, target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f'training loss of {cfg.model.get("NAME")} is {loss.item()} at epoch '
                                         f'{epoch}, batch {len(sizes) + 1}. Lower lr or set grad_norm_clip.')
            cm.update(logits.detach().argmax(dim=1), target)
            sizes.append(target.shape[0])
            return loss

        def after_batch(idx: int, loss: Tensor) -> None:
            nonlocal loss_sum, seen
            loss_value = loss.item()
            loss_sum += loss_value * sizes[-1]
            seen += sizes[-1]
            bar.update(1)
            bar.set_postfix(loss=f'{loss_value:.4f}')
            step = idx + 1
            if step % int(cfg.print_freq) == 0 and step < total_batches:
                rate = step / max(time.perf_counter() - t0, 1e-9)
                logger.info('epoch %d step %d/%d | loss %.4f | lr %.2e | %.2f it/s | eta %s', epoch, step,
                            total_batches, loss_sum / seen, optimizer.param_groups[0]['lr'], rate,
                            _clock((total_batches - step) / rate))

        def after_update() -> None:
            if scheduler is not None and not cfg.sched_on_epoch:
                scheduler.step(epoch)

        sizes: list[int] = []
        with tqdm_safe_logging(bool(cfg.progress)):
            fit_batches(optimizer, itertools.islice(loader, total_batches), batch_loss,
                        accumulate=int(cfg.step_per_update), clip_norm=cfg.grad_norm_clip, after_batch=after_batch,
                        after_update=after_update)
        bar.close()
        macc, oa, _ = cm.all_acc()
        return {'loss': loss_sum / max(seen, 1), 'oa': oa, 'macc': macc}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader) -> dict:
        """OA, mAcc (in %) and per-class accuracies of `model` on `loader` (eval mode, PointNeXt's `validate`)."""
        cm = ConfusionMatrix(num_classes=self.num_classes)
        for data, target, logits in self._predictions(model, loader):
            cm.update(logits.argmax(dim=1), target)
        macc, oa, accs = cm.all_acc()
        return {'oa': float(oa), 'macc': float(macc), 'acc_per_class': [round(float(a), 4) for a in accs]}

    def _predictions(self, model: nn.Module, loader) -> Iterator[tuple[dict, Tensor, Tensor]]:
        """(batch, target, logits) of every evaluated batch of `loader` (`max_val_batches`), the model in eval mode
        until the last one; run under the caller's `no_grad`."""
        model.eval()
        total_batches = capped_batches(len(loader), self.cfg.max_val_batches)
        for data in tqdm(itertools.islice(loader, total_batches), total=total_batches, desc='eval', leave=False,
                         dynamic_ncols=True, disable=bar_disabled(self.cfg.progress)):
            data, target = self._prepare(data, training=False)
            with self._forward_precision():
                logits = model(data)
            yield data, target, logits
        model.train()

    def _forward_precision(self):
        """The context every forward runs in: bf16 autocast under `amp: bf16`, else none."""
        return autocast(self.cfg.amp, self.device)

    def _prepare(self, data: Mapping[str, Any], training: bool) -> tuple[dict, Tensor]:
        """Move a collated batch to the device and build `pos` (B, N, 3) and `x` (B, C, N) as train.py does."""
        data = {k: v.to(self.device, non_blocking=True) for k, v in data.items() if torch.is_tensor(v)}
        target = data['y'].reshape(-1).long()
        points = data['x'] if 'x' in data else data['pos']
        if points.dim() != 3 or points.shape[-1] < self.in_channels:
            raise ValueError(f'batch x must be (B, N, C>={self.in_channels}) channel-last with xyz first, got '
                             f'{tuple(points.shape)}; in_channels comes from model.in_channels or '
                             f'model.encoder_args.in_channels')
        method = self.cfg.point_resampling if training else 'first'
        points = resample_points(points, self.num_points, method)
        data['pos'] = points[..., :3].contiguous()
        data['x'] = points[..., :self.in_channels].transpose(1, 2).contiguous()
        return data, target

    # ------------------------------------------------------------------------------------- test modes
    def _evaluate_only(self, model: nn.Module, num_params: int) -> dict:
        cfg = self.cfg
        split = cfg.mode
        path = find_checkpoint(cfg.pretrained_path, 'last')  # the final epoch is this project's protocol
        info = load_model_weights(model, path)
        loader = self._loader(split, int(cfg.val_batch_size or cfg.batch_size))
        self.classes = self._check_dataset(unwrap_subset(loader.dataset), split)
        metrics = self.evaluate(model, loader)
        logger.info('%s | %s (epoch %s) on split %r: %s', split, path, info.get('epoch', '?'),
                    self._split_name(split), self._describe(metrics))
        result = {'mode': split, **metrics, 'split': self._split_name(split), 'checkpoint': str(path),
                  'checkpoint_epoch': info.get('epoch'), 'classes': self.classes}
        result.update(self._run_info(num_params, []))
        self._write_metrics(result)
        return result

    def _has_separate_test(self) -> bool:
        dataset = self.cfg.dataset
        return isinstance(dataset.get('test'), Mapping) and dataset.get('test') != dataset.get('val')

    def _final_test(self, model: nn.Module) -> dict:
        loader = self._loader('test', int(self.cfg.val_batch_size or self.cfg.batch_size))
        last = self.evaluate(model, loader)
        load_model_weights(model, self.ckpt_dir / 'best.safetensors')
        best = self.evaluate(model, loader)
        logger.info('test split %r | last model: %s | best model: %s', self._split_name('test'),
                    self._describe(last), self._describe(best))
        return {'test_split': self._split_name('test'), **{f'test_last_{k}': last[k] for k in self.HEADLINE},
                **{f'test_best_{k}': best[k] for k in self.HEADLINE}}

    def _describe(self, metrics: Mapping[str, Any]) -> str:
        """'oa 91.20 macc 88.00': the headline figures of a validation, for the log."""
        return ' '.join(f'{k} {metrics[k]:.2f}' for k in self.HEADLINE if metrics.get(k) is not None)

    def _split_name(self, split: str) -> str:
        """The `split` value the dataset receives, after openpoints' val<->test fallback."""
        dataset = self.cfg.dataset
        section = split if split in dataset else {'val': 'test', 'test': 'val'}.get(split, split)
        return str((dataset.get(section) or {}).get('split') or split)

    # ------------------------------------------------------------------------------------- checkpoints
    def _save(self, model: nn.Module, tag: str, info: dict, optimizer=None, scheduler=None) -> None:
        side_car = {'model': self.cfg.model.get('NAME'), 'num_classes': self.num_classes, 'cfg_hash': self.given_hash,
                    'seed': int(self.cfg.seed), **info}
        save_checkpoint(self.ckpt_dir, tag, model, side_car, optimizer, scheduler)

    def _resume(self, model: nn.Module, optimizer, scheduler) -> tuple[int, list, dict | None]:
        path = find_checkpoint(self.cfg.pretrained_path, 'last')
        info = restore_checkpoint(path, model, optimizer, scheduler)
        epoch = int(info['epoch'])
        logger.info('resumed from %s: epoch %d done, continuing at epoch %d', path, epoch, epoch + 1)
        if (path.parent / 'best.safetensors').is_file() and path.parent.resolve() != self.ckpt_dir.resolve():
            # a resume into a new run dir: carry the best model over so `best` stays consistent
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            for name in ('best.safetensors', 'best.json'):
                write_atomically(self.ckpt_dir / name, (path.parent / name).read_bytes())
        return epoch + 1, list(info.get('history') or []), info.get('best')

    # ------------------------------------------------------------------------------------- reporting
    def _run_info(self, num_params: int, history: list) -> dict:
        return {'history': history, 'seed': int(self.cfg.seed), 'device': str(self.device), 'num_params': num_params,
                'epochs': int(self.cfg.epochs), 'cfg_hash': self.given_hash, 'run_dir': str(self.run_dir),
                'seconds': round(time.perf_counter() - self.t0, 3)}

    def _labels_info(self) -> dict:
        """What a training run trained against, so that a results table built from metrics.json names its labels
        (and a teacher's figures); a test-only run trains nothing and records none."""
        return {'labels': 'hard labels'} if self.labeler is None else self.labeler.run_record()

    def _write_metrics(self, result: dict) -> None:
        write_atomically(self.run_dir / 'metrics.json', readable_json(result).encode())
        logger.info('wrote %s', self.run_dir / 'metrics.json')


# ============================================================================================ helpers
def capped_batches(num_batches: int, cap: int | None) -> int:
    """The batches an epoch or evaluation runs: all of them, or `cap` (max_train_batches, max_val_batches)."""
    return num_batches if cap is None else min(num_batches, int(cap))


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f'{hours}:{rest // 60:02d}:{rest % 60:02d}' if hours else f'{rest // 60:02d}:{rest % 60:02d}'


__all__ = ['train_classifier', 'run_training', 'resample_points', 'load_train_config', 'with_defaults',
           'TRAIN_DEFAULTS', 'MODES', 'REQUIRED_KEYS', 'BEST_NOTE']
