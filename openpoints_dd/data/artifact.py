"""The distilled-set file format: a safetensors file plus one versioned JSON metadata string.

No pickle anywhere: tensors go through safetensors, everything else through JSON.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _safetensors_bytes
from torch import Tensor

from ..utils.io import write_atomically

__all__ = ['FORMAT_VERSION', 'METADATA_KEY', 'KINDS', 'REQUIRED_KEYS', 'ArtifactError', 'save_artifact',
           'load_artifact', 'save_tensor_file', 'read_tensor_file']

FORMAT_VERSION = 1
METADATA_KEY = 'openpoints_dd'  # the one safetensors header-metadata entry we write
KINDS = ('points', 'generator')
REQUIRED_KEYS = ('kind', 'synthesizer', 'objective', 'rotator', 'dataset', 'cpc', 'num_points')


class ArtifactError(ValueError):
    """An artifact cannot be written or read: bad metadata, a missing, corrupt or foreign file, an
    unsupported format version, or a file made for another dataset."""


def save_artifact(path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> Path:
    """Write a distilled set (or its generator) atomically as safetensors with JSON metadata.

    The file's safetensors header holds one metadata entry, `'openpoints_dd'`: the JSON of `metadata`
    plus `format_version` (= `FORMAT_VERSION`, set here; a `format_version` in `metadata` is replaced).
    Written atomically (`utils.io.write_atomically`): a reader never sees a half-written artifact.

    Args:
        path: destination file, conventionally `<run dir>/artifact.safetensors`.
        tensors: name → tensor (any device and dtype; copied to CPU). Names are the caller's; the
            convention is `pos` (S, N, 3) and `y` (S,) for kind 'points', and the synthesizer's
            `state_dict` for kind 'generator'.
        metadata: JSON-serialisable mapping with at least
            `kind` ('points' | 'generator'),
            `synthesizer`, `objective`, `rotator` (mappings with a string `NAME`),
            `dataset` (mapping with `name` str, `num_classes` int, `class_names` list of str),
            `cpc` (int >= 1) and `num_points` (int >= 1).
            Tuples are stored as lists; mapping keys must be strings.

    Returns:
        The path written, as a `Path`.

    Raises:
        ArtifactError: if a required key is missing or malformed, a value is not JSON-serialisable
            (the message names it), or `tensors` is not a mapping of str to Tensor.
    """
    path = Path(path)
    _check_metadata(metadata, f'metadata for {path}')
    return save_tensor_file(path, tensors, metadata)


def save_tensor_file(path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> Path:
    """Any file of ours: tensors through safetensors, `metadata` (plain JSON, plus `format_version`) as the one
    `'openpoints_dd'` header entry, written atomically (`write_atomically`). Artifacts, teachers.

    Raises:
        ArtifactError: a value is not JSON-serialisable (the message names it), or `tensors` is not a mapping
            of str to Tensor.
    """
    path = Path(path)
    copies = _cpu_copies(tensors, path)
    header = {**metadata, 'checksum': content_checksum(copies), 'format_version': FORMAT_VERSION}
    payload = _safetensors_bytes(copies, metadata={METADATA_KEY: _to_json(header, path)})
    return write_atomically(path, payload)


def content_checksum(tensors: Mapping[str, Tensor]) -> str:
    """sha256 of every tensor's name, dtype, shape and bytes, in name order: what `read_tensor_file` verifies, so a
    file whose tensor bytes changed after writing (a bad copy, a bit flip) is refused even where it still parses."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        # reshape(-1): a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes as it is
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b'')
    return digest.hexdigest()


def load_artifact(path: str | os.PathLike, *, expect_dataset: str | None = None,
                  expect_num_classes: int | None = None) -> tuple[dict[str, Tensor], dict]:
    """Read an artifact written by `save_artifact`, checking its format and, optionally, its dataset.

    Args:
        path: the `.safetensors` file.
        expect_dataset: if given, the dataset name the caller will use; it must equal
            `metadata['dataset']['name']`. Default None (not checked).
        expect_num_classes: if given, it must equal `metadata['dataset']['num_classes']`. Default None.

    Returns:
        tensors: name → CPU tensor, exactly as saved.
        metadata: the caller's metadata as saved (JSON round trip: tuples come back as lists), without
            `format_version`.

    Raises:
        ArtifactError: the file is missing; is not a readable safetensors file (truncated, corrupt, not
            safetensors); was not written by openpoints_dd (no `'openpoints_dd'` header entry); has an
            unknown or newer format version; has malformed metadata; or was made for another dataset.
    """
    path = Path(path)
    tensors, metadata = read_tensor_file(path, 'artifact', 'tools/distill.py')
    _check_metadata(metadata, str(path))
    _check_tensors(tensors, metadata, path)
    dataset = metadata['dataset']
    name_differs = expect_dataset is not None and dataset['name'] != expect_dataset
    count_differs = expect_num_classes is not None and dataset['num_classes'] != expect_num_classes
    if name_differs or count_differs:
        wanted = expect_dataset if expect_dataset is not None else 'a dataset'
        if expect_num_classes is not None:
            wanted += f' ({expect_num_classes} classes)'
        raise ArtifactError(f'artifact {path} was written for {dataset["name"]} ({dataset["num_classes"]} '
                            f'classes) but the config asks for {wanted}. Point the config at an artifact '
                            f'distilled from that dataset, or change its dataset section.')
    return tensors, metadata


