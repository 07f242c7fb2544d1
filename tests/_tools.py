"""What the CLI tests share (not a test module): the scripts of tools/ loaded as modules, so tests call their
`main(argv)` in-process, and a second process holding a run folder's lock."""
from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

from openpoints_dd.utils.config import REPO_ROOT

TOOLS = REPO_ROOT / 'tools'


def load_tool(name: str) -> ModuleType:
    """tools/<name>.py as a fresh module."""
    spec = importlib.util.spec_from_file_location(f'{name}_tool', TOOLS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def folder_held_by_another_process(folder: Path, name: str = 'run_dir') -> Iterator[int]:
    """For the block, another process holds `folder`'s lock (`utils.run.exclusive_dir`), as a running distillation
    or table would; yields its pid."""
    holder = subprocess.Popen([sys.executable, '-c', (
        'import sys, time; sys.path.insert(0, %r)\n'
        'from pathlib import Path\n'
        'from openpoints_dd.utils.run import exclusive_dir\n'
        'with exclusive_dir(Path(%r), %r):\n'
        '    print("locked", flush=True); time.sleep(30)\n') % (str(REPO_ROOT), str(folder), name)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
