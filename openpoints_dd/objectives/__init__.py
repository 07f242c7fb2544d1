"""Objectives: how synthetic and real batches of one class are compared (registered in OBJECTIVES)."""
from .base import Objective
from .gradient_matching import GradientMatching, gradient_distance

__all__ = ['Objective', 'GradientMatching', 'gradient_distance']