def read_tensor_file(path: str | os.PathLike, what: str = 'artifact',
                     remake: str = 'tools/distill.py') -> tuple[dict[str, Tensor], dict]:
    """Read a file written by `save_tensor_file`: its tensors and its metadata (without `format_version`).

    Args:
        what: what the file is, for the messages ('artifact', 'teacher').
        remake: the command that makes such a file, for the messages.

    Raises:
        ArtifactError: missing, not a file, not a readable safetensors file (truncated, corrupt, another
            format), not written by openpoints_dd (no `'openpoints_dd'` header entry), metadata that is not a
            JSON object, or an unknown or newer format version.
    """
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f'no {what} at {path}: the file does not exist. Check the path, or create it '
                            f'with {remake}.')
    if not path.is_file():
        raise ArtifactError(f'{what} path {path} is not a file (a directory?). Pass the .safetensors file '
                            f'itself, e.g. {path / (what + ".safetensors")}.')
    try:
        with safe_open(str(path), framework='pt', device='cpu') as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except SafetensorError as e:
        raise ArtifactError(f'{path} is not a readable safetensors file (truncated, corrupt, or another '
                            f'format): {e}. Re-create it with {remake}.') from e

    if METADATA_KEY not in header:
        found = ', '.join(sorted(header)) or 'none'
        raise ArtifactError(f'{path} is a safetensors file but was not written by openpoints_dd: its header '
                            f'has no {METADATA_KEY!r} metadata entry (entries found: {found}). Only '
                            f'{what}s saved by {remake} can be loaded here.')
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ArtifactError(f'{path}: the {METADATA_KEY!r} metadata is not valid JSON ({e}); the file is '
                            f'corrupt. Re-create it with {remake}.') from e
    if not isinstance(metadata, dict):
        raise ArtifactError(f'{path}: the {METADATA_KEY!r} metadata must be a JSON object, got '
                            f'{type(metadata).__name__}; the file is corrupt. Re-create it with {remake}.')

    version = metadata.pop('format_version', None)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ArtifactError(f'{path}: unknown {what} format version {version!r} (this openpoints_dd reads '
                            f'version {FORMAT_VERSION}). Re-run {remake} to re-create the {what}.')
    if version > FORMAT_VERSION:
        raise ArtifactError(f'{path}: {what} format version {version} is newer than this openpoints_dd '
                            f'supports (version {FORMAT_VERSION}). Upgrade openpoints_dd to read it.')
    if version != FORMAT_VERSION:
        raise ArtifactError(f'{path}: {what} format version {version} is not supported by this version of '
                            f'openpoints_dd (expects {FORMAT_VERSION}). Re-run {remake}.')
    stored = metadata.pop('checksum', None)   # files written before checksums were kept have none
    if stored is not None and stored != content_checksum(tensors):
        raise ArtifactError(f'{path}: its tensors do not match the checksum written with them: the file is corrupt '
                            f'(changed after it was written). Re-create it with {remake}.')
    return tensors, metadata


