"""Datasets and data helpers of openpoints_dd; importing this registers them in openpoints' DATASETS."""
from .artifact import ArtifactError, load_artifact, save_artifact
from .distilled_dataset import DistilledDataset
from .embedded_shapes import EmbeddedShapes, EmbeddedShapesPart, generate_embedded_shapes
from .point_cloud_folder import PointCloudFolderDataset
from .real_pool import RealPool
from .rotated_dataset import RotatedDataset
from .rotation import DatasetRotation
from .synthetic_set import SyntheticSet

__all__ = ['ArtifactError', 'DatasetRotation', 'DistilledDataset', 'EmbeddedShapes', 'EmbeddedShapesPart',
           'PointCloudFolderDataset', 'RealPool', 'RotatedDataset', 'SyntheticSet', 'generate_embedded_shapes',
           'load_artifact', 'save_artifact']
