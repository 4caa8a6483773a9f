"""Head registry: ``@register_head("name")`` next to the class, ``make_head(name, ...)`` to build.

Every module in ``cellbag.aggregate.heads`` is imported on first use, so adding a head is
one new file in that folder with the decorator on its class.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from typing import Any

from cellbag.aggregate.errors import UnknownHeadError

_HEADS: dict[str, type] = {}
_loaded = False


def register_head(name: str) -> Callable[[type], type]:
    """Class decorator: make the head available as ``make_head(name)``."""

    def deco(cls: type) -> type:
        if name in _HEADS and _HEADS[name] is not cls:
            raise ValueError(f"head {name!r} is registered twice ({_HEADS[name]} and {cls})")
        cls.name = name
        _HEADS[name] = cls
        return cls

    return deco


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    import cellbag.aggregate.heads as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")
    _loaded = True


def list_heads() -> list[str]:
    """Names of every registered head, sorted."""
    _load_builtin()
    return sorted(_HEADS)


def head_class(name: str) -> type:
    """The class registered under ``name``."""
    _load_builtin()
    try:
        return _HEADS[name]
    except KeyError:
        raise UnknownHeadError(
            f"unknown head {name!r}; available: {', '.join(sorted(_HEADS))}"
        ) from None


def make_head(name: str, clinical: bool = True, seed: int = 0, **params: Any):
    """Build an unfitted head: ``make_head("abmil", clinical=True, seed=0, hidden=64)``."""
    cls = head_class(name)
    try:
        return cls(clinical=clinical, seed=seed, **params)
    except TypeError as e:
        raise UnknownHeadError(f"head {name!r}: {e}") from None


def parse_heads(heads: str | Sequence[str]) -> list[str]:
    """Head names from ``"abmil,lgbm"`` or a list: each registered, none twice."""
    from cellbag.aggregate.errors import AggregateError

    names = [h.strip() for h in heads.split(",")] if isinstance(heads, str) else list(heads)
    names = [h for h in names if h]
    if not names:
        raise AggregateError("no head given (e.g. --head abmil,lgbm,meanpool)")
    for h in names:
        head_class(h)  # unknown names fail before any work
    if len(set(names)) != len(names):
        raise AggregateError(f"a head is named twice: {','.join(names)}")
    return names
