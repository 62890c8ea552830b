"""Importing plugin modules named in a config's `plugins:` list.

A plugin is any importable Python module that registers tokenizers or tasks
when imported (docs/plugins.md). Configs list them by dotted module name;
`import_plugins` imports them before anything is built from the config, so the
names they register can be used under `tokenizers:` and `tasks:`.

Importing a module runs its code. A config the user passes to `unicl train` is the user's
own choice, but a model folder or run directory may come from anyone: loading one imports
the plugins its config names only when the caller allows it (`unicl.load(...,
allow_plugins=True)`, `--allow-plugins` on the command line). unicl's own modules and
modules the caller has already imported need no permission.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

#: unicl's own modules that only register tokenizers or tasks (no permission needed)
_OWN_PLUGIN_PACKAGES = ("unicl.tokenizers.", "unicl.tasks.")


def _needs_permission(name: str) -> bool:
    return not (name.startswith(_OWN_PLUGIN_PACKAGES) or name in sys.modules)


def import_plugins(
    names: Sequence[str], allow: bool = True, source: str | os.PathLike | None = None
) -> list[ModuleType]:
    """Import each module in `names` (in order) and return them.

    With `allow=False` (loading a model folder `source` that may come from anyone), a
    module that is neither unicl's own nor already imported is refused with a ValueError
    that names it and how to allow it. A name that cannot be imported raises ImportError
    naming the plugin and the reason; an error raised inside the plugin while it runs
    propagates unchanged so its traceback points at the plugin's code.
    """
    if isinstance(names, str):
        raise TypeError(f"plugins must be a list of module names, got the string {names!r}")
    if not isinstance(allow, bool):
        raise TypeError(f"allow_plugins must be True or False, got {allow!r}")
    if not allow:
        refused = [n for n in names if isinstance(n, str) and _needs_permission(n)]
        if refused:
            raise ValueError(
                f"{source}: its config names plugin modules {refused} under `plugins:`; "
                "importing them runs their code. If you trust this model, load it with "
                "allow_plugins=True (command line: --allow-plugins)"
            )
    modules = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"plugins: each entry must be a module name, got {name!r}")
        try:
            modules.append(importlib.import_module(name))
        except SystemExit as err:  # a module that runs a program when imported
            raise ImportError(f"plugin {name!r} exited while being imported ({err})") from err
        except ModuleNotFoundError as err:
            if err.name is not None and name.startswith(err.name):
                raise ImportError(
                    f"plugin {name!r} (listed under `plugins:`) cannot be imported: no module "
                    f"named {err.name!r}. Install it, or put its directory on PYTHONPATH."
                ) from err
            raise
    return modules
