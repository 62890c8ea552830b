"""Typed configuration: dataclasses, YAML files and `key=value` overrides.

Every part of unicl is configured by a dataclass that lives beside the code it
configures (`ModelConfig` in unicl/model.py, `TrainConfig` in
unicl/training/config.py, ...). `UniclConfig` gathers them into one tree. A YAML file
overrides the defaults, and `key=value` arguments override the YAML:

    cfg = load_config("shapes_tiny", ["model.n_layer=6", "train.lr=3e-4"])

Rules (each violation is a `ConfigError` naming the key and the valid choices):
- unknown keys are errors, at any depth;
- values must match the field's type (ints are accepted where floats are
  expected; nothing else is converted silently);
- a YAML file may start from another with `base: other.yaml` (a path relative to
  the file, or the name of a packaged config); the file's keys then override the
  base's, mappings merge recursively, lists are replaced;
- override values are parsed as YAML scalars/flow collections (`a=1`, `b=[1,2]`,
  `c=null`, `d=hello`).
Packaged configs (configs/*.yaml) can be named without path or suffix.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union

import yaml

if TYPE_CHECKING:  # imported lazily at run time, see _sections()
    from unicl.model import ModelConfig
    from unicl.tasks.sources import DataConfig
    from unicl.training.config import TrainConfig
    from unicl.vocab import VocabConfig

T = TypeVar("T")


#: what `name` may be (it becomes a folder name: runs/<name>, results/<name>)
_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")


class ConfigError(ValueError):
    """A config key is unknown, mistyped or its file is unreadable."""


# --------------------------------------------------------------------------- #
# the config tree
# --------------------------------------------------------------------------- #


def _default_tokenizers() -> list[dict[str, Any]]:
    return [{"name": "gpt2"}, {"name": "vqgan"}, {"name": "bins"}]


def _sections() -> dict[str, type]:
    # Imported here, not at module top: the section modules may import heavy
    # dependencies (torch) and must be free to import this module's helpers.
    from unicl.model import ModelConfig
    from unicl.tasks.sources import DataConfig
    from unicl.training.config import TrainConfig
    from unicl.vocab import VocabConfig

    return {
        "DataConfig": DataConfig,
        "ModelConfig": ModelConfig,
        "TrainConfig": TrainConfig,
        "VocabConfig": VocabConfig,
    }


@dataclasses.dataclass
class UniclConfig:
    """The whole configuration of a unicl run.

    `tokenizers` and `tasks` name registered plugins; their options are checked
    by the plugin's constructor when it is built (an unknown option is an error
    that lists the valid ones). `plugins` lists importable modules that register
    extra tokenizers or tasks; they are imported before anything is built.
    `deepspeed` is handed to `deepspeed.initialize` after unicl fills in the batch
    sizes and the optimizer it manages itself.
    """

    name: str = "unicl"
    seed: int = 0
    plugins: list[str] = dataclasses.field(default_factory=list)
    data: DataConfig = dataclasses.field(default_factory=lambda: _sections()["DataConfig"]())
    tokenizers: list[dict[str, Any]] = dataclasses.field(default_factory=_default_tokenizers)
    vocab: VocabConfig = dataclasses.field(default_factory=lambda: _sections()["VocabConfig"]())
    tasks: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=lambda: {"segmentation": {}, "captioning": {}}
    )
    model: ModelConfig = dataclasses.field(default_factory=lambda: _sections()["ModelConfig"]())
    train: TrainConfig = dataclasses.field(default_factory=lambda: _sections()["TrainConfig"]())
    deepspeed: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigError(
                f"name: {self.name!r} must be a plain folder name (letters, digits, '.', '_', "
                "'-', '+'; not starting with '.'): it names the run's folder under runs/"
            )
        for name, options in self.tasks.items():
            parallel = (options or {}).get("mask_decoding") == "parallel"
            if parallel and not getattr(self.model, "attribute_embedding", True):
                raise ConfigError(
                    f"tasks.{name}.mask_decoding=parallel needs model.attribute_embedding=true: "
                    "its placeholders are image codes that only their attribute tells apart"
                )


# --------------------------------------------------------------------------- #
# dict <-> dataclass with type checking
# --------------------------------------------------------------------------- #


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _hints(cls: type) -> dict[str, Any]:
    # UniclConfig's section types are imported lazily (see _sections), so its
    # string annotations are resolved against them explicitly.
    extra = _sections() if cls is UniclConfig else None
    return typing.get_type_hints(cls, localns=extra)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; build nested dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        return tuple(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, f"{key}"): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {value!r}")
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build the dataclass `cls` from `data`, checking keys and types.

    Missing keys take the dataclass defaults. Unknown keys raise a ConfigError
    that names the key and lists the valid ones.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(
                f"unknown config key {dotted!r}; valid keys"
                f"{' under ' + repr(prefix) if prefix else ''}: {', '.join(sorted(fields))}"
            )
        kwargs[key] = _convert(value, hints[key], dotted)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err
    return obj


def to_dict(cfg: Any) -> Any:
    """A plain (YAML-safe) dict of a config dataclass tree."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