def _check_tensors(tensors: Mapping[str, Tensor], metadata: Mapping[str, Any], path: Path) -> None:
    """A points set's clouds and labels, or a synthesizer's weights, as a trainer can use them."""
    if any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors.values()):
        bad = sorted(name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all())
        raise ArtifactError(f'{path}: tensors {bad} hold NaN or infinite values; the set cannot be trained on. '
                            f'Re-run tools/distill.py (with a lower synthesizer learning rate if it diverged).')
    if metadata['kind'] != 'points' or 'pos' not in tensors or 'y' not in tensors:
        return
    pos, labels, num_classes = tensors['pos'], tensors['y'], metadata['dataset']['num_classes']
    if pos.dim() != 3 or pos.shape[-1] < 3 or labels.dim() != 1 or len(labels) != len(pos):
        raise ArtifactError(f'{path}: a points set holds pos (S, N, 3) and y (S,), got {tuple(pos.shape)} and '
                            f'{tuple(labels.shape)}')
    if labels.is_floating_point() or (len(labels) and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ArtifactError(f'{path}: labels must be class indices in [0, {num_classes}), got '
                            f'{labels.dtype} values {labels.min().item()}..{labels.max().item()}')
    if pos.shape[1] != metadata['num_points']:
        raise ArtifactError(f'{path}: its clouds hold {pos.shape[1]} points but its metadata says num_points '
                            f'{metadata["num_points"]}: the file is inconsistent. Re-run tools/distill.py.')


def _check_metadata(metadata: Any, where: str) -> None:
    """Raise an ArtifactError unless `metadata` has every required key in the expected form."""
    if not isinstance(metadata, Mapping):
        raise ArtifactError(f'{where}: metadata must be a mapping, got {type(metadata).__name__}.')
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise ArtifactError(f'{where}: metadata lacks the required keys {missing} (required: '
                            f'{list(REQUIRED_KEYS)}).')
    if metadata['kind'] not in KINDS:
        raise ArtifactError(f"{where}: metadata['kind'] must be one of {list(KINDS)}, got {metadata['kind']!r}.")
    for role in ('synthesizer', 'objective', 'rotator'):
        section = metadata[role]
        if not isinstance(section, Mapping) or not isinstance(section.get('NAME'), str):
            raise ArtifactError(f"{where}: metadata['{role}'] must be the {role} config, a mapping with a "
                                f"string NAME, got {section!r}.")
    dataset = metadata['dataset']
    if not isinstance(dataset, Mapping):
        raise ArtifactError(f"{where}: metadata['dataset'] must be a mapping with name, num_classes and "
                            f"class_names, got {type(dataset).__name__}.")
    missing = [key for key in ('name', 'num_classes', 'class_names') if key not in dataset]
    if missing:
        raise ArtifactError(f"{where}: metadata['dataset'] lacks {missing} (required: name, num_classes, "
                            f"class_names).")
    if not isinstance(dataset['name'], str):
        raise ArtifactError(f"{where}: metadata['dataset']['name'] must be a string, got {dataset['name']!r}.")
    if not _is_count(dataset['num_classes']):
        raise ArtifactError(f"{where}: metadata['dataset']['num_classes'] must be an int >= 1, got "
                            f"{dataset['num_classes']!r}.")
    names = dataset['class_names']
    if (not isinstance(names, (list, tuple)) or len(names) != dataset['num_classes']
            or not all(isinstance(n, str) for n in names)):
        raise ArtifactError(f"{where}: metadata['dataset']['class_names'] must be a list of "
                            f"{dataset['num_classes']} strings (one per class), got {names!r}.")
    for key in ('cpc', 'num_points'):
        if not _is_count(metadata[key]):
            raise ArtifactError(f"{where}: metadata['{key}'] must be an int >= 1, got {metadata[key]!r}.")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _to_json(header: dict, path: Path) -> str:
    problem = _first_unserialisable(header, 'metadata')
    if problem is not None:
        raise ArtifactError(f'cannot save {path}: {problem}. Metadata must be plain JSON (dict with str keys, '
                            f'list, tuple, str, int, float, bool, None); convert tensors and numpy values '
                            f'with .tolist() or .item().')
    return json.dumps(header, sort_keys=True, allow_nan=False)


def _first_unserialisable(value: Any, where: str) -> str | None:
    """Describe the first value under `value` that JSON cannot round-trip, or None if there is none."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f'{where} is {value} (JSON has no NaN or infinity)'
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f'{where} has a non-string key {key!r} ({type(key).__name__})'
            problem = _first_unserialisable(item, f'{where}[{key!r}]')
            if problem is not None:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            problem = _first_unserialisable(item, f'{where}[{index}]')
            if problem is not None:
                return problem
        return None
    return f'{where} is a {type(value).__module__}.{type(value).__qualname__}, which JSON cannot store'


def _cpu_copies(tensors: Mapping[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Contiguous CPU copies: safetensors refuses tensors that share storage, and copies never do."""
    if not isinstance(tensors, Mapping):
        raise ArtifactError(f'cannot save {path}: tensors must be a mapping of name to Tensor, got '
                            f'{type(tensors).__name__}.')
    copies = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not torch.is_tensor(tensor):
            raise ArtifactError(f'cannot save {path}: tensors must map str to Tensor, got {name!r}: '
                                f'{type(tensor).__name__}.')
        copies[name] = tensor.detach().to('cpu', copy=True).contiguous()
    return copies
