"""The `device` config key: cpu, cuda, cuda:N or auto, resolved once for every tool."""
from __future__ import annotations

import torch


def resolve_device(name: str | None) -> torch.device:
    """'auto' (or None) picks CUDA when there is one; asking for CUDA where there is none is an error."""
    name = str(name or 'auto').lower()
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if not (name == 'cpu' or name == 'cuda' or name.startswith('cuda:')):
        raise ValueError(f"device must be 'cpu', 'cuda' (or 'cuda:<i>') or 'auto', got {name!r}")
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'device {name!r} asked for but CUDA is not available here; use device=cpu or device=auto')
    return torch.device(name)
