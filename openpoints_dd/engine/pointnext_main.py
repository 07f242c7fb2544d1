"""PointNeXt's own `examples/classification/main.py`, unmodified, on a distilled set: what tools/pointnext_main.py runs.

The script is run as PointNeXt documents it (from the checkout's root, `--cfg cfgs/...`), through `runpy` after
`import openpoints_dd` (which registers DistilledDataset, makes openpoints' point ops run on any device and turns
ModelNet40Ply2048's download of a missing folder into an error). Before anything runs, the PointNeXt lines that
need CUDA on a one-process run are found by reading the code (`cuda_lines`), and the packages its files import but
this environment lacks (`missing_imports`): on a machine without CUDA the report is the result, not a traceback
from deep inside PointNeXt.

Checked against PointNeXt 02341db (its main.py, train.py and pretrain.py): on a CPU the report names train.py:72
(`.to(cfg.rank)`), 239 and 300 (`.cuda(non_blocking=True)`). Not run on a GPU here.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import logging
import os
import runpy
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from openpoints.utils import EasyConfig

from ..utils.config import to_easy
from .artifact_cfg import adapt_to_artifact

logger = logging.getLogger(__name__)

MAIN = 'examples/classification/main.py'
#: the files a `mode: train` run executes, and those whose imports it also needs (main.py imports pretrain.py)
RUN_FILES = (MAIN, 'examples/classification/train.py')
IMPORT_FILES = RUN_FILES + ('examples/classification/pretrain.py',)
#: torch.cuda calls that work without a GPU
_HARMLESS_CUDA = ('is_available', 'device_count', 'empty_cache', 'manual_seed', 'manual_seed_all')
#: branch conditions of PointNeXt's multi-GPU code: a one-process run skips those lines
_MULTI_GPU_WORDS = ('distributed', 'cfg.mp', 'sync_bn')


@dataclass(frozen=True)
class Finding:
    """One PointNeXt line that a run on this machine cannot pass: where, the code, and why."""
    file: str
    line: int
    code: str
    reason: str

    def __str__(self) -> str:
        return f'{self.file}:{self.line}: {self.code}  <- {self.reason}'


def checkout_files(checkout: str | os.PathLike) -> Path:
    """The PointNeXt checkout, checked: it must hold examples/classification/{main,train}.py.

    Raises:
        FileNotFoundError: the folder or one of the files is missing (the message names what was looked for).
    """
    root = Path(checkout).expanduser().absolute()
    missing = [name for name in IMPORT_FILES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f'{root} is not a PointNeXt checkout: it lacks {", ".join(missing)}. Give the folder '
                                f'of `git clone https://github.com/guochengqian/PointNeXt` as --pointnext.')
    return root


def cuda_lines(checkout: Path, files: Sequence[str] = RUN_FILES) -> list[Finding]:
    """The lines of `files` that need CUDA on a one-process run: `.cuda(...)`, `.to(<rank or gpu>)` and
    `torch.cuda.*` calls other than queries, outside the branches PointNeXt takes for multi-GPU runs only."""
    findings = []
    for name in files:
        source = (checkout / name).read_text()
        tree = ast.parse(source)
        lines = source.splitlines()
        for node, guards in _walk(tree, ()):
            reason = _cuda_reason(node)
            if reason and not any(word in guard for guard in guards for word in _MULTI_GPU_WORDS):
                findings.append(Finding(name, node.lineno, lines[node.lineno - 1].strip(), reason))
    return sorted(set(findings), key=lambda f: (f.file, f.line))


def missing_imports(checkout: Path, files: Sequence[str] = IMPORT_FILES) -> list[Finding]:
    """The imports of `files` that fail in this environment (wandb, tensorboard, ...), with the failing line."""
    findings, tried = [], {}
    for name in files:
        source = (checkout / name).read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split('.')[0]
                if top in ('examples', '__init__', 'openpoints'):   # the checkout's own, or openpoints_dd's openpoints
                    continue
                if module not in tried:
                    tried[module] = _import_error(module)
                if tried[module]:
                    findings.append(Finding(name, node.lineno, lines[node.lineno - 1].strip(), tried[module]))
    return sorted(set(findings), key=lambda f: (f.file, f.line))


def main_overrides(cfg: Mapping[str, Any], *, artifact: str, data_dir: str | None, epochs: int,
                   num_workers: int) -> list[str]:
    """PointNeXt `key=value` options that train `cfg` (a PointNeXt YAML, loaded as main.py loads it) for `epochs`
    on the artifact: DistilledDataset with the YAML's dataset for val/test, classes and head from the artifact
    (`adapt_to_artifact`), the data folder, the loader workers, wandb off."""
    given = copy.deepcopy(cfg) if isinstance(cfg, EasyConfig) else to_easy(cfg)
    given.artifact = artifact
    fitted = adapt_to_artifact(given, 'classification')
    options = [f'{key}={value}' for key, value in _changed(given, fitted, '') if key != 'artifact']
    options.append(f'dataset.train.distilled_path={artifact}')
    if data_dir is not None:
        options.append(f'dataset.common.data_dir={data_dir}')
    options += [f'epochs={int(epochs)}', f'dataloader.num_workers={int(num_workers)}', 'wandb.use_wandb=False']
    return options


def run_main(checkout: Path, cfg_path: str, options: Sequence[str]) -> dict:
    """Run the checkout's main.py as `python examples/classification/main.py --cfg cfg_path *options` from the
    checkout's root, in this process (openpoints_dd already imported), inside a one-process group so that its
    closing `dist.destroy_process_group()` has a group to destroy.

    Returns:
        {'run_dir': the run folder main.py made, 'log_path': its log file}.
    """
    argv = [str(checkout / MAIN), '--cfg', cfg_path, *options]
    logger.info('running %s', ' '.join(['python', MAIN, *argv[1:]]))
    with _in_checkout(checkout, argv), _one_process_group():
        namespace = runpy.run_path(str(checkout / MAIN), run_name='__main__')
    cfg = namespace.get('cfg') or {}
    return {'run_dir': str(checkout / cfg.get('run_dir', '?')), 'log_path': str(checkout / cfg.get('log_path', '?'))}


def pointnext_frame(error: BaseException, checkout: Path) -> str | None:
    """'file:line: code' of the innermost traceback frame inside the checkout (where PointNeXt's code failed)."""
    frame, found = error.__traceback__, None
    while frame is not None:
        path = Path(frame.tb_frame.f_code.co_filename)
        if checkout in path.parents:
            line = path.read_text().splitlines()[frame.tb_lineno - 1].strip()
            found = f'{path.relative_to(checkout)}:{frame.tb_lineno}: {line}'
        frame = frame.tb_next
    return found


# ------------------------------------------------------------------------------------------------ helpers
def _walk(node: ast.AST, guards: tuple[str, ...]) -> Iterator[tuple[ast.AST, tuple[str, ...]]]:
    """Every node with the conditions of the `if` blocks it sits in (their source text)."""
    for child in ast.iter_child_nodes(node):
        inner = guards
        if isinstance(node, ast.If) and child in node.body:
            inner = guards + (ast.unparse(node.test),)
        yield child, inner
        yield from _walk(child, inner)


def _cuda_reason(node: ast.AST) -> str | None:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return None
    attr, owner = node.func.attr, ast.unparse(node.func.value)
    if attr == 'cuda':
        return 'a .cuda() copy: needs a CUDA device'
    if attr == 'to' and node.args and any(word in ast.unparse(node.args[0]) for word in ('rank', 'gpu', 'cuda')):
        return f'.to({ast.unparse(node.args[0])}): an int rank is a CUDA device index'
    if owner == 'torch.cuda' and attr not in _HARMLESS_CUDA:
        return f'torch.cuda.{attr}: needs a CUDA device'
    return None


def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as e:   # a module that fails to import for any reason is what the report is for
        return f'import {module} fails here ({type(e).__name__}: {e})'
    return None


def _changed(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in after.items():
        old = before.get(key) if isinstance(before, Mapping) else None
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            yield from _changed(old, value, f'{prefix}{key}.')
        elif value != old:
            yield f'{prefix}{key}', value


@contextlib.contextmanager
def _in_checkout(checkout: Path, argv: list[str]) -> Iterator[None]:
    """cwd, sys.argv and sys.path as `python examples/classification/main.py` from the checkout's root has them."""
    cwd, old_argv, old_path = os.getcwd(), sys.argv, list(sys.path)
    os.chdir(checkout)
    sys.argv = argv
    sys.path.insert(0, str(checkout / Path(MAIN).parent))   # main.py's `import __init__` adds the checkout root
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.argv = old_argv
        sys.path[:] = old_path


@contextlib.contextmanager
def _one_process_group() -> Iterator[None]:
    import torch.distributed as dist
    if dist.is_initialized():
        yield
        return
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    backend = 'nccl' if torch.cuda.is_available() and dist.is_nccl_available() else 'gloo'
    dist.init_process_group(backend, init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        yield
    finally:
        if dist.is_initialized():   # main.py destroys it itself at the end of a run
            dist.destroy_process_group()


def data_dir_of(cfg: Mapping[str, Any], checkout: Path) -> Path | None:
    """The real data folder main.py will open, resolved as openpoints does from the checkout's root."""
    data_dir = ((cfg.get('dataset') or {}).get('common') or {}).get('data_dir')
    if not isinstance(data_dir, str):
        return None
    return Path(data_dir) if os.path.isabs(data_dir) else checkout / data_dir


__all__ = ['Finding', 'checkout_files', 'cuda_lines', 'missing_imports', 'main_overrides', 'run_main',
           'pointnext_frame', 'data_dir_of', 'RUN_FILES', 'IMPORT_FILES', 'MAIN']
