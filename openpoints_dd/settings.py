"""Typed settings of a distillation config: every key, its kind, range and default, in one place.

A YAML file and a command-line override are checked alike, before any data loads: an unknown key is an error
naming the closest known key, a value of another kind or out of range is an error naming the key, an integer key
takes integers only (`cpc=1.5` is refused, not rounded), and every registry `NAME` (synthesizer, objective,
rotator, backbone, evaluation model, labels, optimizer, dataset) is resolved, with the keyword arguments of our
own components checked against their constructor's signature and annotations. `resolve_distill_config` returns
the config with every default filled in, so a run's cfg.yaml records every value the run used.

`python tools/distill.py --settings` prints this schema.
"""
from __future__ import annotations

import collections.abc
import copy
import difflib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

from openpoints.dataset.build import DATASETS
from openpoints.models.build import MODELS
from openpoints.utils import EasyConfig

from .registry import LABELERS, OBJECTIVES, ROTATORS, SYN_OPTIMIZERS, SYNTHESIZERS
from .utils.config import load_config, to_plain
from .utils.precision import AMP_CHOICES

TASKS = ('classification', 'segmentation')
REQUIRED = object()   # a key with no default: the config must set it
OPTIONAL = object()   # a key with no default that may stay absent (the component decides)


class SettingsError(ValueError):
    """A config key that is unknown, of the wrong kind or out of range; the message names the key and the fix."""


@dataclass(frozen=True)
class Setting:
    """One config key.

    kind: 'int' | 'float' | 'bool' | 'str' | 'list' | 'mapping' | 'component' | 'section'. A 'component' is a
    mapping whose `NAME` is looked up in `registry` (a mapping of names to classes); a 'section' is a mapping
    whose keys are `fields` (default {}: an absent section gets every field's default; None: it stays absent).
    """
    kind: str
    default: Any
    doc: str = ''
    low: float | None = None          # inclusive bound
    high: float | None = None         # inclusive bound
    positive: bool = False            # strictly > 0
    choices: tuple = ()
    nullable: bool = False
    item: str | None = None           # the kind of a list's items
    item_choices: tuple = ()
    length: int | None = None         # a list's exact length
    registry: Callable[[], Mapping[str, type]] | None = None
    fields: Mapping[str, 'Setting'] = field(default_factory=dict)
    check: Callable[[Any], str | None] | None = None   # a last check: an error message, or None
    aliases: tuple = ()               # (value, canonical value) pairs accepted for the canonical value


# ----------------------------------------------------------------------------------------------- schema
def _int(default, doc, low=None, **kw):
    return Setting('int', default, doc, low=low, **kw)


def _float(default, doc, **kw):
    return Setting('float', default, doc, **kw)


def _choice(default, choices, doc, **kw):
    return Setting('str', default, doc, choices=tuple(choices), **kw)


def _component(default, registry, doc, **kw):
    return Setting('component', default, doc, registry=registry, **kw)


def _models():
    return MODELS.module_dict


def _optimizers():
    return SYN_OPTIMIZERS


AUGMENT = {
    'scale': Setting('list', [0.8, 1.25], 'random per-cloud scale range [low, high]; null: none', item='float',
                     length=2, nullable=True),
    'jitter_sigma': _float(0.01, 'Gaussian jitter of every point (0: none)', low=0),
    'jitter_clip': _float(0.05, 'jitter clipped to ± this', low=0),
}

