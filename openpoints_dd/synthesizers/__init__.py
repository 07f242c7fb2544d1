"""Synthesizers: how the synthetic set is parameterised (registered in SYNTHESIZERS)."""
from .base import Synthesizer
from .explicit_points import ExplicitPoints
from .point_generator import PointGenerator, chamfer_distance

__all__ = ['Synthesizer', 'ExplicitPoints', 'PointGenerator', 'chamfer_distance']
