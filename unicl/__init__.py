"""unicl: unified in-context visual understanding.

Give the model a few demonstrations of a task (an image and its mask for one
category; an image region and its caption) and a query; it answers in the same
form. See README.md.
"""

from unicl._version import __version__
from unicl.config import ConfigError, UniclConfig, load_config

__all__ = ["ConfigError", "UniclConfig", "__version__", "load_config"]
