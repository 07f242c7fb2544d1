"""keep_freed_memory: applied under glibc (this project's Linux hosts), a clean no-op elsewhere."""
from __future__ import annotations

import platform
import resource
import sys

import pytest
import torch

from openpoints_dd.utils import memory

GLIBC = sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'


def test_applied_on_glibc_and_tensors_still_work():
    assert memory.keep_freed_memory() is GLIBC
    a = torch.randn(3000, 3000)          # 36 MB: above glibc's largest mmap threshold
    assert torch.allclose((a + 1) - 1, a, atol=1e-5) and torch.ones(1000, 1000).sum().item() == 1e6


@pytest.mark.skipif(not GLIBC, reason='the setting exists only under glibc')
def test_a_freed_large_block_is_reused_without_page_faults():
    """The point of the setting: a 128 MB activation freed and allocated again costs no fresh pages.

    With glibc's defaults every cycle maps the block afresh (32768 faults); here the heap settles within a
    few cycles (in a fresh process at once; under pytest's own heap use after two or three).
    """
    memory.keep_freed_memory()
    faults = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(32 * 2 ** 20)                                  # 128 MB, touched, then freed
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    assert min(faults[1:]) < 32 * 2 ** 20 * 4 // 4096 // 10, f'page faults per cycle {faults}: no block was reused'


def test_off_linux_it_does_nothing(monkeypatch):
    monkeypatch.setattr(memory.sys, 'platform', 'darwin')
    assert memory.keep_freed_memory() is False