DISTILL_COMMON = {
    'cpc': _int(1, 'synthetic clouds per class', low=1),
    'iterations': _int(400, 'iterations, each from a fresh backbone (0: export the start)', low=0),
    'outer_loop': _int(10, 'synthesizer steps per iteration', low=1),
    'inner_loop': _int(1, 'backbone epochs on the synthetic set between outer steps', low=0),
    'batch_real': _int(32, 'real clouds per class per matching step', low=1),
    'num_points': _int(1024, 'points per cloud while matching (real clouds are subsampled)', low=1),
    'export_num_points': _int(1024, 'points per exported cloud', low=1),
    'budget_minutes': _float(None, 'wall-clock budget: stops cleanly, checkpoints and exports; null: none',
                             positive=True, nullable=True),
    'net_lr': _float(1e-3, 'SGD learning rate of the backbone in the inner loop', positive=True),
    'inner_batch': _int(256, 'batch of the inner loop', low=1),
    'chunk_points': _int(None, 'real + synthetic points matched in one pass of classes; null: the engine default',
                         low=1, nullable=True),
    'backbone': _component({'NAME': 'DistillPointNet'}, _models, 'the matching network (openpoints MODELS)'),
    'synthesizer': _component({'NAME': 'PointGenerator'}, lambda: SYNTHESIZERS.module_dict,
                              'how the synthetic set is parameterised'),
    'objective': _component({'NAME': 'GradientMatching'}, lambda: OBJECTIVES.module_dict,
                            'how synthetic and real batches are compared'),
    'rotator': _component({'NAME': 'IdentityRotator'}, lambda: ROTATORS.module_dict,
                          'how a cloud is put in a canonical orientation'),
    'syn_optimizer': _component({'NAME': 'adam', 'lr': 1e-3, 'weight_decay': 5e-4}, _optimizers,
                                'the optimizer of the synthesizer (and the rotator, unless rotator_optimizer)'),
    'syn_scheduler': Setting('section', {}, "the synthesizer's rate: x gamma at every step_fraction of the run",
                             fields={
        'step_fraction': _float(0.5, 'a step at every this fraction of the run', positive=True, high=1),
        'gamma': _float(0.1, 'the factor at each step', positive=True, high=1),
        'by': _choice('iterations', ('iterations', 'time'),
                      "what the run's fraction counts: `iterations` done of `iterations`; `time`: the larger of that "
                      "and the share of budget_minutes spent, so that a budget-bound run falls at the same point of "
                      "its budget on any machine (needs budget_minutes)")}),
    'tail_average': Setting('section', None, "export the mean of the iterates made after start_fraction of the run "
                            "(its last iterate goes beside it, artifact-last.safetensors); null: the last iterate",
                            nullable=True, fields={
        'start_fraction': _float(REQUIRED, 'the share of the run after which every iterate joins the mean', low=0,
                                 check=lambda v: None if v < 1 else 'must be below 1'),
        'by': _choice('iterations', ('iterations', 'time'), "what the run's share counts, as syn_scheduler.by")}),
    'rotator_optimizer': Setting('section', None, "the rotator's own param groups in the same optimizer (e.g. "
                                 "SADM's Euler angles); null: they share the synthesizer's", nullable=True, fields={
        'lr': _float(REQUIRED, 'x the rotator\'s per-group lr_scale', positive=True),
        'momentum': _float(OPTIONAL, "overrides syn_optimizer's", low=0),
        'weight_decay': _float(OPTIONAL, "overrides syn_optimizer's", low=0),
        'betas': Setting('list', OPTIONAL, "overrides syn_optimizer's", item='float', length=2),
        'step_size': _int(OPTIONAL, 'StepLR period in iterations; absent: constant', low=1),
        'gamma': _float(OPTIONAL, 'StepLR factor', positive=True, high=1)}),
    'checkpoint_every': _int(10, 'iterations between checkpoints (0: only at the end)', low=0),
    'eval_every': _int(0, 'a quick evaluation (one seed) every N iterations; 0: off', low=0),
    'eval_every_minutes': _float(0, '... or every N minutes of distillation time; 0: off', low=0),
    'log_every': _int(10, 'iterations between log lines', low=1),
    'progress': Setting('bool', True, 'a progress bar'),
}

DISTILL_SEGMENTATION = {
    'bn_warmup': _int(8, 'real clouds per category that refresh the BatchNorm statistics', low=0),
    'part_presence': _choice('category', ('category', 'slot'), 'category: every slot shows every part of its '
                             'category (the reference); slot: slots reproduce how often each part is present'),
    'init_selection': _choice('parts', ('parts', 'random'), 'init real: clouds that show the slot\'s parts, or any'),
}

