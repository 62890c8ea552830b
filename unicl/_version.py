"""The package version (read by setup.cfg and `unicl --version`)."""

__version__ = "0.1.0"
