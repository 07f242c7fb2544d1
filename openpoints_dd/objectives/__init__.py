"""Objectives: how synthetic and real batches of one class are compared (registered in OBJECTIVES)."""
from .base import Objective, ObjectiveBase, SetObjective
from .distribution_matching import DistributionMatching
from .gradient_matching import GradientMatching, gradient_distance
from .model_queue import SemiTrainedQueue
from .m3d import M3D, fps_partitions, uniformity
from .part_gradient_matching import PartGradientMatching
from .sadm import SADM, rbf_mmd, sadm_loss, sort_point_features
from .trajectory_matching import TrajectoryMatching

__all__ = ['Objective', 'ObjectiveBase', 'SetObjective', 'DistributionMatching', 'M3D', 'fps_partitions', 'uniformity', 'SADM', 'SemiTrainedQueue', 'rbf_mmd', 'sadm_loss', 'sort_point_features',
           'GradientMatching', 'PartGradientMatching', 'TrajectoryMatching', 'gradient_distance']
