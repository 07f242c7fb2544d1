"""Small shared helpers: batched point-cloud geometry (and, later, config, logging and seeding)."""
from .geometry import (UP_AXIS, euler_to_matrix, jitter, normalize_to_unit_sphere, random_rotation_matrices,
                       random_scale, random_z_rotation_matrices, rotate_perturbation, subsample_points)

__all__ = [
    'UP_AXIS', 'euler_to_matrix', 'jitter', 'normalize_to_unit_sphere', 'random_rotation_matrices',
    'random_scale', 'random_z_rotation_matrices', 'rotate_perturbation', 'subsample_points',
]
