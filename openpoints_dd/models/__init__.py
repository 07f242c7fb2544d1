"""Backbones registered in openpoints' MODELS."""
from .pointnet import DistillPointNet, DistillPointNetSeg, pointnet_conv1d_forward

__all__ = ['DistillPointNet', 'DistillPointNetSeg', 'pointnet_conv1d_forward']
