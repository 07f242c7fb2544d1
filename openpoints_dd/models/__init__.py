"""Backbones registered in openpoints' MODELS."""
from .pct import PCTClassifier
from .pointnet import DistillPointNet, DistillPointNetSeg, pointnet_conv1d_forward

__all__ = ['DistillPointNet', 'DistillPointNetSeg', 'PCTClassifier', 'pointnet_conv1d_forward']
