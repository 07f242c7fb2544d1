"""YAML configs: loading with inheritance, checked `key=value` overrides, saving and hashing.

Built on openpoints' `EasyConfig`, so a loaded config behaves exactly like the ones PointNeXt's scripts use.
"""
from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml
from openpoints.utils import EasyConfig

logger = logging.getLogger(__name__)

BASE_KEY = 'base'
REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding openpoints_dd/, cfgs/ and tools/


class YamlLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` reading floats as YAML 1.2 does: PyYAML follows YAML 1.1, where a float needs a dot, so
    `lr: 1e-5` would load as the string '1e-5' and fail only inside the optimizer."""


YamlLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$'),   # exponents, dot or not
    list('-+0123456789.'))


def load_yaml(text_or_stream) -> Any:
    """YAML text (or an open file) as plain Python values, with `YamlLoader`."""
    return yaml.load(text_or_stream, Loader=YamlLoader)


def load_config(path: str | os.PathLike, overrides: Sequence[str] | None = None,
                allow_new: bool = False, defaults: Mapping[str, Any] | None = None) -> EasyConfig:
    """Load a YAML config with openpoints' `default.yaml` inheritance, `base:` files and checked overrides.

    Resolution order, later wins (dicts merge key by key, lists and scalars are replaced):

    0. `defaults`, when given: the keys a tool itself reads (tools/train.py: the trainer's), so that a YAML
       written for another tool (PointNeXt's) accepts them as overrides without a `+`;
    1. the `default.yaml` files of the folders the config's base files live in (recursively), where they are
       not on the config's own walk: a YAML written anywhere with `base:` pointing at a project config gets
       the defaults that config gets in its own folder. Outermost first, in the order the bases are named;
    2. every `default.yaml` on the way from the outermost directory of `path` down to its own directory,
       as `EasyConfig.load(path, recursive=True)` does (for a relative path the walk starts at the cwd);
    3. the files named by the file's `base:` key (a string or a list, relative to the file, or absolute), in
       order. A base file is taken with its own `base:` files but without a directory walk (its folders'
       defaults came in step 1), so that the defaults of another folder do not re-apply over those of this one;
    4. the file's own keys (`base` itself is dropped);
    5. the overrides.

    Empty YAML files count as `{}` (openpoints crashes on them).

    Overrides are `key=value`, `--key=value` or `--key value` with dotted keys; values are parsed like
    `EasyConfig.update` does (`ast.literal_eval`, else the raw string; tuples become lists and dicts
    `EasyConfig`s, as YAML would give them). Unlike there, they are checked:

    * a key that does not exist is an error naming the closest existing key, unless it is written
      `+key=value` (new on purpose), `allow_new` is set, or it fills a section the config declares empty
      (`criterion_args: null` accepts `criterion_args.NAME=...`);
    * a value of another kind than the existing one is an error: kinds are bool, number (int and float
      mix freely; an int given for a float is stored as a float), string, list, mapping; `None` on either
      side is always accepted.

    Args:
        path: the experiment YAML.
        overrides: command-line style overrides, e.g. `['epochs=2', '+dataset.train.repeat=4']`.
            Default None (none).
        allow_new: accept unknown keys without the `+` prefix. Default False.

    Returns:
        The resolved `EasyConfig`.

    Raises:
        FileNotFoundError: `path` or a base file does not exist.
        ValueError: a base cycle, a malformed file or override, an unknown key, or a change of kind.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'config file {path} not found (cwd: {os.getcwd()})')
    cfg = EasyConfig()
    if defaults:
        _merge(cfg, copy.deepcopy(dict(defaults)))
    own_chain = _default_chain(path)
    for default in _base_defaults(path, own_chain) + own_chain:
        _merge(cfg, _load_with_bases(default, ()))
    _merge(cfg, _load_with_bases(path, ()))
    apply_overrides(cfg, overrides or [], allow_new=allow_new)
    return cfg


def apply_overrides(cfg: EasyConfig, overrides: Sequence[str], allow_new: bool = False) -> EasyConfig:
    """Apply checked `key=value` overrides to `cfg` in place (rules in `load_config`); returns `cfg`."""
    opened: set[int] = set()  # ids of sections that were null in the config and are filled by these overrides
    for raw_key, text, source in _parse_overrides(overrides):
        new_on_purpose = raw_key.startswith('+')
        key = raw_key[1:] if new_on_purpose else raw_key
        if not key or any(not part for part in key.split('.')):
            raise ValueError(f'malformed override {source!r}: the key {raw_key!r} has an empty part')
        value = _parse_value(text)
        _set_checked(cfg, key, value, source, allow_new=allow_new or new_on_purpose, opened=opened)
    return cfg


def save_config(cfg: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write `cfg` as plain YAML (`yaml.safe_dump`), readable back by `load_config`.

    Tuples become lists, numpy and 0-d torch scalars become Python numbers, paths become strings.
    Values that have no YAML form (transform objects that `build_dataloader_from_cfg` leaves in a
    config, modules, functions) are dropped, with one warning naming their keys.

    Args:
        cfg: an `EasyConfig` or any nested mapping.
        path: the output file; parent folders are created.

    Returns:
        The path written.
    """
    dropped: list[str] = []
    plain = _to_plain(cfg, '', dropped)
    if dropped:
        logger.warning('save_config: dropped %d value(s) with no YAML form: %s', len(dropped), ', '.join(dropped))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w') as f:
        yaml.safe_dump(plain, f, sort_keys=False, default_flow_style=None)
    return path


def config_hash(cfg: Mapping[str, Any], length: int = 8) -> str:
    """Short sha256 (hex) of the canonical JSON of `cfg` (sorted keys, plain values as in `save_config`).

    Two configs that save to the same YAML have the same hash; key order does not matter.

    Args:
        cfg: an `EasyConfig` or any nested mapping.
        length: number of hex digits kept. Default 8.
    """
    plain = _to_plain(cfg, '', [])
    text = json.dumps(plain, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def resolve_path(path: str | os.PathLike) -> str:
    """Resolve a relative data path against the cwd, then against the repository root.

    Configs in `cfgs/` name data as seen from the repository root (e.g. `../shared/data/ModelNet40Ply2048`),
    so they work both from the root and from elsewhere. An absolute path is returned unchanged; a
    relative one is returned as `<cwd>/path` if that exists, else `<repo root>/path` if that exists, else
    `<cwd>/path` (the caller reports it missing).
    """
    path = Path(os.path.expanduser(str(path)))
    if path.is_absolute():
        return str(path)
    for root in (Path.cwd(), REPO_ROOT):
        if (root / path).exists():
            return str((root / path).resolve())
    return str((Path.cwd() / path).resolve())


# ----------------------------------------------------------------------------------------- loading
def _default_chain(path: Path) -> list[Path]:
    """`default.yaml` files from the outermost folder inwards, as `EasyConfig.load(recursive=True)` finds them."""
    chain, here = [], str(path)
    while os.path.dirname(here) != here:
        here = os.path.dirname(here)
        candidate = Path(os.path.join(here, 'default' + path.suffix))
        if candidate.is_file() and candidate.resolve() != path.resolve():
            chain.append(candidate)
    return list(reversed(chain))


def _base_defaults(path: Path, own_chain: list[Path]) -> list[Path]:
    """The `default.yaml` files of the folders of `path`'s base files (recursively) that are not on its own walk."""
    skip = {p.resolve() for p in own_chain}
    found: list[Path] = []

    def visit(file: Path, seen: tuple[Path, ...]) -> None:
        if file.resolve() in seen:
            return   # a cycle: _load_with_bases reports it
        for base in _base_names(file):
            base_path = file.parent / base
            if not base_path.is_file():
                return   # _load_with_bases reports it
            for default in _default_chain(base_path.resolve()):
                if default.resolve() not in skip:
                    skip.add(default.resolve())
                    found.append(default)
            visit(base_path, (*seen, file.resolve()))

    visit(path, ())
    return found


def _base_names(path: Path) -> list[str]:
    """The `base:` entries of a YAML file, checked (a path or a list of paths)."""
    bases = _read_yaml(path).get(BASE_KEY)
    if bases is None:
        return []
    if isinstance(bases, str):
        return [bases]
    if not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ValueError(f'`{BASE_KEY}:` in {path} must be a path or a list of paths, got {bases!r}')
    return bases


def _read_yaml(path: Path) -> dict:
    with open(path) as f:
        try:
            data = load_yaml(f)
        except yaml.YAMLError as e:
            raise ValueError(f'config file {path} is not valid YAML: {e}') from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f'config file {path} must hold a mapping at the top level, got {type(data).__name__}')
    return data


def _load_with_bases(path: Path, seen: tuple[Path, ...]) -> EasyConfig:
    resolved = path.resolve()
    if resolved in seen:
        cycle = ' -> '.join(str(p) for p in (*seen, resolved))
        raise ValueError(f'config base cycle: {cycle}')
    bases = _base_names(path)
    data = _read_yaml(path)
    data.pop(BASE_KEY, None)
    cfg = EasyConfig()
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise FileNotFoundError(f'base config {base!r} named in {path} not found (looked for {base_path})')
        _merge(cfg, _load_with_bases(base_path, (*seen, resolved)))
    _merge(cfg, data)
    return cfg


COMPONENT_SECTIONS = ('backbone', 'synthesizer', 'objective', 'rotator')


def _merge(cfg: EasyConfig, other: Mapping[str, Any]) -> None:
    """Recursive merge as `EasyConfig.update(dict)`: mappings merge, everything else replaces.

    One exception: a distillation component section (backbone, synthesizer, objective, rotator: their keys are
    the constructor arguments of that NAME) whose `NAME` changes is replaced, not merged, so that a file switching
    to `rotator: {NAME: IdentityRotator}` over a base's EulerRotator does not inherit the Euler arguments.
    Other sections merge as in openpoints (a dataset section switching NAME keeps e.g. its data_dir).
    """
    for key, value in other.items():
        if isinstance(value, Mapping):
            current = cfg.get(key)
            switched = (key in COMPONENT_SECTIONS and isinstance(current, Mapping) and 'NAME' in value
                        and current.get('NAME') != value['NAME'])
            if switched or not isinstance(current, EasyConfig):
                cfg[key] = EasyConfig()
            _merge(cfg[key], value)
        else:
            cfg[key] = copy.deepcopy(value)


# --------------------------------------------------------------------------------------- overrides
def _parse_overrides(overrides: Sequence[str]) -> Iterable[tuple[str, str, str]]:
    """Yield (key, value text, source text) like `EasyConfig.update(list)` reads its options."""
    if isinstance(overrides, str):
        raise TypeError(f'overrides must be a list of "key=value" strings, got the string {overrides!r}')
    index = 0
    while index < len(overrides):
        opt = str(overrides[index])
        body = opt[2:] if opt.startswith('--') else opt
        if '=' in body:
            key, text = body.split('=', 1)
            index += 1
            yield key.strip(), text, opt
        else:
            if index + 1 >= len(overrides):
                raise ValueError(f'override {opt!r} has no value: write key=value')
            text = str(overrides[index + 1])
            index += 2
            yield body.strip(), text, f'{opt} {text}'


_YAML_WORDS = {'true': True, 'false': False, 'null': None, '~': None}


def _parse_value(text: str) -> Any:
    """A Python literal (as openpoints parses overrides), YAML's true/false/null, a YAML flow mapping or list
    (`{NAME: TeacherLabels, teacher: cfgs/...yaml}`, as the YAML files write them), else the string."""
    if text.strip().lower() in _YAML_WORDS:
        return _YAML_WORDS[text.strip().lower()]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        if not text.strip().startswith(('{', '[')):
            return text
        try:
            value = load_yaml(text)
        except yaml.YAMLError:
            return text
    return to_easy(value)


def to_easy(value: Any) -> Any:
    """Nested mappings as `EasyConfig`s (attribute access, as openpoints' builders expect), tuples as lists (as
    YAML would give them)."""
    if isinstance(value, Mapping):
        out = EasyConfig()
        for k, v in value.items():
            out[k] = to_easy(v)
        return out
    if isinstance(value, (list, tuple)):
        return [to_easy(v) for v in value]
    return value


def to_plain(value: Any) -> Any:
    """Nested `EasyConfig`s / tuples as plain dicts and lists, leaves deep-copied: a config that can be written as
    JSON or YAML, hashed, or sent to another process, and changed without touching the original."""
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return copy.deepcopy(value)


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return 'bool'
    if isinstance(value, (int, float, np.integer, np.floating)):
        return 'number'
    if isinstance(value, str):
        return 'string'
    if isinstance(value, (list, tuple)):
        return 'list'
    if isinstance(value, Mapping):
        return 'mapping'
    return type(value).__name__


def _flat_keys(cfg: Mapping[str, Any], prefix: str = '') -> list[str]:
    keys = []
    for key, value in cfg.items():
        dotted = f'{prefix}{key}'
        keys.append(dotted)
        if isinstance(value, Mapping):
            keys.extend(_flat_keys(value, dotted + '.'))
    return keys


def _closest_key(cfg: Mapping[str, Any], key: str) -> str | None:
    candidates = _flat_keys(cfg)
    if not candidates:
        return None
    leaf = key.rsplit('.', 1)[-1]
    same_leaf = [c for c in candidates if c.rsplit('.', 1)[-1] == leaf]
    pool = same_leaf or candidates
    return max(pool, key=lambda c: difflib.SequenceMatcher(None, key, c).ratio())


def _set_checked(cfg: EasyConfig, key: str, value: Any, source: str, allow_new: bool, opened: set[int]) -> None:
    parts = key.split('.')
    node: Any = cfg
    in_empty_section = False
    for depth, part in enumerate(parts[:-1]):
        here = '.'.join(parts[:depth + 1])
        in_empty_section = in_empty_section or id(node) in opened
        if part not in node:
            if not (allow_new or in_empty_section):
                _raise_unknown(cfg, key, source)
            node[part] = EasyConfig()
        elif node[part] is None:  # a declared but empty section (`criterion_args: null`) may be filled in
            node[part] = EasyConfig()
            opened.add(id(node[part]))
        elif not isinstance(node[part], Mapping):
            raise ValueError(f'override {source!r}: {here!r} is a {_kind(node[part])} '
                             f'({node[part]!r}), not a section, so it has no key {parts[depth + 1]!r}')
        node = node[part]
    last = parts[-1]
    in_empty_section = in_empty_section or id(node) in opened
    if last not in node:
        if not (allow_new or in_empty_section):
            _raise_unknown(cfg, key, source)
        logger.debug('override %r adds the new key %r', source, key)
        node[last] = value
        return
    old = node[last]
    old_kind, new_kind = _kind(old), _kind(value)
    if old_kind is not None and new_kind is not None and old_kind != new_kind:
        hint = ''
        if old_kind == 'string' and new_kind in ('number', 'bool'):
            hint = f" To pass the text, quote it: {key}=\"'{value}'\"."
        raise ValueError(f'override {source!r} gives {key!r} a {new_kind} ({value!r}) but the config holds a '
                         f'{old_kind} ({old!r}).{hint}')
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    node[last] = value


def _raise_unknown(cfg: EasyConfig, key: str, source: str) -> None:
    closest = _closest_key(cfg, key)
    suggestion = f' Closest existing key: {closest!r}.' if closest else ''
    raise ValueError(f'override {source!r}: unknown config key {key!r}.{suggestion} '
                     f'To add a new key on purpose, write it with a leading +: +{key}=...')


# ------------------------------------------------------------------------------------------ saving
def _to_plain(value: Any, where: str, dropped: list[str]) -> Any:
    """Nested plain Python (dict/list/str/int/float/bool/None) for YAML and JSON; drops the rest."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            child = f'{where}.{k}' if where else str(k)
            plain = _to_plain(v, child, dropped)
            if plain is not _DROP:
                out[str(k)] = plain
        return out
    if isinstance(value, (list, tuple)):
        items = [_to_plain(v, f'{where}[{i}]', dropped) for i, v in enumerate(value)]
        return [v for v in items if v is not _DROP]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value).__module__ == 'torch' and getattr(value, 'ndim', None) == 0:  # a 0-d tensor
        return value.item()
    dropped.append(f'{where} ({type(value).__name__})')
    return _DROP


class _Drop:
    def __repr__(self) -> str:
        return '<dropped>'


_DROP = _Drop()