EVALUATION_COMMON = {
    'epochs': _int(200, 'training epochs of each evaluation', low=1),
    'lr': _float(1e-3, 'learning rate', positive=True),
    'weight_decay': _float(5e-4, 'weight decay', low=0),
    'min_lr': _float(1e-4, 'cosine schedule floor', low=0),
    'num_points': _int(1024, 'points per training and test cloud', low=1),
    'amp': _choice(None, [c for c in AMP_CHOICES if c], "bf16: forwards under bf16 autocast (fp32 master "
                   "weights); null: fp32", nullable=True),
    'augment': Setting('section', {}, 'training augmentation', fields=AUGMENT),
    'optimizer': _choice('adam', ('adam', 'sgd'), 'optimizer'),
    'momentum': _float(0.9, 'SGD momentum', low=0, high=1),
    'test_every': _int(0, '>0: also test every N epochs, for the best-epoch (papers\') figure', low=0),
    'seeds': Setting('list', [0, 1, 2], 'evaluation seeds of every set', item='int'),
    'generator_modes': Setting('list', ['resampled', 'fixed'], 'rows of a generator set: fresh clouds every '
                               'epoch, one fixed draw', item='str', item_choices=('resampled', 'fixed')),
    'eval_epochs_during_distill': _int(50, 'epochs of the quick evaluations during distillation', low=1),
    'start_row': Setting('bool', True, 'a run started from real clouds (a coreset, a real-cloud fit) that matches: '
                         'also evaluate its start, the set before matching, paired with it by seed'),
}

EVALUATION_CLASSIFICATION = {
    'model': _component({'NAME': 'DistillPointNet'}, _models, 'the evaluated network (openpoints MODELS)'),
    'batch_size': _int(256, 'batch size', low=1),
    'labels': _component(None, lambda: LABELERS.module_dict, 'null: hard labels; {NAME: TeacherLabels, teacher: '
                         '<train YAML>}', nullable=True),
    'random_selections': _int(5, 'Random baseline: one real subset per selection', low=0),
}

EVALUATION_SEGMENTATION = {
    'model': _component({'NAME': 'DistillPointNetSeg'}, _models, 'the evaluated network (openpoints MODELS)'),
    'batch_size': _int(32, 'batch size', low=1),
    'part_balance': _float(1.0, 'weight of the part-frequency balancing of the loss (0: none)', low=0),
    'labels': _component(None, lambda: LABELERS.module_dict, 'null: hard part labels; {NAME: TeacherLabels, '
                         'teacher: <part-segmentation train YAML>}: per-point soft labels', nullable=True),
    'random_selections': _int(3, 'Random baseline: one real subset per selection', low=0),
}


def _device_problem(value: str) -> str | None:
    if value in ('cpu', 'cuda', 'auto') or re.fullmatch(r'cuda:\d+', value):
        return None
    return 'must be cpu, cuda, cuda:N or auto'


TOP = {
    'seed': _int(0, 'seed of the synthesizer, the real batches and the start', low=0),
    'device': Setting('str', 'cpu', 'cpu | cuda | cuda:N | auto', check=_device_problem),
    'run_dir': Setting('str', None, 'default runs/<cfg stem>/<date-time>-<hash>/; re-running resumes it',
                       nullable=True),
    'root_dir': Setting('str', 'runs', 'where default run directories go'),
    'resume': _choice('auto', ('auto', 'force', 'never'), "auto (or true): continue run_dir's checkpoint if its "
                      "config is this one; force: continue anyway (recorded); never (or false): start over",
                      aliases=((True, 'auto'), (False, 'never'))),
    'resumed_with_changes': Setting('list', OPTIONAL, 'written by a forced resume: the keys it changed', item='str'),
    'task': _choice('classification', TASKS, 'what the set is distilled for'),
    'dataset': Setting('mapping', REQUIRED, 'the real dataset (openpoints layout: common, train, val, test)'),
}


def schema(task: str = 'classification') -> dict[str, Setting]:
    """The whole schema of a distillation config for `task`."""
    if task not in TASKS:
        raise SettingsError(f'task must be one of {", ".join(TASKS)}; got {task!r}')
    seg = task == 'segmentation'
    distill = {**DISTILL_COMMON, **(DISTILL_SEGMENTATION if seg else {})}
    evaluation = {**EVALUATION_COMMON, **(EVALUATION_SEGMENTATION if seg else EVALUATION_CLASSIFICATION)}
    return {**TOP, 'distill': Setting('section', {}, 'how the set is distilled', fields=distill),
            'evaluation': Setting('section', {}, 'the evaluation protocol (research/cpu_protocol.md); null: none',
                                  nullable=True, fields=evaluation)}


