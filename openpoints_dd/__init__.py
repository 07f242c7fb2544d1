"""openpoints_dd: dataset distillation for 3D point clouds on top of openpoints.

Importing it makes openpoints work on this machine (CPU fallbacks for its compiled point ops, small
fixes) and registers every component: backbones and datasets in openpoints' MODELS / DATASETS, and the
synthesizers, objectives and rotators in our own registries.
"""
from .compat import apply_host_fixes

apply_host_fixes()

from . import models  # noqa: E402,F401  (registers into openpoints' MODELS)
from . import rotators, synthesizers, objectives  # noqa: E402,F401  (our registries)
from . import data  # noqa: E402,F401  (registers datasets into openpoints' DATASETS)
from . import labels  # noqa: E402,F401  (hard and teacher labels of a training recipe)
from .registry import LABELERS, OBJECTIVES, ROTATORS, SYNTHESIZERS  # noqa: E402,F401

__version__ = '0.1.0'
