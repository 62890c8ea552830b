"""Packaged YAML configs, installed as `unicl.configs` (read with `unicl.load_config`)."""