# --------------------------------------------------------------------------- #
# YAML files, bases and overrides
# --------------------------------------------------------------------------- #


def packaged_configs() -> list[str]:
    """Names of the configs shipped with unicl (configs/*.yaml)."""
    root = resources.files("unicl.configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(path_or_name: str | Path, relative_to: Path | None = None) -> Path:
    """A config file path: an existing path, or the name of a packaged config."""
    candidates = []
    path = Path(path_or_name)
    if relative_to is not None and not path.is_absolute():
        candidates.append(relative_to / path)
    candidates.append(path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    # only a bare name means a packaged config: a missing path is an error, never a stand-in
    bare = path.parent == Path(".")
    name = path.name[:-5] if path.name.endswith(".yaml") else path.name
    packaged = resources.files("unicl.configs") / f"{name}.yaml"
    if bare and packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(
        f"config {str(path_or_name)!r} not found; give a YAML path or one of the packaged "
        f"configs: {', '.join(packaged_configs())}"
    )


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`update` over `base`: mappings merge recursively, everything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict, with its `base:` chain merged underneath it."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"config files include each other in a loop: {chain}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a config path or name, got {base!r}")
    parent = read_yaml(resolve_config_path(base, relative_to=path.parent), (*_seen, path))
    return deep_merge(parent, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`'a.b=1'` -> (['a', 'b'], 1); the value is read as a YAML scalar."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.lr=3e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: cannot parse value {raw!r}: {err}") from err
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)  # YAML 1.1 reads "3e-4" as a string
    return key.strip().split("."), value


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in {"nan", "inf", "-inf", "+inf", "infinity"}


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings applied to a nested dict (new keys are checked later)."""
    out = dict(data)
    for text in overrides:
        keys, value = parse_override(text)
        out = deep_merge(out, _nest(keys, value))
    return out


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(keys):
        value = {key: value}
    return value


def load_config(
    path_or_name: str | Path | None = None, overrides: Sequence[str] = ()
) -> UniclConfig:
    """Defaults <- YAML file (with its bases) <- `key=value` overrides, type-checked."""
    data: dict[str, Any] = {}
    if path_or_name is not None:
        data = read_yaml(resolve_config_path(path_or_name))
    data = apply_overrides(data, overrides)
    for key in ("model", "train", "data", "vocab"):
        if key in data and data[key] is None:
            data[key] = {}
    return from_dict(UniclConfig, data)


def with_data(cfg: UniclConfig, overrides: Sequence[str]) -> UniclConfig:
    """`cfg` with its `data` section changed by `key=value` strings (keys of `data`, e.g.
    `root=worlds/other`): the same model scored on other data. Keys are checked like a
    config file's."""
    for text in overrides:
        keys, _ = parse_override(text)
        if keys[0] == "data":
            raise ConfigError(f"data override {text!r}: name the key without 'data.'")
    data = apply_overrides(to_dict(cfg.data), overrides)
    return dataclasses.replace(cfg, data=from_dict(type(cfg.data), data, prefix="data"))


def save_config(cfg: UniclConfig, path: str | Path) -> None:
    """Write `cfg` as YAML that `load_config` reads back to an equal config."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
