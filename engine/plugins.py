"""Plugins: modules holding a user's own operators, imported (`--plugin`) before a graph is read.

A plugin is a module name (found on PYTHONPATH or in the working directory) or the path of a
`.py` file. Importing it registers its operators (`engine.registry.register`); a plugin that
cannot be found or fails while importing is one clear error naming it, never a traceback.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from engine.errors import FramegraphError


def load_plugins(plugins: list[str]) -> None:
    """Import every plugin in order; FramegraphError naming the first that cannot be imported."""
    for plugin in plugins:
        load_plugin(plugin)


def load_plugin(plugin: str) -> None:
    """Import one plugin: `my_ops`, `pkg.my_ops` or `path/to/my_ops.py`."""
    if plugin.endswith(".py") or os.sep in plugin:
        _load_file(plugin)
        return
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:  # a console script does not look in the cwd
        sys.path.append(cwd)
    try:
        importlib.import_module(plugin)
    except ModuleNotFoundError as e:
        if e.name is not None and (e.name == plugin or plugin.startswith(e.name + ".")):  # itself missing
            raise FramegraphError(
                f"plugin {plugin!r} not found: no module {e.name!r} in the working directory ({cwd}) "
                "or on PYTHONPATH (give a module name, or the path of a .py file)"
            ) from None
        raise FramegraphError(f"plugin {plugin!r} failed to import: {_why(e)}") from None
    except Exception as e:
        raise FramegraphError(f"plugin {plugin!r} failed to import: {_why(e)}") from None


def _load_file(plugin: str) -> None:
    path = Path(plugin)
    if not path.is_file():
        raise FramegraphError(f"plugin {plugin!r} not found: no such file")
    # a private module name: a file called operators.py (or redis.py) must not replace the package
    name = f"framegraph_plugin_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    existing = sys.modules.get(name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() == path.resolve():
        return  # imported already (a second --plugin naming it, a re-read graph)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FramegraphError(f"plugin {plugin!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise FramegraphError(f"plugin {plugin!r} failed to import: {_why(e)}") from None


def _why(e: BaseException) -> str:
    where = ""
    if isinstance(e, SyntaxError) and e.filename:
        where = f" ({Path(e.filename).name}, line {e.lineno})"
        return f"SyntaxError: {e.msg}{where}"
    return f"{type(e).__name__}: {e}"
