"""`Canonicalize`: any registered rotator as an openpoints data transform (openpoints' DataTransforms).

So PointNeXt & co. train on canonicalised clouds through tools/train.py:

    datatransforms:
      train: [PointsToTensor, Canonicalize, PointCloudScaleAndTranslate]
      val: [PointsToTensor, Canonicalize]
      kwargs: {rotator: {NAME: PCASignRotator, w0: 1.0}, shift: [0.2, 0.2, 0.2]}
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from openpoints.transforms import DataTransforms

from ..registry import build_rotator

logger = logging.getLogger(__name__)

_PREFIX = 'rotator.'


@DataTransforms.register_module()
class Canonicalize:
    """Put one sample's cloud in its rotator's canonical frame: `pos ← (pos - origin) @ basis`.

    Works on openpoints' data dict: `pos` (N, 3) numpy array or tensor (type, dtype and device kept);
    `normals` (N, 3), if present, are turned by the same basis (no shift); `x`, if it is `pos` itself or
    starts with the same xyz channels, gets the new xyz. The rotator runs without gradient, in eval mode.

    Learned weights (`LearnedSignRotator`'s w) come from `rotator_weights`:
      * a distillation artifact (`.safetensors`): its `rotator.*` tensors, and its metadata's rotator
        config when `rotator` is not given. Artifacts written so far store no rotator tensors (only the
        synthesizer's), so for a rotator with parameters this fails and says to use the checkpoint;
      * a distillation checkpoint (`checkpoint.pt`, read with `torch.load(weights_only=True)`): its
        `'rotator'` state dict; `rotator` must then be given.

    Args:
        rotator: rotator config (`NAME` + its keys). Default None: from the artifact, else
            `{NAME: PCASignRotator}`.
        rotator_weights: optional artifact or checkpoint path (see above). Default None.
        **kwargs: openpoints passes every `datatransforms.kwargs` key to every transform; the others'
            keys (shift, scale, ...) are ignored here.

    Raises:
        ValueError: a per-slot rotator (EulerRotator: its angles belong to synthetic slots and are already
            in the exported clouds; on real clouds it is the identity), a rotator config that contradicts
            the artifact's, or weights that are missing.
    """

    def __init__(self, rotator: Mapping[str, Any] | None = None, rotator_weights: str | os.PathLike | None = None,
                 **kwargs: Any):
        state = None
        if rotator_weights is not None:
            rotator, state = _read_weights(Path(rotator_weights), rotator)
        cfg = dict(rotator or {'NAME': 'PCASignRotator'})
        self.rotator = build_rotator(cfg)
        if getattr(self.rotator, 'per_slot', False):
            raise ValueError(f'Canonicalize: {cfg["NAME"]} rotates synthetic slots only (its angles are already '
                             f'applied to the exported clouds) and is the identity on real clouds. Use a '
                             f'canonicalising rotator (PCARotator, PCASignRotator, LearnedSignRotator) or drop '
                             f'Canonicalize from datatransforms.')
        if state is not None:
            try:
                self.rotator.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(f'Canonicalize: the weights in {rotator_weights} do not fit {cfg["NAME"]} '
                                 f'({cfg}): {e}') from e
        elif any(p.requires_grad for p in self.rotator.parameters()):
            logger.warning('Canonicalize: %s has learnable parameters but no rotator_weights were given; its '
                           'initial values are used', cfg['NAME'])
        self.rotator.eval()
        self.cfg = cfg

    def __repr__(self) -> str:
        return f'Canonicalize({self.rotator!r})'

    def __call__(self, data: dict) -> dict:
        pos = data['pos']
        if pos.ndim != 2 or pos.shape[-1] != 3:
            raise ValueError(f'Canonicalize expects data["pos"] of shape (N, 3), got {tuple(pos.shape)}. Put it '
                             f'before transforms that append channels to pos.')
        points = _as_tensor(pos)
        self.rotator.to(points.device)  # a no-op after the first call on a device
        with torch.no_grad():
            origin, basis = self.rotator.frame(points[None])
            out = ((points[None] - origin) @ basis)[0]
        new_pos = _like(out, pos)
        x = data.get('x')
        if x is pos:
            data['x'] = new_pos
        elif x is not None and x.ndim == 2 and x.shape[0] == pos.shape[0] and x.shape[1] >= 3 \
                and _equal(x[:, :3], pos):
            data['x'] = _replace_xyz(x, out)
        if data.get('normals') is not None:
            normals = data['normals']
            with torch.no_grad():
                turned = _as_tensor(normals).to(basis.dtype) @ basis[0]
            data['normals'] = _like(turned, normals)
        data['pos'] = new_pos
        return data


def _read_weights(path: Path, rotator: Mapping[str, Any] | None) -> tuple[Mapping[str, Any] | None, dict]:
    if not path.is_file():
        raise FileNotFoundError(f'Canonicalize: rotator_weights {path} does not exist. Pass a distillation '
                                f'artifact (runs/<run>/artifact.safetensors) or checkpoint (runs/<run>/checkpoint.pt).')
    if path.suffix == '.safetensors':
        from ..data.artifact import load_artifact
        tensors, metadata = load_artifact(path)
        stored = dict(metadata['rotator'])
        if rotator is not None and rotator.get('NAME') != stored.get('NAME'):
            raise ValueError(f'Canonicalize: rotator {dict(rotator)} contradicts the artifact {path}, which was '
                             f'distilled with {stored}. Drop `rotator` to use the artifact\'s.')
        state = {k[len(_PREFIX):]: v for k, v in tensors.items() if k.startswith(_PREFIX)}
        needs = build_rotator(stored).state_dict()
        if needs and not state:
            raise ValueError(f'Canonicalize: {stored["NAME"]} has weights {sorted(needs)} but the artifact {path} '
                             f'stores no rotator tensors (artifacts hold the synthesizer only). Pass the run\'s '
                             f'checkpoint.pt as rotator_weights, with rotator: {stored}.')
        return (rotator or stored), state
    if rotator is None:
        raise ValueError(f'Canonicalize: a checkpoint ({path}) holds no rotator config; give `rotator` too '
                         f'(the run\'s cfg.yaml distill.rotator section).')
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get('rotator'), Mapping):
        raise ValueError(f'Canonicalize: {path} is not a distillation checkpoint (no "rotator" state dict).')
    return rotator, dict(checkpoint['rotator'])


def _as_tensor(value) -> Tensor:
    tensor = torch.from_numpy(np.asarray(value)) if not torch.is_tensor(value) else value
    return tensor if tensor.is_floating_point() else tensor.float()


def _like(out: Tensor, reference):
    """`out` in `reference`'s container type and dtype (numpy stays numpy)."""
    if torch.is_tensor(reference):
        return out.to(dtype=reference.dtype if reference.is_floating_point() else out.dtype)
    return out.cpu().numpy().astype(reference.dtype if np.issubdtype(reference.dtype, np.floating) else np.float32)


def _equal(a, b) -> bool:
    if torch.is_tensor(a) != torch.is_tensor(b):
        return False
    return bool(torch.equal(a, b)) if torch.is_tensor(a) else bool(np.array_equal(a, b))


def _replace_xyz(x, xyz: Tensor):
    if torch.is_tensor(x):
        return torch.cat([xyz.to(x.dtype), x[:, 3:]], dim=1)
    out = np.array(x, copy=True)
    out[:, :3] = xyz.cpu().numpy()
    return out
