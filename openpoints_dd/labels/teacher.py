"""Teacher labels: a model trained once on the whole real train set labels every training batch online.

Knowledge distillation (Hinton et al. 2015) as 3D-Pruner trains its students (research/packing_and_soft_labels.md,
document 2, §2.4): loss = α · T² · KL(teacher ‖ student) + (1 - α) · smoothed cross-entropy, the teacher's logits
computed on the very batch the student sees (augmentation and fresh generator draws included), in eval mode and
without gradient. The teacher is any model a train YAML describes (cfgs/train/*.yaml), trained once by
`tools/train.py`'s trainer on the real data and cached as a safetensors file whose metadata names its config
(hash), task, dataset and test figures; a cached teacher is checked against the dataset it labels. A
part-segmentation teacher (a YAML of `task: segmentation`) gives per-point soft labels: the same loss, per point.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from openpoints.models import build_model_from_cfg
from openpoints.utils import EasyConfig

from ..data.artifact import ArtifactError, read_tensor_file, save_tensor_file
from ..data.part_pool import part_table
from ..registry import LABELERS
from ..utils.config import config_hash, load_config, resolve_path, to_plain
from .base import DatasetIdentity, Labeler, parts_of
from .losses import distillation_kl, smoothed_cross_entropy

logger = logging.getLogger(__name__)

KIND = 'teacher'
#: the test figures a teacher's metadata records, per task: the trainer's `last_<name>` as `test_<name>`
TEST_FIGURES = {'classification': ('oa', 'macc'), 'segmentation': ('instance_miou', 'class_miou')}
#: T when the labels section names none, per task (see TeacherLabels)
DEFAULT_TEMPERATURE = {'classification': 5.0, 'segmentation': 1.0}
_REMAKE = 'TeacherLabels.prepare (delete the file and it is retrained)'


@LABELERS.register_module()
class TeacherLabels(Labeler):
    """α · T² · KL(teacher ‖ student) + (1 - α) · label-smoothed cross-entropy, teacher logits online.

    Args:
        teacher: the train YAML of the teacher (e.g. cfgs/train/teacher-pointnet-modelnet40.yaml, or
            cfgs/train/partseg/teacher-embedded-pointnet.yaml for part segmentation); its dataset section must be
            the real dataset the student's classes (and parts) come from.
        overrides: `key=value` overrides of the teacher YAML (part of its identity). Default none.
        temperature: T. Default (None): 5 for classification (3D-Pruner), 1 for part segmentation, where per-point
            labels at T 5 and 2 trained worse than hard labels and T 1 better (docs/results/teacher_labels_partseg.md).
        alpha: α, the weight of the teacher term; 0 is hard-label training with the same smoothing. Default 0.8.
        smoothing: ε of the cross-entropy term (`smoothed_cross_entropy`). Default 0.2.
        cache_dir: where trained teachers are kept, one file per (YAML, overrides) config hash. Default
            runs/teachers.
        own_parts: part segmentation: the teacher term compares the two distributions over the parts of each
            shape's category only (the cross-entropy term still ranks every part). Default True. Over all parts,
            a tempered teacher spreads most of a point's mass over other categories' parts.
    """

    def __init__(self, *, teacher: str, overrides: Sequence[str] | None = None, temperature: float | None = None,
                 alpha: float = 0.8, smoothing: float = 0.2, cache_dir: str = 'runs/teachers', own_parts: bool = True):
        if temperature is not None and float(temperature) <= 0:
            raise ValueError(f'TeacherLabels: temperature must be > 0, got {temperature!r}')
        if not 0 <= float(alpha) <= 1:
            raise ValueError(f'TeacherLabels: alpha must be in [0, 1], got {alpha!r}')
        if not 0 <= float(smoothing) < 1:
            raise ValueError(f'TeacherLabels: smoothing must be in [0, 1), got {smoothing!r}')
        self.teacher, self.overrides = str(teacher), [str(o) for o in overrides or []]
        self.temperature = None if temperature is None else float(temperature)   # None: the task's, in prepare
        self.alpha, self.smoothing = float(alpha), float(smoothing)
        self.cache_dir, self.own_parts = str(cache_dir), bool(own_parts)
        self._model: nn.Module | None = None
        self._metadata: dict = {}
        self._part_table: Tensor | None = None   # (categories, parts) bool, for `own_parts`

    def prepare(self, dataset: DatasetIdentity, device: torch.device | str) -> None:
        path, cfg = teacher_path(self.teacher, self.overrides, self.cache_dir)
        with _exclusive(path.with_name(path.name + '.lock')):   # two workers never train the same teacher twice
            if not path.exists():
                train_teacher(cfg, path)
        self._model, self._metadata = load_teacher(path, dataset)
        self._model.to(device).eval()
        if self.temperature is None:
            self.temperature = DEFAULT_TEMPERATURE[dataset.task]
        if dataset.cls2parts is not None and self.own_parts:
            self._part_table = part_table(dataset.cls2parts, dataset.num_parts).to(device)
        logger.info('teacher %s: %s, %s (%.1f min to train)', path, self._metadata['model']['NAME'],
                    test_figures(self._metadata), self._metadata['minutes'])

    @torch.no_grad()
    def teacher_logits(self, inputs: Tensor | Mapping[str, Any]) -> Tensor:
        """The teacher's logits for a batch (points, or an openpoints batch dict), without gradient."""
        if self._model is None:
            raise RuntimeError('TeacherLabels used before prepare(): the teacher is not loaded')
        return self._model(_model_input(inputs))

    def loss(self, logits: Tensor, target: Tensor, inputs: Tensor | Mapping[str, Any]) -> Tensor:
        teacher_logits = self.teacher_logits(inputs)
        allowed = None
        if self._part_table is not None:   # (B, parts, 1): each shape's own parts, for every point
            allowed = self._part_table[inputs['cls'].reshape(-1).long()].unsqueeze(-1)
        return (self.alpha * distillation_kl(logits, teacher_logits, self.temperature, allowed)
                + (1 - self.alpha) * smoothed_cross_entropy(logits, target, self.smoothing))

    def describe(self) -> str:
        return 'teacher labels'

    def report(self) -> dict:
        kept = [f'test_{name}' for names in TEST_FIGURES.values() for name in names] + ['minutes', 'cfg_hash']
        teacher = {k: self._metadata[k] for k in kept if k in self._metadata}
        parts = {'own_parts': self.own_parts} if self._part_table is not None or not self.own_parts else {}
        return {'labels': self.describe(), 'temperature': self.temperature, 'alpha': self.alpha,
                'smoothing': self.smoothing, **parts, 'teacher': {'config': self.teacher, 'overrides': self.overrides,
                                                         'model': self._metadata.get('model', {}).get('NAME'),
                                                         **teacher}}


