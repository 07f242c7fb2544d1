"""Tests for the artifact format: round trip, atomic writes, and a clear error for every bad file."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from openpoints_dd.data import artifact as artifact_module
from openpoints_dd.data.artifact import (FORMAT_VERSION, METADATA_KEY, ArtifactError, load_artifact,
                                         save_artifact)


def _metadata(**changes) -> dict:
    metadata = {
        'kind': 'points',
        'synthesizer': {'NAME': 'PointTensorSynthesizer', 'init': 'real'},
        'objective': {'NAME': 'GradientMatching', 'distance': 'layerwise_cosine'},
        'rotator': {'NAME': 'PCASignRotator', 'w0': 1.0},
        'dataset': {'name': 'ModelNet40Ply2048', 'num_classes': 3, 'class_names': ['airplane', 'bathtub', 'bed']},
        'cpc': 2,
        'num_points': 16,
        'config': {'seed': 0, 'lr': 0.01, 'milestones': [10, 20], 'note': None, 'flag': True},
        'config_hash': 'abc123',
    }
    metadata.update(changes)
    return metadata


def _tensors() -> dict:
    return {
        'pos': torch.randn(6, 16, 3),
        'y': torch.arange(3).repeat_interleave(2),
        'half': torch.randn(4, 2).half(),
        'bf16': torch.randn(5).bfloat16(),
        'mask': torch.rand(7) > 0.5,
        'strided': torch.randn(4, 6)[:, ::2],   # non-contiguous
        'empty': torch.zeros(0, 3),
    }


def _write_raw(path: Path, header: dict | None) -> Path:
    save_file({'pos': torch.zeros(2, 3)}, str(path), metadata=header)
    return path


# -- round trip and atomic write -------------------------------------------------------------------------------

def test_round_trip_is_bit_identical(tmp_path):
    tensors, metadata = _tensors(), _metadata()
    path = save_artifact(tmp_path / 'nested' / 'dir' / 'artifact.safetensors', tensors, metadata)
    assert path == tmp_path / 'nested' / 'dir' / 'artifact.safetensors' and path.is_file()
    loaded, loaded_metadata = load_artifact(path, expect_dataset='ModelNet40Ply2048', expect_num_classes=3)
    assert loaded_metadata == metadata
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name


def test_the_header_holds_one_versioned_json_entry(tmp_path):
    path = save_artifact(tmp_path / 'a.safetensors', _tensors(), _metadata(format_version=7))
    from safetensors import safe_open
    with safe_open(str(path), framework='pt') as handle:
        header = handle.metadata()
    assert set(header) == {METADATA_KEY}
    stored = json.loads(header[METADATA_KEY])
    assert stored['format_version'] == FORMAT_VERSION == 1   # the writer sets it, whatever the caller passed
    assert stored['kind'] == 'points'


def test_tuples_come_back_as_lists(tmp_path):
    path = save_artifact(tmp_path / 'a.safetensors', {}, _metadata(config={'widths': (8, 16)}))
    assert load_artifact(path)[1]['config'] == {'widths': [8, 16]}


def test_save_leaves_no_temporary_files_and_overwrites(tmp_path):
    path = tmp_path / 'artifact.safetensors'
    save_artifact(path, {'pos': torch.zeros(1, 2, 3)}, _metadata())
    save_artifact(path, {'pos': torch.ones(1, 2, 3)}, _metadata(cpc=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['artifact.safetensors']
    tensors, metadata = load_artifact(path)
    assert torch.equal(tensors['pos'], torch.ones(1, 2, 3)) and metadata['cpc'] == 1


def test_failed_save_keeps_the_old_file_and_cleans_up(tmp_path, monkeypatch):
    path = save_artifact(tmp_path / 'artifact.safetensors', {'pos': torch.zeros(1, 2, 3)}, _metadata())
    before = path.read_bytes()

    def broken_replace(source, destination):
        raise OSError('disk full')

    monkeypatch.setattr(artifact_module.os, 'replace', broken_replace)
    with pytest.raises(OSError, match='disk full'):
        save_artifact(path, {'pos': torch.ones(1, 2, 3)}, _metadata())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['artifact.safetensors']


def test_new_files_follow_the_umask(tmp_path):
    path = save_artifact(tmp_path / 'a.safetensors', {}, _metadata())
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_load_never_unpickles(tmp_path, monkeypatch):
    path = save_artifact(tmp_path / 'a.safetensors', _tensors(), _metadata())

    def forbidden(*args, **kwargs):
        raise AssertionError('pickle used')

    for module, name in ((pickle, 'load'), (pickle, 'loads'), (torch, 'load')):
        monkeypatch.setattr(module, name, forbidden)
    load_artifact(path)


# -- save errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('changes, message', [
    ({'kind': 'weights'}, r"metadata\['kind'\] must be one of \['points', 'generator'\]"),
    ({'rotator': {'w0': 1.0}}, r"metadata\['rotator'\] must be the rotator config, a mapping with a string NAME"),
    ({'objective': 'GradientMatching'}, r"metadata\['objective'\] must be"),
    ({'dataset': {'name': 'ModelNet40Ply2048', 'num_classes': 3}}, r"metadata\['dataset'\] lacks \['class_names'\]"),
    ({'dataset': {'name': 'M', 'num_classes': 3, 'class_names': ['a', 'b']}}, r'must be a list of 3 strings'),
    ({'dataset': {'name': 'M', 'num_classes': 0, 'class_names': []}}, r"\['num_classes'\] must be an int >= 1"),
    ({'cpc': 0}, r"metadata\['cpc'\] must be an int >= 1, got 0"),
    ({'num_points': 16.0}, r"metadata\['num_points'\] must be an int >= 1, got 16.0"),
])
def test_save_rejects_malformed_metadata(tmp_path, changes, message):
    with pytest.raises(ArtifactError, match=message):
        save_artifact(tmp_path / 'a.safetensors', {}, _metadata(**changes))
    assert not any(tmp_path.iterdir())


def test_save_names_missing_keys(tmp_path):
    metadata = _metadata()
    del metadata['cpc'], metadata['rotator']
    with pytest.raises(ArtifactError, match=r"lacks the required keys \['rotator', 'cpc'\]"):
        save_artifact(tmp_path / 'a.safetensors', {}, metadata)


@pytest.mark.parametrize('value, message', [
    (torch.tensor(0.5), r"metadata\['config'\]\['bad'\] is a torch.Tensor, which JSON cannot store"),
    (np.float32(0.5), r"metadata\['config'\]\['bad'\] is a numpy.float32"),
    ({1: 'a'}, r"metadata\['config'\]\['bad'\] has a non-string key 1"),
    ([1, float('nan')], r"metadata\['config'\]\['bad'\]\[1\] is nan \(JSON has no NaN"),
    ({'a', 'b'}, r'is a builtins.set'),
])
def test_save_rejects_values_json_cannot_store(tmp_path, value, message):
    with pytest.raises(ArtifactError, match=message):
        save_artifact(tmp_path / 'a.safetensors', {}, _metadata(config={'bad': value}))
    with pytest.raises(ArtifactError, match=r'\.tolist\(\) or \.item\(\)'):
        save_artifact(tmp_path / 'a.safetensors', {}, _metadata(config={'bad': value}))


def test_save_rejects_non_tensor_values(tmp_path):
    with pytest.raises(ArtifactError, match="tensors must map str to Tensor, got 'pos': ndarray"):
        save_artifact(tmp_path / 'a.safetensors', {'pos': np.zeros(3)}, _metadata())


# -- load errors -----------------------------------------------------------------------------------------------

def test_load_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match=r'no artifact at .*missing\.safetensors: the file does not exist'):
        load_artifact(tmp_path / 'missing.safetensors')


def test_load_directory(tmp_path):
    with pytest.raises(ArtifactError, match='is not a file'):
        load_artifact(tmp_path)


@pytest.mark.parametrize('cut', [0.5, 0.99, 4 / 10_000, 0.0])
def test_load_truncated_file(tmp_path, cut):
    path = save_artifact(tmp_path / 'a.safetensors', _tensors(), _metadata())
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(ArtifactError, match='is not a readable safetensors file') as info:
        load_artifact(path)
    assert info.value.__cause__ is not None   # chained from the safetensors error


def test_load_random_bytes(tmp_path):
    path = tmp_path / 'noise.safetensors'
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ArtifactError, match='truncated, corrupt, or another format'):
        load_artifact(path)


def test_load_torch_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / 'model.pth'
    torch.save({'pos': torch.zeros(2)}, path)
    with pytest.raises(ArtifactError, match='is not a readable safetensors file'):
        load_artifact(path)


@pytest.mark.parametrize('header', [None, {'format': 'pt'}])
def test_load_foreign_safetensors_file(tmp_path, header):
    path = _write_raw(tmp_path / 'foreign.safetensors', header)
    with pytest.raises(ArtifactError, match=r"was not written by openpoints_dd: its header has no 'openpoints_dd'"):
        load_artifact(path)


def test_load_newer_format_version(tmp_path):
    path = _write_raw(tmp_path / 'a.safetensors', {METADATA_KEY: json.dumps({**_metadata(), 'format_version': 99})})
    with pytest.raises(ArtifactError, match=r'format version 99 is newer .* Upgrade openpoints_dd'):
        load_artifact(path)


@pytest.mark.parametrize('version', [0, '1', None])
def test_load_unknown_format_version(tmp_path, version):
    header = {**_metadata(), 'format_version': version}
    if version is None:
        del header['format_version']
    path = _write_raw(tmp_path / 'a.safetensors', {METADATA_KEY: json.dumps(header)})
    with pytest.raises(ArtifactError, match=r'Re-run tools/distill\.py'):
        load_artifact(path)


def test_load_corrupt_metadata_json(tmp_path):
    path = _write_raw(tmp_path / 'a.safetensors', {METADATA_KEY: '{"format_version": 1, '})
    with pytest.raises(ArtifactError, match='is not valid JSON'):
        load_artifact(path)
    path = _write_raw(tmp_path / 'b.safetensors', {METADATA_KEY: '[1, 2]'})
    with pytest.raises(ArtifactError, match='must be a JSON object, got list'):
        load_artifact(path)


def test_load_checks_metadata_too(tmp_path):
    header = {**_metadata(), 'format_version': 1}
    del header['dataset']
    path = _write_raw(tmp_path / 'a.safetensors', {METADATA_KEY: json.dumps(header)})
    with pytest.raises(ArtifactError, match=r"lacks the required keys \['dataset'\]"):
        load_artifact(path)


def test_load_rejects_another_dataset(tmp_path):
    path = save_artifact(tmp_path / 'a.safetensors', {}, _metadata())
    with pytest.raises(ArtifactError, match=r'written for ModelNet40Ply2048 \(3 classes\) but the config asks for '
                                            r'ScanObjectNNHardest \(15 classes\)'):
        load_artifact(path, expect_dataset='ScanObjectNNHardest', expect_num_classes=15)
    with pytest.raises(ArtifactError, match=r'asks for ScanObjectNNHardest\. Point the config'):
        load_artifact(path, expect_dataset='ScanObjectNNHardest')
    with pytest.raises(ArtifactError, match=r'asks for a dataset \(40 classes\)'):
        load_artifact(path, expect_num_classes=40)
    assert load_artifact(path, expect_dataset='ModelNet40Ply2048')[1]['cpc'] == 2


def test_save_rejects_wrong_container_types(tmp_path):
    with pytest.raises(ArtifactError, match='tensors must be a mapping of name to Tensor, got list'):
        save_artifact(tmp_path / 'a.safetensors', [torch.zeros(1)], _metadata())
    with pytest.raises(ArtifactError, match='metadata must be a mapping, got list'):
        save_artifact(tmp_path / 'a.safetensors', {}, [('kind', 'points')])
    with pytest.raises(ArtifactError, match=r"metadata\['dataset'\] must be a mapping with name"):
        save_artifact(tmp_path / 'a.safetensors', {}, _metadata(dataset='ModelNet40Ply2048'))
    with pytest.raises(ArtifactError, match=r"metadata\['dataset'\]\['name'\] must be a string"):
        save_artifact(tmp_path / 'a.safetensors', {},
                      _metadata(dataset={'name': 40, 'num_classes': 1, 'class_names': ['a']}))


def test_loading_checks_the_tensors_and_their_checksum(tmp_path):
    """NaN coordinates, labels out of range, clouds that are not what the metadata says, changed tensor bytes."""
    import json as _json
    from openpoints_dd.data.artifact import METADATA_KEY, content_checksum
    from safetensors.torch import save_file

    def write(name, pos, y, num_points=4, checksum=True):
        meta = {'kind': 'points', 'synthesizer': {'NAME': 'ExplicitPoints'}, 'objective': {'NAME': 'x'},
                'rotator': {'NAME': 'IdentityRotator'}, 'cpc': 1, 'num_points': num_points, 'format_version': 1,
                'dataset': {'name': 'D', 'num_classes': 3, 'class_names': ['a', 'b', 'c']}}
        if checksum:
            meta['checksum'] = content_checksum({'pos': pos, 'y': y})
        save_file({'pos': pos, 'y': y}, str(tmp_path / name), metadata={METADATA_KEY: _json.dumps(meta)})
        return tmp_path / name

    good = torch.zeros(3, 4, 3), torch.arange(3)
    load_artifact(write('good.safetensors', *good))
    nan = good[0].clone()
    nan[1, 2, 0] = float('nan')
    with pytest.raises(ArtifactError, match=r"tensors \['pos'\] hold NaN or infinite values"):
        load_artifact(write('nan.safetensors', nan, good[1]))
    with pytest.raises(ArtifactError, match=r'labels must be class indices in \[0, 3\), got torch.int64 values 0..7'):
        load_artifact(write('labels.safetensors', good[0], torch.tensor([0, 1, 7])))
    with pytest.raises(ArtifactError, match='its clouds hold 4 points but its metadata says num_points 128'):
        load_artifact(write('points.safetensors', *good, num_points=128))
    changed = write('changed.safetensors', *good)
    meta = _json.loads(json_header(changed))
    save_file({'pos': torch.ones(3, 4, 3), 'y': good[1]}, str(changed), metadata={METADATA_KEY: _json.dumps(meta)})
    with pytest.raises(ArtifactError, match='do not match the checksum written with them'):
        load_artifact(changed)
    load_artifact(write('old.safetensors', *good, checksum=False))   # written before checksums: read, unchecked


def json_header(path):
    from safetensors import safe_open
    from openpoints_dd.data.artifact import METADATA_KEY
    with safe_open(str(path), framework='pt') as handle:
        return handle.metadata()[METADATA_KEY]
