"""The scripts of tools/ loaded as modules, so CLI tests call their `main(argv)` in-process (not a test module)."""
from __future__ import annotations

import importlib.util
from types import ModuleType

from openpoints_dd.utils.config import REPO_ROOT

TOOLS = REPO_ROOT / 'tools'


def load_tool(name: str) -> ModuleType:
    """tools/<name>.py as a fresh module."""
    spec = importlib.util.spec_from_file_location(f'{name}_tool', TOOLS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