def teacher_path(teacher: str, overrides: Sequence[str], cache_dir: str) -> tuple[Path, Any]:
    """The cache file of a teacher config, `<cache_dir>/<yaml stem>-<config hash>.safetensors`, and the config."""
    cfg = load_config(teacher, list(overrides))
    if cfg.get('dataset', {}).get('common', {}).get('NAME') == 'DistilledDataset':
        raise ValueError(f'teacher {teacher} trains on a DistilledDataset; a teacher is trained on the whole real '
                         f'train set: give it the real dataset section (e.g. base: data/modelnet40ply2048.yaml)')
    return Path(resolve_path(cache_dir)) / f'{Path(teacher).stem}-{config_hash(cfg)}.safetensors', cfg


def train_teacher(cfg: Any, path: Path) -> Path:
    """Train the teacher config with tools/train.py's trainer (its task's) on its real data and cache its final
    weights.

    The training run (checkpoints, log) goes beside the cache file, so an interrupted training resumes.
    """
    from ..engine.tasks import task_of

    task = task_of(cfg)
    run_dir = path.with_suffix('')
    logger.info('training %s teacher %s (run in %s)', task.name, path.name, run_dir)
    started = time.perf_counter()
    metrics = task.train(cfg, run_dir)
    minutes = (time.perf_counter() - started) / 60
    trained_on = dataset_identity(cfg['dataset'], segmentation=task.name == 'segmentation')
    state = load_file(str(run_dir / 'checkpoint' / 'last.safetensors'), device='cpu')
    dataset = {'name': trained_on.name, 'num_classes': trained_on.num_classes,
               'class_names': list(trained_on.class_names)}
    if trained_on.cls2parts is not None:
        dataset['cls2parts'] = [list(ids) for ids in trained_on.cls2parts]
    metadata = {'kind': KIND, 'task': task.name, 'model': to_plain(cfg['model']), 'cfg_hash': config_hash(cfg),
                'dataset': dataset, **{f'test_{name}': round(float(metrics[f'last_{name}']), 2)
                                       for name in TEST_FIGURES[task.name]},
                'epochs': int(metrics['last_epoch']), 'minutes': round(minutes, 1)}
    return save_tensor_file(path, state, metadata)