# ----------------------------------------------------------------------------------------------- resolving
def resolve_distill_config(cfg: Mapping[str, Any], task: str | None = None) -> EasyConfig:
    """A checked copy of a distillation config with every default filled in.

    Args:
        cfg: the loaded config (YAML files and overrides merged).
        task: the engine's task; None takes the config's `task` (default classification). A config whose
            `task` is another is refused.

    Raises:
        SettingsError: an unknown key, a wrong kind, a value out of range, an unknown registry name or
            component keyword; the message names the key.
    """
    config_task = cfg.get('task', 'classification')
    if task is not None and config_task != task:
        raise SettingsError(f"task: the config says {config_task!r}, but this engine distills for {task!r}; set "
                            f"task: {task}")
    resolved = _resolve_section('', dict(cfg), schema(config_task))
    distill = resolved['distill']
    for key, section in (('syn_scheduler', distill['syn_scheduler']), ('tail_average', distill['tail_average'])):
        if section and section['by'] == 'time' and not distill['budget_minutes']:
            raise SettingsError(f'distill.{key}.by: time counts the run by its budget; set distill.budget_minutes '
                                f'or use by: iterations')
    return _easy(resolved)


def load_distill_config(path: str, overrides: Sequence[str] | None = None) -> EasyConfig:
    """A distillation YAML with its `default.yaml` files, `base:` files and `key=value` overrides
    (`utils.config.load_config`), checked and completed by `resolve_distill_config`."""
    return resolve_distill_config(load_config(path, overrides, allow_new=True))


def resolve_section(name: str, values: Mapping[str, Any] | None, task: str = 'classification') -> EasyConfig:
    """One top-level section (`distill` or `evaluation`) of `task`'s schema, checked, defaults filled in."""
    setting = schema(task)[name]
    return _easy(_resolve_section(name + '.', dict(values or {}), setting.fields))


def _resolve_section(prefix: str, values: dict, fields: Mapping[str, Setting]) -> dict:
    unknown = [k for k in values if k not in fields]
    if unknown:
        key = unknown[0]
        raise SettingsError(f'unknown key {prefix}{key}{_closest(key, fields)}. Known keys of '
                            f'{prefix.rstrip(".") or "the config"}: {", ".join(fields)}')
    out = {}
    for key, setting in fields.items():
        if key in values:
            out[key] = _resolve_value(prefix + key, values[key], setting)
        elif setting.default is REQUIRED:
            raise SettingsError(f'{prefix}{key} is required: {setting.doc}')
        elif setting.kind == 'section' and setting.default is not None:   # absent: every default of the section
            out[key] = _resolve_section(prefix + key + '.', {}, setting.fields)
        elif setting.default is not OPTIONAL:
            out[key] = _resolve_value(prefix + key, copy.deepcopy(setting.default), setting)
    return out


def _resolve_value(key: str, value: Any, s: Setting) -> Any:
    for alias, canonical in s.aliases:
        if value is alias:
            value = canonical
    if value is None:
        if s.nullable:
            return None
        raise SettingsError(f'{key} cannot be null: {s.doc}')
    if s.kind == 'section':
        if not isinstance(value, Mapping):
            raise SettingsError(f'{key} must be a mapping of {", ".join(s.fields)}; got {value!r}')
        return _resolve_section(key + '.', dict(value), s.fields)
    if s.kind == 'component':
        return _resolve_component(key, value, s)
    if s.kind == 'mapping':
        if not isinstance(value, Mapping):
            raise SettingsError(f'{key} must be a mapping; got {value!r}')
        if key == 'dataset':
            _check_dataset(value, key)
        return to_plain(value)
    if s.kind == 'list':
        return _resolve_list(key, value, s)
    value = _scalar(key, value, s.kind)
    _check_range(key, value, s)
    problem = s.check(value) if s.check else None
    if problem:
        raise SettingsError(f'{key} {problem}; got {value!r}')
    return value


def _scalar(key: str, value: Any, kind: str) -> Any:
    if kind == 'bool':
        if isinstance(value, bool):
            return value
        raise SettingsError(f'{key} must be true or false; got {value!r}')
    if kind == 'int':
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SettingsError(f'{key} must be an integer; got {value!r}')
    if kind == 'float':
        if isinstance(value, str):   # PyYAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise SettingsError(f'{key} must be a number; got {value!r}') from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise SettingsError(f'{key} must be a number; got {value!r}')
    if kind == 'str':
        if isinstance(value, str):
            return value
        raise SettingsError(f'{key} must be a string; got {value!r}')
    raise AssertionError(kind)


