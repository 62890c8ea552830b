"""Name -> class registries: one per extension point (tokenizers, tasks).

A registry maps a short name (what configs write) to a class or factory. Plugins
register themselves at import time with the decorator; configs then name them:

    TOKENIZERS = Registry("tokenizer", contract="...")

    @TOKENIZERS.register("gpt2")
    class GPT2Tokenizer(Tokenizer): ...

    tok = TOKENIZERS.build("gpt2", cache_dir="...")

Each registry carries the contract its entries must follow (shown by
`help(REG)` and in every error), so a plugin author finds the rules where the
error points. A duplicate name or an unknown name is a `RegistryError` (a
ValueError) that lists the valid names; wrong constructor arguments name the
offending keyword (TypeError).
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """Unknown, duplicate or malformed registry name: a bad value in a config or a call."""


class Registry(Generic[T]):
    """A named table of plugin classes (or factories) of one kind."""

    def __init__(self, kind: str, contract: str = "") -> None:
        self.kind = kind
        self.contract = inspect.cleandoc(contract)
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated class under `name`; names are unique."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} names must be strings, got {name!r}")
        if not name:
            raise RegistryError(f"{self.kind} names must be non-empty strings, got {name!r}")

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                old = self._entries[name]
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered by "
                    f"{getattr(old, '__module__', '?')}.{getattr(old, '__qualname__', old)}; "
                    f"choose another name"
                )
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The entry registered under `name`; unknown names list the valid ones."""
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        valid = f"valid {self.kind} names: {', '.join(self.names()) or '(none registered)'}"
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} names are strings, got {name!r}; {valid}")
        raise RegistryError(f"unknown {self.kind} {name!r}; {valid}")

    def build(self, name: str, **kwargs: Any) -> Any:
        """Construct the entry `name` with `kwargs`; a bad keyword is named in the error."""
        factory = self.get(name)
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # builtins without a signature
            signature = None
        if signature is not None:
            accepted, takes_any = _options_of(factory)
            if not takes_any:
                unknown = sorted(set(kwargs) - set(accepted))
                if unknown:
                    raise TypeError(
                        f"{self.kind} {name!r} got unknown option(s) {unknown}; "
                        f"valid options: {', '.join(accepted) or '(none)'}"
                    )
            _check_option_types(factory, kwargs, f"{self.kind} {name!r}")
        return factory(**kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


_SIMPLE = (bool, int, float, str)


def _fits(value: Any, tp: type) -> bool:
    """Is `value` a `tp`? A bool is no number here; an int is a float."""
    if isinstance(value, bool):
        return tp is bool
    if tp is float:
        return isinstance(value, (int, float))
    return isinstance(value, tp)


def _initialisers(factory: Any) -> list[Any]:
    """The callables whose keyword arguments are the factory's options: a function itself; for
    a class, its `__init__` and, while that passes `**kwargs` on, the base classes' too."""
    if not inspect.isclass(factory):
        return [factory]
    out = []
    for klass in factory.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        out.append(init)
        params = inspect.signature(init).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def _options_of(factory: Any) -> tuple[list[str], bool]:
    """(the option names a factory accepts, whether it accepts any keyword at all)."""
    names: list[str] = []
    inits = _initialisers(factory)
    for init in inits:
        for n, p in inspect.signature(init).parameters.items():
            keyword = p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            if keyword and n != "self" and n not in names:
                names.append(n)
    last = inspect.signature(inits[-1]).parameters.values() if inits else []
    takes_any = any(p.kind is p.VAR_KEYWORD for p in last)
    return names, takes_any


def _check_option_types(factory: Any, options: dict[str, Any], where: str) -> None:
    """TypeError/ValueError for an option whose value does not fit the plain annotation of
    its parameter (bool, int, float, str, or one of them or None): a string where a number
    belongs, 2.5 shots, a bool counted as a number, NaN or infinity. Richer annotations are
    left to the plugin's own checks."""
    hints: dict[str, Any] = {}
    try:
        for init in reversed(_initialisers(factory)):  # a subclass's annotation wins
            hints.update(typing.get_type_hints(init))
    except Exception:  # unresolvable annotations: the plugin checks its own options
        return
    for key, value in options.items():
        allowed = typing.get_args(hints.get(key)) or (hints.get(key),)
        simple = [t for t in allowed if t in _SIMPLE]
        if not simple or len(simple) + (type(None) in allowed) != len(allowed):
            continue
        if value is None and type(None) in allowed:
            continue
        if not any(_fits(value, t) for t in simple):
            names = " or ".join(t.__name__ for t in simple)
            raise TypeError(f"{where}: option {key!r} must be {names}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: option {key!r} must be a finite number, got {value!r}")
