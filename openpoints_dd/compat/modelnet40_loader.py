"""openpoints' ModelNet40Ply2048 without its download: a missing or empty data folder is a clear error.

Upstream, a `data_dir` that does not exist makes the loader create it and download the archive from
shapenet.cs.stanford.edu (offline for years); the download fails and leaves an empty folder, which the next run
then reads as "no h5 files" (`need at least one array to concatenate`). Under any script that imports
openpoints_dd first (tools/*, PointNeXt's main.py through tools/pointnext_main.py) the folder is checked before
anything is created. A `shape_names.txt` that lists other classes than the 40 the loader hard-codes gets a
warning naming `PointCloudFolderDataset`, which reads the class list from the data.
"""
from __future__ import annotations

import functools
import glob
import logging
import os

logger = logging.getLogger(__name__)


def check_modelnet40_folder(data_dir: str, split: str) -> str:
    """The folder ModelNet40Ply2048 will read, resolved as upstream does (a leading '.' joins the cwd), checked.

    Raises:
        FileNotFoundError: the folder, or its `modelnet40_ply_hdf5_2048/ply_data_<partition>*.h5` files, are
            missing. The message names `dataset.common.data_dir`, the resolved path and the fix.
    """
    folder = os.path.join(os.getcwd(), data_dir) if str(data_dir).startswith('.') else str(data_dir)
    partition = 'train' if str(split).lower() == 'train' else 'test'
    fix = ('Point dataset.common.data_dir at a folder that holds modelnet40_ply_hdf5_2048/ply_data_{train,test}*.h5 '
           '(e.g. dataset.common.data_dir=/path/to/ModelNet40Ply2048); openpoints_dd does not download it')
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'ModelNet40Ply2048: dataset.common.data_dir {data_dir!r} does not exist (resolved to '
                                f'{os.path.abspath(folder)}). {fix}.')
    files = glob.glob(os.path.join(folder, 'modelnet40_ply_hdf5_2048', f'ply_data_{partition}*.h5'))
    if not files:
        raise FileNotFoundError(f'ModelNet40Ply2048: dataset.common.data_dir {data_dir!r} ({os.path.abspath(folder)}) '
                                f'holds no modelnet40_ply_hdf5_2048/ply_data_{partition}*.h5 (an empty folder left by '
                                f'a failed download?). {fix}.')
    return folder


def install() -> None:
    from openpoints.dataset.modelnet.modelnet40_ply_2048_loader import ModelNet40Ply2048
    if getattr(ModelNet40Ply2048, '_openpoints_dd_patched', False):
        return
    original_init = ModelNet40Ply2048.__init__

    @functools.wraps(original_init)
    def __init__(self, num_points=1024, data_dir='./data/ModelNet40Ply2048', split='train', transform=None):
        folder = check_modelnet40_folder(data_dir, split)
        names_file = os.path.join(folder, 'modelnet40_ply_hdf5_2048', 'shape_names.txt')
        if os.path.isfile(names_file):
            with open(names_file) as f:
                names = [line.strip() for line in f if line.strip()]
            if names != list(ModelNet40Ply2048.classes):
                logger.warning('ModelNet40Ply2048: %s lists %d classes (%s...) but this loader hard-codes '
                               'ModelNet40\'s 40; to use the data\'s own classes, set dataset.common.NAME: '
                               'PointCloudFolderDataset',
                               names_file, len(names), ', '.join(names[:3]))
        original_init(self, num_points=num_points, data_dir=data_dir, split=split, transform=transform)

    ModelNet40Ply2048.__init__ = __init__
    ModelNet40Ply2048._openpoints_dd_patched = True