def _check_range(key: str, value: Any, s: Setting) -> None:
    if s.choices and value not in s.choices:
        raise SettingsError(f'{key} must be one of {", ".join(repr(c) for c in s.choices)}'
                            f'{" or null" if s.nullable else ""}; got {value!r}. {s.doc}')
    if s.low is not None and value < s.low:
        raise SettingsError(f'{key} must be >= {s.low:g}; got {value!r} ({s.doc})')
    if s.high is not None and value > s.high:
        raise SettingsError(f'{key} must be <= {s.high:g}; got {value!r} ({s.doc})')
    if s.positive and value <= 0:
        raise SettingsError(f'{key} must be > 0; got {value!r} ({s.doc})')


def _resolve_list(key: str, value: Any, s: Setting) -> list:
    if not isinstance(value, (list, tuple)):
        raise SettingsError(f'{key} must be a list; got {value!r} ({s.doc})')
    if s.length is not None and len(value) != s.length:
        raise SettingsError(f'{key} must have {s.length} items; got {value!r} ({s.doc})')
    if s.length is None and not value:
        raise SettingsError(f'{key} cannot be empty ({s.doc})')
    items = [_scalar(f'{key}[{i}]', v, s.item) if s.item else v for i, v in enumerate(value)]
    bad = [v for v in items if s.item_choices and v not in s.item_choices]
    if bad:
        raise SettingsError(f'{key}: {bad[0]!r} is not one of {", ".join(map(repr, s.item_choices))}')
    return items


def _resolve_component(key: str, value: Any, s: Setting) -> dict:
    """A component section, merged key by key over its default (as a default.yaml below the file would be):
    `objective: {autocast: all}` is GradientMatching with autocast, `syn_optimizer: {NAME: sgd, lr: 0.1}`
    keeps the default's weight_decay."""
    role = key.rsplit('.', 1)[-1]
    if not isinstance(value, Mapping):
        raise SettingsError(f'{key} must be a mapping with a NAME key; got {value!r}')
    if isinstance(s.default, Mapping):
        value = {**s.default, **value}
    registry = s.registry()
    if not registry:
        raise SettingsError(f'{key} must be null; got {value!r}. {s.doc}')
    name = value.get('NAME')
    lookup = str(name).lower() if registry is SYN_OPTIMIZERS else name
    if not isinstance(name, str) or lookup not in registry:
        raise SettingsError(f'{key}.NAME: unknown {role} {name!r}{_closest(str(name), registry)}. Registered: '
                            f'{", ".join(sorted(registry))}')
    args = {k: v for k, v in value.items() if k != 'NAME'}
    _check_keywords(key, registry[lookup], args)
    return {'NAME': name, **to_plain(args)}


def _check_keywords(key: str, cls: type, args: Mapping[str, Any]) -> None:
    """The keys of a component section against its constructor: names, and values against simple annotations.

    Our own components take explicit keyword arguments, so a misspelt key is caught; torch optimizers too. An
    openpoints model may swallow unknown keys (`**kwargs`), so beyond our own classes only the names of a
    constructor without `**kwargs` are checked.
    """
    params, open_ended = _init_parameters(cls)
    ours = cls.__module__.startswith('openpoints_dd.') or cls.__module__.startswith('torch.optim')
    if not ours and open_ended:
        return
    unknown = [k for k in args if k not in params]
    if unknown:
        raise SettingsError(f'{key}.{unknown[0]}: {cls.__name__} takes no such key{_closest(unknown[0], params)}. '
                            f'Its keys: {", ".join(p for p in params if p != "params")}')
    if not ours:
        return
    for name, value in args.items():
        hint = params[name]
        if hint is not inspect.Parameter.empty and value is not None and not _fits(value, hint):
            raise SettingsError(f'{key}.{name} must be {_describe(hint)}; got {value!r}')


def _init_parameters(cls: type) -> tuple[dict[str, Any], bool]:
    """Keyword parameters of `cls(...)` -> their annotation (evaluated where possible), and whether it takes
    `**kwargs` beyond them. A constructor passing `**kwargs` up to a base class of ours adds the base's keys."""
    params: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:   # an annotation we cannot evaluate: names only
            hints = {}
        open_ended = False
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                open_ended = True
            elif p.name != 'self' and p.kind is not p.VAR_POSITIONAL:
                params.setdefault(p.name, hints.get(p.name, inspect.Parameter.empty))
        if not open_ended:
            return params, False
        if not klass.__module__.startswith('openpoints_dd.') or klass is object:
            return params, True
    return params, True


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a (simple) annotation; anything we do not model fits."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        item = args[0] if args else Any
        return all(_fits(v, item) for v in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping)
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return 'one of ' + ', '.join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return ' or '.join(_describe(a) for a in args)
    if hint is type(None):
        return 'null'
    if isinstance(hint, type) and origin is None:
        return {'int': 'an integer', 'float': 'a number', 'bool': 'true or false', 'str': 'a string'}.get(
            hint.__name__, hint.__name__)
    return str(hint).replace('typing.', '').replace('collections.abc.', '')


