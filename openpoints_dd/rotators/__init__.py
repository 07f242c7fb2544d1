"""Rotators: map clouds (B, N, 3) to a canonical pose. Importing this registers them in ROTATORS and MODELS."""
from .base import Rotator
from .euler import EulerRotator, euler_matrices
from .identity import IdentityRotator
from .learned_sign import LearnedSignRotator
from .pca import PCARotator, principal_axes
from .pca_sign import PCASignRotator
from .transforms import Canonicalize

__all__ = ['Rotator', 'Canonicalize', 'IdentityRotator', 'PCARotator', 'PCASignRotator', 'LearnedSignRotator',
           'EulerRotator', 'euler_matrices', 'principal_axes']
