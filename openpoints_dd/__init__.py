"""openpoints_dd: dataset distillation for 3D point clouds on top of openpoints.

Importing it makes openpoints work on this machine (CPU fallbacks for its compiled point ops, small
fixes) and registers every component: backbones and datasets in openpoints' MODELS / DATASETS, and the
synthesizers, objectives and rotators in our own registries.
"""
import os

# Transparent huge pages for torch's large CPU tensors. A training step allocates maps of 100+ MB afresh, and with
# 4 KB pages the kernel's faults and zeroing of each new map cost as much as some of the products that fill it.
# torch's allocator reads this once, at its first allocation: it takes effect when this package is imported
# before torch allocates (the tools do so); `THP_MEM_ALLOC_ENABLE=0` in the environment turns it off.
os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')

from .compat import apply_host_fixes  # noqa: E402

apply_host_fixes()

from . import models  # noqa: E402,F401  (registers into openpoints' MODELS)
from . import rotators, synthesizers, objectives  # noqa: E402,F401  (our registries)
from . import data  # noqa: E402,F401  (registers datasets into openpoints' DATASETS)
from . import labels  # noqa: E402,F401  (hard and teacher labels of a training recipe)
from .registry import LABELERS, OBJECTIVES, ROTATORS, SYNTHESIZERS  # noqa: E402,F401

__version__ = '0.1.0'
