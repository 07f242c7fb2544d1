"""Makes openpoints 0.1.2 usable on the machine it runs on (CPU fallbacks and small fixes).

`apply_host_fixes()` is called once by `import openpoints_dd`; every step is idempotent.
"""
from __future__ import annotations

import collections
import collections.abc
import warnings

from .torchvision_stub import install_torchvision_stub

_APPLIED = False


def apply_host_fixes() -> None:
    """Stub torchvision if broken, restore `collections.Iterable`, patch the point ops and the grouped blocks
    (channels-last CPU paths), check ModelNet40Ply2048's data folder instead of downloading, register models."""
    global _APPLIED
    if _APPLIED:
        return
    install_torchvision_stub()
    # openpoints' PointCloudRotation still uses the alias removed in Python 3.10.
    if not hasattr(collections, 'Iterable'):
        collections.Iterable = collections.abc.Iterable
    with warnings.catch_warnings():
        # openpoints imports trigger FutureWarnings about torch.cuda.amp.custom_fwd; they are upstream's.
        warnings.filterwarnings('ignore', category=FutureWarning)
        import openpoints.models  # noqa: F401
        import openpoints.models.backbone.pointvector  # noqa: F401  (registers PointVector*, not imported upstream)
        import openpoints.dataset  # noqa: F401
    from . import channels_last, cuda_fixes, modelnet40_loader, point_ops
    point_ops.install()
    cuda_fixes.install()
    channels_last.install()
    modelnet40_loader.install()   # a missing data folder is an error, not a download that leaves an empty folder
    _APPLIED = True
