"""The registries of openpoints_dd (synthesizers, objectives, rotators, labelers) and their builders.

They are openpoints `Registry` objects, so `NAME` keys and `build()` behave as in openpoints' MODELS.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from openpoints.utils.registry import Registry

SYNTHESIZERS = Registry('synthesizers')  # how the synthetic set is parameterised
OBJECTIVES = Registry('objectives')      # how synthetic and real batches of one class are compared
ROTATORS = Registry('rotators')          # how a cloud is put in a canonical orientation
LABELERS = Registry('labelers')          # what a training set's clouds are trained against: hard or teacher labels
#: the optimizers of `distill.syn_optimizer` (NAME, any case)
SYN_OPTIMIZERS = {'adam': torch.optim.Adam, 'adamw': torch.optim.AdamW, 'sgd': torch.optim.SGD}


def build_synthesizer(cfg: Mapping[str, Any], **default_args):
    return _build(SYNTHESIZERS, 'synthesizer', cfg, default_args)


def build_objective(cfg: Mapping[str, Any], **default_args):
    return _build(OBJECTIVES, 'objective', cfg, default_args)


def build_rotator(cfg: Mapping[str, Any] | None, **default_args):
    """A missing rotator section means no rotation (`IdentityRotator`)."""
    return _build(ROTATORS, 'rotator', cfg or {'NAME': 'IdentityRotator'}, default_args)


def build_labeler(cfg: Mapping[str, Any] | None, **default_args):
    """A missing labels section means hard labels (`HardLabels`)."""
    return _build(LABELERS, 'labeler', cfg or {'NAME': 'HardLabels'}, default_args)


def _build(registry: Registry, role: str, cfg: Mapping[str, Any], default_args: dict):
    if not isinstance(cfg, Mapping):
        raise TypeError(f'the {role} section must be a mapping with a NAME key, got {type(cfg).__name__}')
    name = cfg.get('NAME')
    if not isinstance(name, str) or '.' in name or name not in registry.module_dict:
        known = ', '.join(sorted(registry.module_dict))
        raise KeyError(f"unknown {role} {name!r} (from `NAME` in the {role} section). "
                       f"Registered {role}s: {known}. Did you import openpoints_dd?")
    args = {k: v for k, v in dict(cfg).items() if k != 'NAME'}  # a copy: never mutate the caller's cfg
    args.update(default_args)
    cls = registry.module_dict[name]
    try:
        return cls(**args)
    except TypeError as e:
        raise TypeError(f'{role} {name}: {e}. Check the keys of the {role} section against '
                        f'{cls.__name__}.__init__.') from e
