"""unicl: unified in-context visual understanding.

Give the model a few demonstrations of a task (an image and its mask for one
category; an image region and its caption) and a query; it answers in the same
form. See README.md.
"""

from unicl._version import __version__
from unicl.config import ConfigError, UniclConfig, load_config

__all__ = ["ConfigError", "InContextModel", "UniclConfig", "__version__", "load", "load_config"]


def __getattr__(name: str):
    # The API pulls in torch and the model; importing it on first use keeps
    # `import unicl` (and so `unicl --help`) fast.
    if name in ("load", "InContextModel"):
        from unicl import api

        return getattr(api, name)
    raise AttributeError(f"module 'unicl' has no attribute {name!r}")
