"""Synthesizers: how the synthetic set is parameterised (registered in SYNTHESIZERS)."""
from . import coresets
from .base import Synthesizer
from .explicit_points import ExplicitPoints
from .morphed_clouds import MorphedClouds, align_points
from .point_generator import PointGenerator, chamfer_distance
from .part_generator import PartPointGenerator

__all__ = ['coresets', 'Synthesizer', 'ExplicitPoints', 'MorphedClouds', 'align_points', 'PointGenerator', 'PartPointGenerator', 'chamfer_distance']