# ----------------------------------------------------------------------------------------------- datasets
DATASET_SECTIONS = ('common', 'train', 'val', 'test')
#: our own keys of a dataset section, in `common` or in a split (data/real_pool.py reads them; the dataset
#: class never sees them)
DATASET_KEYS = {
    'rotation': Setting('section', None, 'one random rotation per cloud, a function of (seed, split, index)',
                        nullable=True, fields={
                            'mode': _choice('so3', ('so3', 'z', 'none'), 'so3: uniform rotations; z: about the '
                                            'up axis; none'),
                            'seed': _int(0, 'seed of the rotations', low=0)}),
}


def _check_dataset(value: Mapping[str, Any], key: str) -> None:
    """The dataset section: openpoints' layout, a registered NAME, and the keys its class takes."""
    unknown = [k for k in value if k not in DATASET_SECTIONS]
    if unknown:
        raise SettingsError(f'unknown key {key}.{unknown[0]}{_closest(unknown[0], DATASET_SECTIONS)}: a dataset '
                            f'section holds {", ".join(DATASET_SECTIONS)}')
    for part in DATASET_SECTIONS:
        if value.get(part) is not None and not isinstance(value[part], Mapping):
            raise SettingsError(f'{key}.{part} must be a mapping; got {value[part]!r}')
    common = value.get('common') or {}
    name = common.get('NAME') or (value.get('train') or {}).get('NAME')
    if name not in DATASETS.module_dict:
        raise SettingsError(f'{key}.common.NAME: unknown dataset {name!r}'
                            f'{_closest(str(name), DATASETS.module_dict)}. Registered: '
                            f'{", ".join(sorted(DATASETS.module_dict))}')
    params, open_ended = _init_parameters(DATASETS.module_dict[name])
    for part in DATASET_SECTIONS:
        for k, v in (value.get(part) or {}).items():
            if k in DATASET_KEYS:
                _resolve_value(f'{key}.{part}.{k}', v, DATASET_KEYS[k])
            elif k != 'NAME' and not open_ended and k not in params:
                raise SettingsError(f'{key}.{part}.{k}: dataset {name} takes no such key'
                                    f'{_closest(k, [*params, *DATASET_KEYS])}. Its keys: '
                                    f'{", ".join([*params, *DATASET_KEYS])}')


# ----------------------------------------------------------------------------------------------- helpers
def _closest(key: str, known) -> str:
    match = difflib.get_close_matches(key, [str(k) for k in known], n=1, cutoff=0.6)
    return f' (did you mean {match[0]!r}?)' if match else ''


def _easy(values: Mapping[str, Any]) -> EasyConfig:
    """An `EasyConfig` whose nested mappings are `EasyConfig`s too (attribute access, as openpoints gives)."""
    out = EasyConfig()
    out.update(dict(values))
    return out


def describe_schema(task: str = 'classification') -> str:
    """Every key of `task`'s schema with its kind, default and meaning (tools/distill.py --settings)."""
    lines: list[str] = [f'Settings of a distillation config (task: {task}); defaults in brackets.']

    def walk(prefix: str, fields: Mapping[str, Setting]) -> None:
        for key, s in fields.items():
            if s.kind == 'section':
                lines.append(f'{prefix}{key}:  {s.doc}{" (null allowed)" if s.nullable else ""}')
                walk(prefix + '  ', s.fields)
                continue
            default = ('required' if s.default is REQUIRED else 'optional' if s.default is OPTIONAL
                       else 'null' if s.default is None else repr(s.default))
            kind = s.kind + (f' of {s.item}' if s.item else '')
            if s.choices:
                kind = ' | '.join(map(str, s.choices)) + (' | null' if s.nullable else '')
            lines.append(f'{prefix}{key}: {kind} [{default}]  {s.doc}')

    walk('', {k: v for k, v in schema(task).items()})
    return '\n'.join(lines)
