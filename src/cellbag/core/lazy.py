"""Lazy package exports: a package's ``__init__`` names what it offers and from which
module, and a name's module is imported on first use (so importing a package stays cheap
and a heavy dependency loads only when needed)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` exporting ``{name: module}``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        # not cached in the package: a name patched in its module (tests) is seen here too
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__
