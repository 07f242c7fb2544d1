"""The trainer's checkpoints: model weights in safetensors with a JSON side-car, and the state a resume needs.

`<tag>.safetensors` + `<tag>.json` (epoch, metrics, history) for `last` and `best`, and `last_state.pt`: optimizer,
scheduler and RNG state as tensors and primitives only, so that it loads with `torch.load(weights_only=True)`.
Every file is written atomically. openpoints `.pth` weights load too (`load_model_weights`).
"""
from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils.io import atomic_path, write_atomically

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 'openpoints_dd.train_cls/1'


def find_checkpoint(path: str | os.PathLike, tag: Literal['last', 'best'] = 'last') -> Path:
    """The model-weights file of a checkpoint: a run dir, its `checkpoint/` dir, a prefix or the file itself.

    Raises:
        FileNotFoundError: nothing matches; the message lists what was tried.
    """
    path = Path(path)
    tried = [path]
    if path.is_dir():
        folder = path / 'checkpoint' if (path / 'checkpoint').is_dir() else path
        path = folder / f'{tag}.safetensors'
        tried.append(path)
    elif not path.exists() and not path.suffix:
        path = path.with_suffix('.safetensors')
        tried.append(path)
    if not path.is_file():
        raise FileNotFoundError(f'no checkpoint at {" or ".join(map(str, tried))}. Give a run dir, its '
                                f'checkpoint/ folder or a .safetensors / .pth file as pretrained_path.')
    return path


def load_model_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict:
    """Load weights from our `.safetensors` checkpoints or an openpoints `.pth` (`{'model': state_dict}`).

    `.pth` files are read with `torch.load(weights_only=True)`; a `module.` prefix (DDP) is stripped.

    Returns:
        The checkpoint's JSON side-car (`{}` when there is none).
    """
    path = Path(path)
    if path.suffix == '.safetensors':
        state = load_file(str(path), device='cpu')
    else:
        blob = torch.load(path, map_location='cpu', weights_only=True)
        state = blob.get('model', blob.get('state_dict', blob)) if isinstance(blob, dict) else blob
        state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise RuntimeError(f'checkpoint {path} does not fit the model {type(model).__name__}: {e}') from e
    side_car = path.with_suffix('.json')
    return json.loads(side_car.read_text()) if side_car.is_file() else {}


def resume_run_dir(cfg: Mapping[str, Any]) -> Path | None:
    """For `mode: resume` without `run_dir`: the run dir that holds the checkpoint (so the run continues there)."""
    if cfg.get('mode') != 'resume' or cfg.get('run_dir') or not cfg.get('pretrained_path'):
        return None
    ckpt = find_checkpoint(cfg['pretrained_path'], 'last')
    return ckpt.parent.parent if ckpt.parent.name == 'checkpoint' else ckpt.parent


def save_checkpoint(folder: Path, tag: str, model: nn.Module, side_car: Mapping[str, Any], optimizer=None,
                    scheduler=None) -> None:
    """`<folder>/<tag>.safetensors` (the weights) and `<tag>.json` (`side_car`: its `model` and `epoch` also go into
    the weights' metadata); with an optimizer also `<tag>_state.pt` (optimizer, scheduler and RNG state)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to('cpu', copy=True).contiguous() for k, v in model.state_dict().items()}
    meta = {'format': CHECKPOINT_FORMAT, 'epoch': str(side_car['epoch']), 'model': str(side_car['model'])}
    with atomic_path(folder / f'{tag}.safetensors') as temporary:
        save_file(state, str(temporary), metadata=meta)
    write_atomically(folder / f'{tag}.json', readable_json({'format': CHECKPOINT_FORMAT, **side_car}).encode())
    if optimizer is not None:
        blob = {'optimizer': optimizer.state_dict(),
                'scheduler': _plain_state(scheduler.state_dict(), 'scheduler') if scheduler is not None else None,
                'rng': _rng_state()}
        with atomic_path(folder / f'{tag}_state.pt') as temporary:
            torch.save(blob, temporary)
    logger.debug('saved %s checkpoint (epoch %s)', tag, side_car['epoch'])


def restore_checkpoint(path: Path, model: nn.Module, optimizer, scheduler) -> dict:
    """Load a `last` checkpoint's weights, optimizer, scheduler and RNG state (a resume); returns its side-car."""
    info = load_model_weights(model, path)
    state_path = path.with_name(path.stem + '_state.pt')
    if not state_path.is_file() or 'epoch' not in info:
        raise FileNotFoundError(f'{path} is not a resumable checkpoint: {state_path.name} or the epoch in '
                                f'{path.with_suffix(".json").name} is missing. Resume from a last.safetensors '
                                f'written by tools/train.py, or use mode=finetune to start from its weights.')
    blob = torch.load(state_path, map_location='cpu', weights_only=True)
    optimizer.load_state_dict(blob['optimizer'])
    if scheduler is not None and blob.get('scheduler') is not None:
        scheduler.load_state_dict(blob['scheduler'])
    _set_rng_state(blob['rng'])
    return info


def readable_json(payload: Mapping[str, Any]) -> str:
    """JSON with one top-level key per line and one history entry per line (diff- and grep-friendly)."""
    lines = []
    for key, value in payload.items():
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            text = '[\n' + ',\n'.join('  ' + json.dumps(v) for v in value) + '\n ]'
        else:
            text = json.dumps(value)
        lines.append(f' {json.dumps(str(key))}: {text}')
    return '{\n' + ',\n'.join(lines) + '\n}\n'


def _plain_state(value: Any, where: str) -> Any:
    """Tensors, primitives and containers of them (what `torch.load(weights_only=True)` accepts); drops the rest."""
    if torch.is_tensor(value) or value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            plain = _plain_state(v, f'{where}.{k}')
            if plain is not _SKIP:
                out[k] = plain
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain_state(v, f'{where}[{i}]') for i, v in enumerate(value)]
        return type(value)(v for v in items if v is not _SKIP)
    if isinstance(value, np.generic):
        return value.item()
    logger.warning('checkpoint: %s (%s) cannot be stored safely and is not saved', where, type(value).__name__)
    return _SKIP


_SKIP = object()


def _rng_state() -> dict:
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {'python': [version, list(state), gauss], 'torch': torch.get_rng_state(),
           'numpy': [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        rng['cuda'] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng_state(rng: Mapping[str, Any]) -> None:
    version, state, gauss = rng['python']
    random.setstate((version, tuple(state), gauss))
    torch.set_rng_state(rng['torch'])
    name, keys, pos, has_gauss, cached = rng['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if 'cuda' in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng['cuda'])
