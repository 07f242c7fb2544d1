"""openpoints_dd: dataset distillation for 3D point clouds on top of openpoints.

openpoints itself is not listed in install_requires: its torchvision requirement pulls a CUDA torch.
Install it with `pip install --no-deps openpoints==0.1.2` (the Makefile does).
"""
from setuptools import find_packages, setup

setup(
    name='openpoints_dd',
    version='0.1.0',
    description='Dataset distillation for 3D point clouds (DD3D, SADM, GM, DM, MTT, coresets) on openpoints',
    packages=find_packages(include=['openpoints_dd', 'openpoints_dd.*']),
    python_requires='>=3.9',
    install_requires=['torch', 'numpy', 'scipy', 'pyyaml', 'multimethod', 'termcolor', 'shortuuid',
                      'scikit-learn', 'tqdm', 'easydict', 'h5py', 'safetensors', 'matplotlib'],
)
