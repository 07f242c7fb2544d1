"""Mixed precision for training: the `amp` config key, bf16 autocast of the forward, losses kept in fp32.

`amp: bf16` runs the forward (and the loss call) under `torch.autocast(device_type, torch.bfloat16)`;
parameters, gradients and optimizer state stay fp32 (autocast casts copies of the weights for each matmul or
convolution; the fp32 parameters are the master weights the optimizer updates). What autocast already keeps in
fp32 on CPU (torch 2.13, checked in tests/unit/utils/test_precision.py): `cross_entropy` and `nll_loss`,
`cdist`. What it does not: `log_softmax` and `softmax` (openpoints' `SmoothCrossEntropy` is built on
`log_softmax`), so `fp32_criteria` runs every criterion in fp32 on fp32 logits. Batch and layer norm run in the
input's dtype but accumulate their statistics in fp32 inside the kernel, and their affine parameters and
running statistics stay fp32.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import Tensor, nn

AMP_CHOICES = (None, 'fp32', 'bf16')


def check_amp(value: Any, key: str = 'amp') -> str | None:
    """The `amp` setting, validated: None (or 'fp32', the same: full precision) or 'bf16'.

    Raises:
        ValueError: any other value; the message names the key and the choices.
    """
    if value in AMP_CHOICES:
        return value
    raise ValueError(f"{key} must be one of null, 'fp32' (full precision) or 'bf16' (bfloat16 autocast of the "
                     f"forward and loss, fp32 master weights), got {value!r}. Set {key}=bf16 or {key}=null.")


def autocast(amp: str | None, device: torch.device | str) -> contextlib.AbstractContextManager:
    """`torch.autocast(device type, bfloat16)` for `amp='bf16'`, else a no-op context."""
    if check_amp(amp) != 'bf16':
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def fp32_criteria(*criteria: nn.Module | None) -> Iterator[None]:
    """Inside the block, each criterion computes in fp32: autocast off, floating tensor inputs cast to fp32.

    The criteria stay the same objects (a model's `get_logits_loss` keeps calling `self.criterion`); only their
    `forward` is wrapped for the duration, on the instance, and restored on exit. None entries are skipped.
    """
    wrapped = []
    try:
        for criterion in criteria:
            if criterion is None or 'forward' in vars(criterion):
                continue
            original = criterion.forward

            def forward(*args, _original=original, **kwargs):
                args, kwargs = _to_fp32(args), {k: _to_fp32(v) for k, v in kwargs.items()}
                with contextlib.ExitStack() as stack:
                    for device_type in {'cpu'} | _device_types((args, kwargs)):
                        stack.enter_context(torch.autocast(device_type, enabled=False))
                    return _original(*args, **kwargs)
            criterion.forward = forward
            wrapped.append(criterion)
        yield
    finally:
        for criterion in wrapped:
            del criterion.forward


def _to_fp32(value: Any) -> Any:
    """Half-precision tensors (also inside lists, tuples and dicts) as fp32; everything else unchanged."""
    if isinstance(value, Tensor):
        return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_fp32(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_fp32(v) for k, v in value.items()}
    return value


def _device_types(value: Any) -> set[str]:
    if isinstance(value, Tensor):
        return {value.device.type}
    if isinstance(value, (list, tuple)):
        return set().union(*(_device_types(v) for v in value)) if value else set()
    if isinstance(value, dict):
        return _device_types(list(value.values()))
    return set()