def test_figures(metadata: Mapping[str, Any]) -> str:
    """A teacher's recorded test figures as text ('test OA 86.79 %'; 'test instance mIoU 80.10 %')."""
    names = {'oa': 'OA', 'macc': 'mAcc', 'instance_miou': 'instance mIoU', 'class_miou': 'class mIoU'}
    figures = [f'test {names[name]} {metadata[f"test_{name}"]} %' for names_of_task in TEST_FIGURES.values()
               for name in names_of_task[:1] if f'test_{name}' in metadata]
    return ', '.join(figures) or 'no test figure recorded'


def teacher_line(report: Mapping[str, Any]) -> str:
    """The line under a results table that names a teacher-label row's teacher (`TeacherLabels.report()`)."""
    t = report['teacher']
    config = ' '.join([t['config'], *t['overrides']])
    parts = {None: '', True: "; KL over each shape's own parts", False: '; KL over all parts'}[report.get('own_parts')]
    return (f"Teacher labels: {t['model']} from {config}, trained on the whole real train set in "
            f"{t.get('minutes', '?')} min, {test_figures(t)}; T {report['temperature']:g}, "
            f"alpha {report['alpha']:g}, smoothing {report['smoothing']:g}{parts}.")


def load_teacher(path: str | os.PathLike, dataset: DatasetIdentity | None = None) -> tuple[nn.Module, dict]:
    """Build a cached teacher and load its weights, checking that it labels `dataset`'s classes.

    Raises:
        ArtifactError: missing, corrupt or foreign file (not a teacher of ours), or a teacher of another dataset
            or class count than `dataset`.
    """
    path = Path(path)
    tensors, metadata = read_tensor_file(path, 'teacher', _REMAKE)
    if metadata.get('kind') != KIND or not isinstance(metadata.get('model'), Mapping) or 'dataset' not in metadata:
        raise ArtifactError(f'{path} is not a teacher (kind {metadata.get("kind")!r}): an openpoints_dd file of '
                            f'another kind. Point TeacherLabels at a teacher YAML; its cache file is made for you.')
    trained = metadata['dataset']
    trained_on = DatasetIdentity(str(trained['name']), tuple(str(c) for c in trained['class_names']),
                                 None if trained.get('cls2parts') is None else parts_of(trained['cls2parts']))
    if dataset is not None and trained_on != dataset:
        if trained_on.task != dataset.task:
            why = f'a {trained_on.task} teacher cannot label a {dataset.task} set'
        elif trained_on.num_classes == dataset.num_classes and trained_on.name == dataset.name:
            why = 'other class names' if trained_on.class_names != dataset.class_names else 'other parts per category'
        else:
            why = 'another dataset'
        raise ArtifactError(f'teacher {path} was trained on {trained_on.describe()} but the set to label comes from '
                            f'{dataset.describe()}: {why}. Give TeacherLabels a teacher YAML whose dataset section '
                            f'(and task) is that of the set.')
    model = build_model_from_cfg(EasyConfig(to_plain(metadata['model'])))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f'teacher {path}: its weights do not fit its model {metadata["model"].get("NAME")}: '
                            f'{e}. The file is corrupt; delete it to retrain the teacher.') from e
    return model, metadata


def dataset_identity(dataset_cfg: Mapping[str, Any], segmentation: bool = False) -> DatasetIdentity:
    """The name and class list (and, for `segmentation`, parts per category) of a dataset section's train split,
    as `RealPool` records them (a dataset that knows its own name is recorded under it, openpoints' datasets
    under their NAME)."""
    from openpoints.dataset.build import DATASETS
    common = dict(dataset_cfg['common'])
    common.pop('rotation', None)
    split = {**dict(dataset_cfg.get('train') or {}), 'transform': None}
    split.pop('rotation', None)
    return DatasetIdentity.of(DATASETS.build(common, default_args=split), str(common['NAME']), segmentation)


def _model_input(inputs: Tensor | Mapping[str, Any]) -> Any:
    """What any openpoints classifier takes: the student's batch dict as is, or points (B, N, 3) as `pos` and `x`."""
    if torch.is_tensor(inputs):
        return {'pos': inputs, 'x': inputs.transpose(1, 2).contiguous()}
    return inputs


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive lock on `lock_path` (created if needed) for the duration of the block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, 'a') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
