"""`PointCloudFolderDataset`: any labelled point-cloud folder in a common layout, classes read from the data.

A user's dataset becomes distillable by YAML alone (registered in openpoints' DATASETS):

    dataset:
      common: {NAME: PointCloudFolderDataset, data_dir: /data/my_shapes}   # name: defaults to the folder's name
      train: {split: train}
      val: {split: test}

Three layouts are read, told apart by `layout: auto`: openpoints' ModelNet40Ply2048 h5 folder with any class
list (its `shape_names.txt`), ScanObjectNN-style h5 files (`data` / `label`), and one folder per class with
`train/` and `test/` folders of `.txt`, `.xyz`, `.npy` or `.ply` files. A folder of files is parsed once and
cached as `.npz` (no pickle) in `cache_dir`; a changed, added or removed source file, or a corrupt cache,
makes it re-read.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
from torch.utils.data import Dataset

from openpoints.dataset.build import DATASETS

from ..utils.io import atomic_path
from .openpoints_item import finish_item

logger = logging.getLogger(__name__)

LAYOUTS = ('auto', 'h5', 'class_folders')
NORMALIZE = ('auto', 'unit_sphere', 'none')
SPLITS = ('train', 'trainval', 'val', 'test')
FILE_SUFFIXES = ('.txt', '.xyz', '.npy', '.ply')
MODELNET_H5_FOLDER = 'modelnet40_ply_hdf5_2048'      # openpoints' ModelNet40Ply2048 layout
NAMES_FILES = ('shape_names.txt', 'classes.txt')     # one class name per line, line i = label i
DEFAULT_H5_FILES = {'train': '*train*.h5', 'test': '*test*.h5'}
CACHE_FORMAT = 'openpoints_dd.point_cloud_folder/1'


@DATASETS.register_module()
class PointCloudFolderDataset(Dataset):
    """Labelled clouds from `data_dir`, with the item format of openpoints' ModelNet40Ply2048.

    Items are `{'pos': (N, 3) float32, 'y': int64}` passed through `transform`, then `x` = `pos` (or
    `cat(pos, heights)` when a transform added `heights`); training clouds have their points shuffled, as
    openpoints does. The whole split is also available at once: `points` (M, N, 3) float32 and `labels` (M,)
    int64 (what `RealPool` reads). `classes` (names) and `num_classes` come from the data, never from YAML.

    Layouts:
        * `h5`: `data_dir/modelnet40_ply_hdf5_2048/` if it exists, else `data_dir` itself, holds `.h5` files
          with `data` (n, P, >=3) and `label` (n,) or (n, 1). The files of each split are the globs of
          `h5_files` (default `*train*.h5` and `*test*.h5`), read in name order (openpoints' ModelNet40Ply2048 takes
          the file system's order, which differs between machines; on ModelNet40 the clouds are the same). Class names: `shape_names.txt` (or
          `classes.txt`) beside the files or in `data_dir`, line i naming label i; without one the names are
          the label ids ('0', '1', ...), as many as the largest label of any split + 1.
        * `class_folders`: `data_dir/<class>/<split>/*.{txt,xyz,npy,ply}`, one cloud per file; the classes are
          the sub-folders of `data_dir` that hold a `train`, `val` or `test` folder, sorted by name. Text
          files hold one point per line (x y z first; spaces or commas; more columns are ignored). A cloud
          with more than `num_points` points keeps its first `num_points` (openpoints' rule); one with fewer
          repeats its points cyclically.

    Splits: 'train'; 'trainval' (train plus val files, where a layout has them); 'val' (the val files,
    else the test files, as openpoints' loaders do); 'test'. Any other name is an error, so no
    configuration silently reads the wrong split.

    Args:
        data_dir: the dataset folder. Relative paths are relative to the current directory.
        split: see above. Default 'train'.
        num_points: points per cloud. Default 1024.
        transform: openpoints transform applied to every item. Default None.
        name: the dataset's name in artifacts and logs. Default None: the folder's name.
        layout: 'auto' | 'h5' | 'class_folders'. Default 'auto' (a `modelnet40_ply_hdf5_2048` folder or
            `.h5` files: h5; else class folders).
        h5_files: h5 layout: `{split: glob}` relative to the h5 folder (`train`, `test`, optional `val`), e.g.
            `{train: training_objectdataset_augmentedrot_scale75.h5, test: test_objectdataset_augmentedrot_scale75.h5}`
            for one ScanObjectNN variant. Default None: `DEFAULT_H5_FILES`.
        normalize: 'unit_sphere' centres every cloud on its mean and scales its largest radius to 1 (openpoints'
            `pc_normalize`), 'none' keeps the stored coordinates, 'auto' does what openpoints' loader of that
            layout does: h5 clouds as stored (ModelNet40Ply2048, ScanObjectNNHardest), files unit-sphere
            normalised (openpoints' ModelNet text loader). Default 'auto'.
        cache_dir: where parsed class folders are cached. Default None: `$XDG_CACHE_HOME/openpoints_dd/datasets`
            (`~/.cache/...`).

    Raises:
        FileNotFoundError: `data_dir` (or a split's files) does not exist.
        ValueError: an unknown split, layout or normalisation; unreadable files; labels outside the class list.
    """

    def __init__(self, *, data_dir: str, split: str = 'train', num_points: int = 1024, transform=None,
                 name: str | None = None, layout: Literal['auto', 'h5', 'class_folders'] = 'auto',
                 h5_files: Mapping[str, str] | None = None,
                 normalize: Literal['auto', 'unit_sphere', 'none'] = 'auto', cache_dir: str | None = None):
        if not isinstance(split, str) or split.lower() not in SPLITS:
            raise ValueError(f'PointCloudFolderDataset: split must be one of {SPLITS}, got {split!r} '
                             f'(dataset.<section>.split).')
        if layout not in LAYOUTS:
            raise ValueError(f'PointCloudFolderDataset: layout must be one of {LAYOUTS}, got {layout!r}.')
        if normalize not in NORMALIZE:
            raise ValueError(f'PointCloudFolderDataset: normalize must be one of {NORMALIZE}, got {normalize!r}.')
        if int(num_points) < 1:
            raise ValueError(f'PointCloudFolderDataset: num_points must be >= 1, got {num_points}.')
        folder = Path(os.path.expanduser(str(data_dir))).absolute()
        if not folder.is_dir():
            raise FileNotFoundError(f'PointCloudFolderDataset: dataset.common.data_dir {str(data_dir)!r} does not '
                                    f'exist (resolved to {folder}, from the current directory {os.getcwd()}). '
                                    f'Point dataset.common.data_dir at the dataset folder.')
        self.data_dir, self.split, self.num_points = folder, split.lower(), int(num_points)
        self.partition = 'train' if self.split in ('train', 'trainval') else 'test'
        self.transform = transform
        self.name = str(name) if name else folder.name
        self.layout = _detect_layout(folder) if layout == 'auto' else layout
        if self.layout == 'h5':
            clouds, labels, self.classes = _read_h5(folder, self.split, dict(h5_files or DEFAULT_H5_FILES),
                                                    self.num_points)
        else:
            clouds, labels, self.classes = _read_class_folders(folder, self.split, self.num_points,
                                                               _cache_root(cache_dir), self.name)
        if normalize == 'unit_sphere' or (normalize == 'auto' and self.layout == 'class_folders'):
            clouds = _unit_sphere(clouds)
        self.normalize = normalize
        self.points, self.labels = np.ascontiguousarray(clouds, dtype=np.float32), labels.astype(np.int64)
        if len(self.labels) == 0:
            raise ValueError(f'PointCloudFolderDataset {self.name}: split {self.split!r} of {folder} holds no clouds '
                             f'({self.layout} layout); see the layouts in the class docstring.')
        logger.info('%s %s (%s, %s layout): %d clouds x %d points, %d classes', type(self).__name__, self.split,
                    self.name, self.layout, len(self.labels), self.num_points, len(self.classes))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        pos = self.points[index].copy()
        if self.partition == 'train':
            np.random.shuffle(pos)   # openpoints' ModelNet40Ply2048 shuffles training points (in place there)
        data = {'pos': pos, 'y': self.labels[index]}
        return finish_item(data, self.transform)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(name={self.name!r}, split={self.split!r}, layout={self.layout!r}, '
                f'classes={len(self.classes)}, num_points={self.num_points}, normalize={self.normalize!r})')


# ------------------------------------------------------------------------------------------- layouts
def _detect_layout(folder: Path) -> str:
    if (folder / MODELNET_H5_FOLDER).is_dir() or any(folder.glob('*.h5')):
        return 'h5'
    if _class_dirs(folder):
        return 'class_folders'
    raise ValueError(f'PointCloudFolderDataset: {folder} holds none of the layouts it reads: a '
                     f'{MODELNET_H5_FOLDER}/ folder or .h5 files (data/label), or one folder per class with '
                     f'train/ and test/ folders of {", ".join(FILE_SUFFIXES)} files. Set layout: h5 or '
                     f'class_folders to see what is missing.')


def _unit_sphere(clouds: np.ndarray) -> np.ndarray:
    """openpoints' `pc_normalize` per cloud: centre on the mean, largest radius 1. (M, N, 3) -> same."""
    centred = clouds - clouds.mean(axis=1, keepdims=True)
    radius = np.linalg.norm(centred, axis=2).max(axis=1)
    return centred / np.maximum(radius, 1e-12)[:, None, None]


def _split_parts(split: str, has_val: bool) -> list[str]:
    """The stored splits a requested split reads: val falls back to test where there is no val (openpoints)."""
    if split == 'trainval':
        return ['train', 'val'] if has_val else ['train']
    if split == 'val':
        return ['val'] if has_val else ['test']
    return [split]


def _names_file(*folders: Path) -> Path | None:
    for folder in folders:
        for name in NAMES_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


# ------------------------------------------------------------------------------------------------ h5
def _read_h5(folder: Path, split: str, patterns: dict[str, str], num_points: int
             ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import h5py
    h5_dir = folder / MODELNET_H5_FOLDER if (folder / MODELNET_H5_FOLDER).is_dir() else folder
    unknown = sorted(set(patterns) - {'train', 'val', 'test'})
    if unknown or 'train' not in patterns or 'test' not in patterns:
        raise ValueError(f'PointCloudFolderDataset: h5_files needs globs for train and test (val optional), got '
                         f'{patterns}.')
    files = {part: sorted(glob.glob(str(h5_dir / pattern))) for part, pattern in patterns.items()}
    shared = set(files['train']) & set(files['test'])
    if shared:
        raise ValueError(f'PointCloudFolderDataset: the h5 files {sorted(shared)} match both the train and the test '
                         f'glob {patterns}; set h5_files so that every file belongs to one split.')
    chosen = [p for part in _split_parts(split, 'val' in files) for p in files[part]]
    if not chosen:
        raise FileNotFoundError(f'PointCloudFolderDataset: no h5 file of split {split!r} in {h5_dir} (globs '
                                f'{patterns}). Set h5_files: {{train: <glob>, test: <glob>}} to the file names.')
    logger.info('PointCloudFolderDataset %s: reading %s', split, ', '.join(os.path.basename(p) for p in chosen))
    clouds, labels = [], []
    for path in chosen:
        with h5py.File(path, 'r') as f:
            missing = [key for key in ('data', 'label') if key not in f]
            if missing:
                raise ValueError(f'PointCloudFolderDataset: {path} has no {missing} dataset (it has {sorted(f)}); '
                                 f'h5 files need `data` (n, P, 3) and `label` (n,).')
            data, label = f['data'], f['label'][:]
            if data.ndim != 3 or data.shape[2] < 3 or len(label.reshape(-1)) != data.shape[0]:
                raise ValueError(f'PointCloudFolderDataset: {path} holds data {data.shape} and label {label.shape}; '
                                 f'expected (n, P, >=3) and (n,) or (n, 1).')
            if data.shape[1] < num_points:
                raise ValueError(f'PointCloudFolderDataset: {path} stores {data.shape[1]} points per cloud but '
                                 f'num_points is {num_points}; lower num_points to at most {data.shape[1]}.')
            clouds.append(data[:, :num_points, :3].astype(np.float32))
            labels.append(label.reshape(-1).astype(np.int64))
    labels_all = np.concatenate(labels)
    names_path = _names_file(h5_dir, folder)
    if names_path is not None:
        classes = [line.strip() for line in names_path.read_text().splitlines() if line.strip()]
    else:   # the class count must not depend on the split: take the largest label of every file
        largest = max(_largest_label(p) for part in files.values() for p in part)
        classes = [str(i) for i in range(largest + 1)]
        logger.info('PointCloudFolderDataset: no %s in %s: the class names are the label ids 0..%d',
                    ' or '.join(NAMES_FILES), h5_dir, largest)
    if labels_all.min(initial=0) < 0 or labels_all.max(initial=0) >= len(classes):
        raise ValueError(f'PointCloudFolderDataset: labels of {split} run from {labels_all.min()} to '
                         f'{labels_all.max()} but {names_path} names {len(classes)} classes; it must list one name '
                         f'per label (line i = label i).')
    return np.concatenate(clouds), labels_all, classes


def _largest_label(path: str) -> int:
    import h5py
    with h5py.File(path, 'r') as f:
        return int(np.max(f['label'][:], initial=0))


# -------------------------------------------------------------------------------------- class folders
def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith('.')
                  and any((d / part).is_dir() for part in ('train', 'val', 'test')))


def _cache_root(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(os.path.expanduser(str(cache_dir)))
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'openpoints_dd' / 'datasets'


def _read_class_folders(folder: Path, split: str, num_points: int, cache_root: Path, name: str
                        ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    class_dirs = _class_dirs(folder)
    classes = [d.name for d in class_dirs]
    has_val = any((d / 'val').is_dir() for d in class_dirs)
    files: list[tuple[Path, int]] = []
    for part in _split_parts(split, has_val):
        for label, class_dir in enumerate(class_dirs):
            part_dir = class_dir / part
            if part_dir.is_dir():
                files += [(p, label) for p in sorted(part_dir.iterdir())
                          if p.is_file() and p.suffix.lower() in FILE_SUFFIXES]
    if not files:
        raise FileNotFoundError(f'PointCloudFolderDataset: no {"/".join(FILE_SUFFIXES)} file under '
                                f'{folder}/<class>/{"+".join(_split_parts(split, has_val))}/ for split {split!r} '
                                f'(classes found: {classes}).')
    points, offsets, labels = _cached_parse(folder, files, classes, split, cache_root, name)
    clouds = np.empty((len(labels), num_points, 3), dtype=np.float32)
    padded = 0
    for i in range(len(labels)):
        cloud = points[offsets[i]:offsets[i + 1]]
        if len(cloud) < num_points:
            padded += 1
            cloud = cloud[np.arange(num_points) % len(cloud)]
        clouds[i] = cloud[:num_points]
    if padded:
        logger.info('PointCloudFolderDataset %s: %d of %d clouds have fewer than %d points and repeat theirs',
                    split, padded, len(labels), num_points)
    return clouds, labels, classes


def _cached_parse(folder: Path, files: list[tuple[Path, int]], classes: list[str], split: str, cache_root: Path,
                  name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All points of `files` (concatenated), the (M + 1,) offsets and (M,) labels: from the cache when it
    matches the source files (paths, sizes, modification times), else parsed and cached."""
    manifest = hashlib.sha256()
    for class_name in classes:
        manifest.update(f'class\t{class_name}\n'.encode())
    for path, label in files:
        stat = path.stat()
        manifest.update(f'{path.relative_to(folder)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n'.encode())
    digest = manifest.hexdigest()
    where = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    cache = cache_root / f'{re.sub(r"[^A-Za-z0-9_.-]", "_", name)}-{where}-{split}.npz'
    cached = _read_cache(cache, digest)
    if cached is not None:
        logger.info('PointCloudFolderDataset %s: %d clouds from the cache %s', split, len(files), cache)
        return cached
    logger.info('PointCloudFolderDataset %s: parsing %d files of %s (cached in %s)', split, len(files), folder, cache)
    clouds = [read_cloud(path) for path, _ in files]
    offsets = np.zeros(len(clouds) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in clouds])
    points = np.concatenate(clouds).astype(np.float32)
    labels = np.array([label for _, label in files], dtype=np.int64)
    _write_cache(cache, digest, points, offsets, labels)
    return points, offsets, labels


def _read_cache(cache: Path, digest: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as blob:
            if str(blob['format']) != CACHE_FORMAT or str(blob['manifest']) != digest:
                logger.info('PointCloudFolderDataset: the source files changed since %s was written; re-reading them',
                            cache)
                return None
            points, offsets, labels = blob['points'], blob['offsets'], blob['labels']
        valid = (points.ndim == 2 and points.shape[1] == 3 and offsets.ndim == 1 and len(offsets) == len(labels) + 1
                 and offsets[0] == 0 and offsets[-1] == len(points) and bool(np.all(np.diff(offsets) > 0)))
        if not valid:
            raise ValueError('inconsistent arrays')
        return points, offsets, labels
    except Exception as e:   # a truncated or foreign file: any reader error means "parse again"
        logger.warning('PointCloudFolderDataset: the cache %s is unreadable (%s: %s); re-reading the source files',
                       cache, type(e).__name__, e)
        return None


def _write_cache(cache: Path, digest: str, points: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> None:
    """Atomic: a reader never sees a half-written cache."""
    with atomic_path(cache) as temporary, open(temporary, 'wb') as f:
        np.savez(f, format=np.array(CACHE_FORMAT), manifest=np.array(digest), points=points, offsets=offsets,
                 labels=labels)


# ------------------------------------------------------------------------------------------ file readers
def read_cloud(path: str | os.PathLike) -> np.ndarray:
    """The xyz of one point-cloud file: (n, 3) float32, n >= 1.

    `.txt` / `.xyz`: one point per line, x y z first, separated by spaces, tabs or commas (ModelNet's
    resampled text files); `#` starts a comment. `.npy`: an (n, >=3) array (no pickle). `.ply`: the x, y, z
    properties of the `vertex` element, ASCII or binary.

    Raises:
        ValueError: an unknown suffix, or a file that holds no (n, >=3) points.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in ('.txt', '.xyz'):
            text = path.read_text().replace(',', ' ')
            lines = [line.split('#', 1)[0] for line in text.splitlines()]
            points = np.array([line.split()[:3] for line in lines if line.strip()], dtype=np.float64)
        elif suffix == '.npy':
            points = np.load(path, allow_pickle=False)
        elif suffix == '.ply':
            points = _read_ply(path)
        else:
            raise ValueError(f'unknown suffix {suffix!r}; read: {", ".join(FILE_SUFFIXES)}')
    except ValueError as e:
        raise ValueError(f'{path}: cannot read a point cloud: {e}') from e
    if points.ndim != 2 or points.shape[1] < 3 or len(points) == 0:
        raise ValueError(f'{path}: expected (n, >=3) points, got shape {points.shape}')
    return np.ascontiguousarray(points[:, :3], dtype=np.float32)


_PLY_TYPES = {'char': 'i1', 'int8': 'i1', 'uchar': 'u1', 'uint8': 'u1', 'short': 'i2', 'int16': 'i2',
              'ushort': 'u2', 'uint16': 'u2', 'int': 'i4', 'int32': 'i4', 'uint': 'u4', 'uint32': 'u4',
              'float': 'f4', 'float32': 'f4', 'double': 'f8', 'float64': 'f8'}


def _read_ply(path: Path) -> np.ndarray:
    """x, y, z of a PLY file's vertex element: (n, 3) float64. Elements before `vertex` may not hold lists
    in binary files (their size would be unknown)."""
    with open(path, 'rb') as f:
        if f.readline().strip() != b'ply':
            raise ValueError('not a PLY file (no "ply" first line)')
        fmt, elements = None, []   # elements: [name, count, [(property, type) or (property, 'list')]]
        while True:
            line = f.readline()
            if not line:
                raise ValueError('the header has no end_header line')
            words = line.decode('ascii', errors='replace').split()
            if not words or words[0] in ('comment', 'obj_info'):
                continue
            if words[0] == 'end_header':
                break
            if words[0] == 'format':
                fmt = words[1]
            elif words[0] == 'element':
                elements.append([words[1], int(words[2]), []])
            elif words[0] == 'property' and elements:
                elements[-1][2].append((words[-1], 'list' if words[1] == 'list' else words[1]))
        body = f.read()
    names = [e[0] for e in elements]
    if 'vertex' not in names:
        raise ValueError(f'no vertex element (elements: {names})')
    vertex = elements[names.index('vertex')]
    props = [p for p, _ in vertex[2]]
    if not all(axis in props for axis in 'xyz'):
        raise ValueError(f'the vertex element has no x, y, z properties (it has {props})')
    if fmt == 'ascii':
        rows = body.decode('ascii', errors='replace').splitlines()
        skip = sum(e[1] for e in elements[:names.index('vertex')])
        table = np.array([r.split()[:len(props)] for r in rows[skip:skip + vertex[1]]], dtype=np.float64)
        return table[:, [props.index(a) for a in 'xyz']]
    if fmt not in ('binary_little_endian', 'binary_big_endian'):
        raise ValueError(f'unknown PLY format {fmt!r}')
    order = '<' if fmt == 'binary_little_endian' else '>'
    offset = 0
    for element in elements[:names.index('vertex')]:
        if any(kind == 'list' for _, kind in element[2]):
            raise ValueError(f'element {element[0]!r} before vertex holds list properties; not supported in binary')
        offset += element[1] * np.dtype([(p, order + _PLY_TYPES[k]) for p, k in element[2]]).itemsize
    if any(kind == 'list' or kind not in _PLY_TYPES for _, kind in vertex[2]):
        raise ValueError(f'unsupported vertex property types {vertex[2]}')
    dtype = np.dtype([(p, order + _PLY_TYPES[k]) for p, k in vertex[2]])
    table = np.frombuffer(body, dtype=dtype, count=vertex[1], offset=offset)
    return np.stack([table[a].astype(np.float64) for a in 'xyz'], axis=1)


__all__ = ['PointCloudFolderDataset', 'read_cloud', 'LAYOUTS', 'SPLITS']
