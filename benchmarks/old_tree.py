"""Timing an older checkout against this one: each measurement in a subprocess that imports the tree under test.

A benchmark script re-runs itself as `python SCRIPT --one SPEC` with the tree first on PYTHONPATH
(`run_in_tree`); the subprocess checks that `openpoints_dd` really came from that tree (`imported_from`) before it
measures. Used by bm_backbones.py and bm_m3d_step.py.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def require_old_tree(parser: argparse.ArgumentParser, old_tree: str | None) -> Path:
    """The resolved --old-tree, or the parser's error when it is not a checkout of this project."""
    if not old_tree or not (Path(old_tree) / 'openpoints_dd' / '__init__.py').is_file():
        parser.error(f'--old-tree {old_tree!r} is not a checkout of this project; make one with '
                     f'`git worktree add --detach /tmp/old_main <commit>` and pass --old-tree /tmp/old_main')
    return Path(old_tree).resolve()


def run_in_tree(script: str, spec: dict, tree: Path, threads: int) -> subprocess.CompletedProcess:
    """`python script --one SPEC` (SPEC = spec plus the tree) in `tree`, with `tree` first on PYTHONPATH and
    `threads` OpenMP/MKL threads."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree)] + [p for p in [os.environ.get('PYTHONPATH')] if p]),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.run([sys.executable, script, '--one', json.dumps({**spec, 'tree': str(tree)})],
                          capture_output=True, text=True, env=env, cwd=str(tree))


def imported_from(tree: str) -> Path:
    """In the subprocess: the path of the imported `openpoints_dd`, which must lie in `tree`."""
    import openpoints_dd
    imported = Path(openpoints_dd.__file__).resolve()
    if Path(tree).resolve() not in imported.parents:
        raise RuntimeError(f'expected openpoints_dd from {Path(tree).resolve()}, imported {imported}')
    return imported
