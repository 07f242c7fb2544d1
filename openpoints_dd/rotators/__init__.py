"""Rotators: map clouds (B, N, 3) to a canonical pose. Importing this registers them in ROTATORS and MODELS."""
from .base import Rotator
from .identity import IdentityRotator
from .learned_sign import LearnedSignRotator
from .pca import PCARotator, principal_axes
from .pca_sign import PCASignRotator

__all__ = ['Rotator', 'IdentityRotator', 'PCARotator', 'PCASignRotator', 'LearnedSignRotator', 'principal_axes']
