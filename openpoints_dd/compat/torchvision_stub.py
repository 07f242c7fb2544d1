"""A standard-library stand-in for the two torchvision helpers openpoints.dataset imports.

openpoints only needs `extract_archive` and `check_integrity` (to unpack and verify a downloaded
ModelNet40 zip). On a CPU torch, PyPI's torchvision either is absent or raises a RuntimeError at
import (its C++ ops are built for CUDA), which would make `openpoints.dataset` unimportable.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import types


def check_integrity(fpath: str, md5: str | None = None) -> bool:
    """True when `fpath` is a file and, if `md5` is given, its MD5 hex digest equals it."""
    if not os.path.isfile(fpath):
        return False
    if md5 is None:
        return True
    digest = hashlib.md5()
    with open(fpath, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest() == md5


def extract_archive(from_path: str, to_path: str | None = None, remove_finished: bool = False) -> str:
    """Unpack a zip/tar(.gz/.bz2/.xz) archive into `to_path` (default: the archive's folder)."""
    to_path = to_path or os.path.dirname(from_path)
    shutil.unpack_archive(from_path, to_path)
    if remove_finished:
        os.remove(from_path)
    return to_path


def install_torchvision_stub() -> bool:
    """Put the stand-in in `sys.modules` if the real `torchvision.datasets.utils` cannot be imported.

    Returns:
        True if the stub was installed, False if a working torchvision is present.
    """
    try:
        import torchvision.datasets.utils  # noqa: F401
        return False
    except Exception:  # ImportError, or RuntimeError from a CUDA-only build
        for name in [k for k in sys.modules if k == 'torchvision' or k.startswith('torchvision.')]:
            del sys.modules[name]
    package = types.ModuleType('torchvision')
    package.__path__ = []
    datasets = types.ModuleType('torchvision.datasets')
    datasets.__path__ = []
    utils = types.ModuleType('torchvision.datasets.utils')
    utils.check_integrity, utils.extract_archive = check_integrity, extract_archive
    package.datasets, datasets.utils = datasets, utils
    package.__openpoints_dd_stub__ = True
    sys.modules.update({'torchvision': package, 'torchvision.datasets': datasets,
                        'torchvision.datasets.utils': utils})
    return True
