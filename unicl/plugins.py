"""Importing plugin modules named in a config's `plugins:` list.

A plugin is any importable Python module that registers tokenizers or tasks
when imported (docs/plugins.md). Configs list them by dotted module name;
`import_plugins` imports them before anything is built from the config, so the
names they register can be used under `tokenizers:` and `tasks:`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType


def import_plugins(names: Sequence[str]) -> list[ModuleType]:
    """Import each module in `names` (in order) and return them.

    A name that cannot be imported raises ImportError naming the plugin and the
    reason; an error raised inside the plugin while it runs propagates unchanged
    so its traceback points at the plugin's code.
    """
    if isinstance(names, str):
        raise TypeError(f"plugins must be a list of module names, got the string {names!r}")
    modules = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"plugins: each entry must be a module name, got {name!r}")
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as err:
            if err.name is not None and name.startswith(err.name):
                raise ImportError(
                    f"plugin {name!r} (listed under `plugins:`) cannot be imported: no module "
                    f"named {err.name!r}. Install it, or put its directory on PYTHONPATH."
                ) from err
            raise
    return modules
