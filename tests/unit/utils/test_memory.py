"""keep_freed_memory: applied under glibc (this project's Linux hosts), a clean no-op elsewhere."""
from __future__ import annotations

import platform
import sys

import torch

from openpoints_dd.utils import memory


def test_applied_on_glibc_and_tensors_still_work():
    glibc = sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'
    assert memory.keep_freed_memory() is glibc
    a = torch.randn(3000, 3000)          # 36 MB: above the mmap threshold; smaller blocks come from the heap
    assert torch.allclose((a + 1) - 1, a, atol=1e-5) and torch.ones(1000, 1000).sum().item() == 1e6


def test_off_linux_it_does_nothing(monkeypatch):
    monkeypatch.setattr(memory.sys, 'platform', 'darwin')
    assert memory.keep_freed_memory() is False
