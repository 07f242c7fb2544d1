"""Expert trajectories for trajectory matching (MTT's `buffer.py`, baselines_spec.md §B.4 stage 1): trained
once with plain SGD, one safetensors file per expert holding every epoch's flat parameters plus JSON metadata."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _safetensors_bytes
from torch import Tensor, nn

from ..utils.io import write_atomically
from ..utils.fit import fit_epochs
from ..utils.geometry import subsample_points

__all__ = ['FORMAT_VERSION', 'METADATA_KEY', 'TENSOR_NAME', 'ExpertBufferError', 'ExpertBuffer', 'flat_parameters',
           'train_expert', 'save_expert', 'load_expert', 'expert_path']

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_KEY = 'openpoints_dd_expert'
TENSOR_NAME = 'trajectory'
# what must agree between a stored expert and the request for the file to be reused
MATCH_KEYS = ('backbone', 'dataset', 'num_classes', 'epochs', 'lr', 'batch_size', 'num_points', 'seed',
              'num_params')


class ExpertBufferError(ValueError):
    """An expert file is missing, unreadable, foreign or was trained with other settings."""


def flat_parameters(module: nn.Module) -> Tensor:
    """All parameters in `named_parameters()` order, flattened into one detached CPU float32 vector."""
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in module.parameters()])


def expert_path(buffer_dir: str | os.PathLike, index: int) -> Path:
    return Path(buffer_dir) / f'expert_{index:03d}.safetensors'


def train_expert(backbone: nn.Module, pos: Tensor, labels: Tensor, *, epochs: int, lr: float, batch_size: int,
                 num_points: int, generator: torch.Generator) -> Tensor:
    """Train `backbone` in place with plain SGD (MTT: momentum 0, weight decay 0) and return its trajectory.

    Every epoch visits the pool in a new random order; each minibatch keeps `num_points` random points of
    its clouds (renormalised), the same subsampling the distillation uses for real batches.

    Args:
        backbone: a freshly initialised network; trained in place on its own device.
        pos: (M, N, 3) float32 real clouds (any N >= num_points); labels: (M,) int64.
        epochs, lr, batch_size, num_points: the SGD run.
        generator: CPU RNG for the epoch orders and point subsets.

    Returns:
        (epochs + 1, num_params) float32 CPU tensor: row 0 the initial parameters, row e after epoch e.
    """
    device = next(backbone.parameters()).device
    optimizer = torch.optim.SGD(backbone.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    snapshots = [flat_parameters(backbone)]

    def batch_loss(clouds: Tensor, y: Tensor) -> Tensor:
        clouds = subsample_points(clouds, num_points, generator=generator).to(device)
        return F.cross_entropy(backbone(clouds), y.to(device))

    fit_epochs(optimizer, batch_loss, lambda epoch, g: (pos, labels), epochs=epochs, batch_size=batch_size,
               generator=generator, after_epoch=lambda epoch: snapshots.append(flat_parameters(backbone)))
    return torch.stack(snapshots)


def save_expert(path: str | os.PathLike, trajectory: Tensor, metadata: Mapping[str, Any]) -> Path:
    """Write one expert atomically (temporary file, fsync, rename); `format_version` is added here.

    Args:
        path: the `.safetensors` file; parent folders are created.
        trajectory: (epochs + 1, num_params) parameters per epoch, stored as float32.
        metadata: plain-JSON mapping (see `MATCH_KEYS`).

    Returns:
        The path written.

    Raises:
        ExpertBufferError: the trajectory is not 2-D or the metadata is not plain JSON.
    """
    path = Path(path)
    if trajectory.dim() != 2:
        raise ExpertBufferError(f'cannot save {path}: a trajectory is (epochs + 1, num_params), got shape '
                                f'{tuple(trajectory.shape)}')
    header = {**metadata, 'format_version': FORMAT_VERSION}
    try:
        text = json.dumps(header, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ExpertBufferError(f'cannot save {path}: metadata is not plain JSON ({e})') from e
    payload = _safetensors_bytes({TENSOR_NAME: trajectory.detach().to('cpu', torch.float32).contiguous()},
                                 metadata={METADATA_KEY: text})
    return write_atomically(path, payload)


def _open_header(path: Path) -> tuple[dict, tuple[int, ...]]:
    """The metadata and the trajectory shape of an expert file, validated, without reading the tensor."""
    if not path.is_file():
        raise ExpertBufferError(f'no expert file at {path}. Train the buffer (it is built automatically by '
                                f'TrajectoryMatching.prepare) or fix objective.buffer_dir.')
    try:
        with safe_open(str(path), framework='pt', device='cpu') as handle:
            header = handle.metadata() or {}
            shape = tuple(handle.get_slice(TENSOR_NAME).get_shape()) if TENSOR_NAME in handle.keys() else None
    except (SafetensorError, OSError) as e:
        raise ExpertBufferError(f'{path} is not a readable safetensors file (truncated or corrupt): {e}. '
                                f'Delete it and it will be retrained.') from e
    if METADATA_KEY not in header or shape is None:
        raise ExpertBufferError(f'{path} is not an openpoints_dd expert trajectory (no {METADATA_KEY!r} metadata '
                                f'or no {TENSOR_NAME!r} tensor). Point objective.buffer_dir at a buffer folder '
                                f'written by TrajectoryMatching, or at an empty folder.')
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ExpertBufferError(f'{path}: the expert metadata is not valid JSON ({e}); delete the file.') from e
    version = metadata.pop('format_version', None) if isinstance(metadata, dict) else None
    if version != FORMAT_VERSION:
        raise ExpertBufferError(f'{path}: expert format version {version!r}, this openpoints_dd reads '
                                f'{FORMAT_VERSION}. Delete the buffer folder to retrain it.')
    if len(shape) != 2 or shape[0] != int(metadata.get('epochs', -1)) + 1:
        raise ExpertBufferError(f'{path}: trajectory shape {shape} does not match its metadata '
                                f'(epochs={metadata.get("epochs")!r}); the file is corrupt, delete it.')
    return metadata, shape


def load_expert(path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> tuple[Tensor, dict]:
    """Read one expert: (trajectory (epochs + 1, num_params), metadata without `format_version`).

    Args:
        expect: if given, every key in it must equal the stored metadata's value (e.g. the dataset name).

    Raises:
        ExpertBufferError: missing, unreadable, foreign, other format version, or a mismatch with `expect`.
    """
    path = Path(path)
    metadata, _ = _open_header(path)
    _check_expected(path, metadata, expect)
    with safe_open(str(path), framework='pt', device='cpu') as handle:
        return handle.get_tensor(TENSOR_NAME), metadata


def _check_expected(path: Path, metadata: Mapping[str, Any], expect: Mapping[str, Any] | None) -> None:
    # JSON round trip so tuples compare equal to the lists that were stored
    expected = json.loads(json.dumps(dict(expect or {}), sort_keys=True))
    wrong = {k: (metadata.get(k), v) for k, v in expected.items() if metadata.get(k) != v}
    if wrong:
        detail = '; '.join(f'{k}: stored {a!r}, config {b!r}' for k, (a, b) in sorted(wrong.items()))
        raise ExpertBufferError(f'expert {path} was trained with other settings ({detail}). Use another '
                                f'objective.buffer_dir or delete this buffer to retrain it.')


class ExpertBuffer:
    """The expert files of one buffer folder, read lazily: a match only reads the two snapshots it needs.

    File `expert_<i>.safetensors` holds tensor `trajectory` (epochs + 1, num_params) float32: the parameters in
    `named_parameters()` order after initialisation and after every epoch. Its metadata (`MATCH_KEYS`, the
    expert index, training seconds, format version) decides reuse: an existing file whose metadata matches is
    loaded, a missing one is trained (an interrupted build resumes), and a mismatching or unreadable one is a
    clear error rather than a silent retrain.

    Args:
        buffer_dir: the folder of `expert_000.safetensors`, ...
        num_experts: how many experts the buffer must hold.
        expect: the metadata every expert must carry (see `MATCH_KEYS`); `seed` is the base seed,
            expert i is stored with seed + i.
    """

    def __init__(self, buffer_dir: str | os.PathLike, num_experts: int, expect: Mapping[str, Any]):
        self.buffer_dir, self.num_experts, self.expect = Path(buffer_dir), int(num_experts), dict(expect)
        self.paths = [expert_path(self.buffer_dir, i) for i in range(self.num_experts)]

    def expected(self, index: int) -> dict:
        return {**self.expect, 'seed': int(self.expect['seed']) + index, 'expert_index': index}

    def build(self, make_backbone, pos: Tensor, labels: Tensor, device: torch.device | str = 'cpu') -> float:
        """Train the experts that are missing and validate the others; returns the seconds spent training.

        Args:
            make_backbone: () -> a freshly initialised backbone; it is called under a forked RNG seeded with
                the expert's seed, so the global RNG is untouched.
        """
        seconds = 0.0
        for index, path in enumerate(self.paths):
            expected = self.expected(index)
            if path.exists():
                metadata, shape = _open_header(path)
                _check_expected(path, metadata, expected)
                continue
            started = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(expected['seed'])
                backbone = make_backbone().to(device)
            if sum(p.numel() for p in backbone.parameters()) != expected['num_params']:
                raise ExpertBufferError(f'the backbone has {sum(p.numel() for p in backbone.parameters())} '
                                        f'parameters, the buffer request says {expected["num_params"]}')
            trajectory = train_expert(backbone, pos, labels, epochs=int(expected['epochs']),
                                      lr=float(expected['lr']), batch_size=int(expected['batch_size']),
                                      num_points=int(expected['num_points']),
                                      generator=torch.Generator().manual_seed(expected['seed']))
            took = time.perf_counter() - started
            seconds += took
            save_expert(path, trajectory, {**expected, 'seconds': round(took, 1)})
            logger.info('expert %d/%d trained in %.1f s -> %s', index + 1, self.num_experts, took, path)
        return seconds

    def snapshots(self, expert: int, *epochs: int) -> list[Tensor]:
        """The flat parameters of `expert` after each of `epochs` (0 = initialisation).

        Returns:
            One (num_params,) float32 CPU tensor per epoch asked for, read from disk without the rest.

        Raises:
            ExpertBufferError: the file cannot be read any more.
        """
        path = self.paths[expert]
        try:
            with safe_open(str(path), framework='pt', device='cpu') as handle:
                rows = handle.get_slice(TENSOR_NAME)
                return [rows[epoch:epoch + 1].reshape(-1) for epoch in epochs]
        except (SafetensorError, OSError) as e:
            raise ExpertBufferError(f'cannot read expert {path} ({e}); delete it to retrain.') from e
