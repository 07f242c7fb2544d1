"""Labels of a training recipe: what the clouds of a (distilled or real) set are trained against."""
from .base import DatasetIdentity, Labeler, parts_of
from .hard import HardLabels
from .losses import distillation_kl, smoothed_cross_entropy
from .teacher import TeacherLabels, dataset_identity, load_teacher, teacher_line, teacher_path

__all__ = ['DatasetIdentity', 'HardLabels', 'Labeler', 'TeacherLabels', 'dataset_identity', 'distillation_kl', 'load_teacher', 'parts_of',
           'smoothed_cross_entropy', 'teacher_line', 'teacher_path']
