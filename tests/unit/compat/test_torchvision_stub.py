"""The standard-library torchvision stand-in used by openpoints.dataset."""
from __future__ import annotations

import hashlib
import sys
import tarfile
import zipfile

import openpoints_dd  # noqa: F401  (installs the stub when torchvision is unusable)
from openpoints_dd.compat.torchvision_stub import check_integrity, extract_archive, install_torchvision_stub


def test_check_integrity(tmp_path):
    path = tmp_path / 'file.bin'
    path.write_bytes(b'point clouds')
    md5 = hashlib.md5(b'point clouds').hexdigest()
    assert check_integrity(str(path), md5)
    assert check_integrity(str(path))                                    # no md5: existence only
    assert not check_integrity(str(path), '0' * 32)
    assert not check_integrity(str(tmp_path / 'missing.bin'), md5)
    assert not check_integrity(str(tmp_path))                            # a folder is not a file


def _payload(root):
    (root / 'data').mkdir(parents=True)
    (root / 'data' / 'a.txt').write_text('alpha')
    (root / 'b.txt').write_text('beta')


def test_extract_zip(tmp_path):
    _payload(tmp_path / 'src')
    archive = tmp_path / 'archive.zip'
    with zipfile.ZipFile(archive, 'w') as zf:
        zf.write(tmp_path / 'src' / 'data' / 'a.txt', 'data/a.txt')
        zf.write(tmp_path / 'src' / 'b.txt', 'b.txt')
    out = extract_archive(str(archive), str(tmp_path / 'out'))
    assert out == str(tmp_path / 'out')
    assert (tmp_path / 'out' / 'data' / 'a.txt').read_text() == 'alpha'
    assert (tmp_path / 'out' / 'b.txt').read_text() == 'beta'
    assert archive.exists()


def test_extract_tar_gz_next_to_archive_and_remove(tmp_path):
    _payload(tmp_path / 'src')
    archive = tmp_path / 'archive.tar.gz'
    with tarfile.open(archive, 'w:gz') as tf:
        tf.add(tmp_path / 'src' / 'data', arcname='data')
    out = extract_archive(str(archive), remove_finished=True)            # default target: the archive's folder
    assert out == str(tmp_path)
    assert (tmp_path / 'data' / 'a.txt').read_text() == 'alpha'
    assert not archive.exists()


def test_openpoints_dataset_imports_and_uses_a_working_torchvision_utils():
    import openpoints.dataset  # noqa: F401
    from openpoints.dataset.build import DATASETS
    from torchvision.datasets import utils

    assert 'ModelNet40Ply2048' in DATASETS.module_dict
    assert callable(utils.check_integrity) and callable(utils.extract_archive)
    if getattr(sys.modules['torchvision'], '__openpoints_dd_stub__', False):
        assert utils.check_integrity is check_integrity and utils.extract_archive is extract_archive


def test_install_is_idempotent():
    before = sys.modules['torchvision.datasets.utils']
    install_torchvision_stub()
    assert sys.modules['torchvision.datasets.utils'] is before
