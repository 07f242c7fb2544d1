"""Allocator settings for CPU runs: keep freed memory in the process instead of handing it back to the OS."""
from __future__ import annotations

import ctypes
import sys

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024         # glibc's largest mmap threshold on 64-bit systems
NEVER_TRIM = -1                               # mallopt takes an int; glibc stores it as size_t, i.e. SIZE_MAX


def keep_freed_memory() -> bool:
    """glibc only: serve every block from the heap and never trim the heap back to the OS.

    Why: with glibc's defaults a training step mmaps and munmaps each activation above 32 MiB (a grouped
    (32, 128, 512, 32) map is 268 MB), and every fresh mapping is paid again in page faults, which cost
    2-10 µs each on a virtual machine. Measured (PointNet++, batch 32, 1024 points, one thread): 2.8 M faults
    and 6.7 s of a 10.2 s step in the kernel with the defaults; 0 faults and a 4.0 s step from the third
    step on with these settings (`docs/results/backbones_cpu.md`). An earlier setting kept only blocks up to
    32 MiB (mmap threshold at its maximum, trim threshold 1 GiB): it halved the faults of small-batch
    steps but left the large maps on mmap.

    The price: the process keeps its peak heap (plus fragmentation between differently sized steps: DGCNN's
    batch-32 step settles at 13 GB against 6 GB returned with the defaults) until it exits. Returns whether
    all three settings were applied (False off glibc).
    """
    if not sys.platform.startswith('linux'):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = [mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), mallopt(M_MMAP_MAX, 0),
               mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)]
    return all(bool(a) for a in applied)
