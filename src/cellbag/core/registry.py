"""Registries of classes that register themselves with a decorator (heads, adapter kinds),
and the registered names read from source without importing anything, so the CLI builds
its help without importing torch (a test checks both give the same names)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from functools import cache
from pathlib import Path


@cache
def declared_names(package: str, decorator: str) -> tuple[str, ...]:
    """Sorted first string arguments of ``@decorator("name")`` in ``package``'s modules."""
    top, *rest = package.split(".")
    spec = importlib.util.find_spec(top)  # the sub-packages themselves are not imported
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{top} is not a package")
    names: set[str] = set()
    for root in spec.submodule_search_locations:
        folder = Path(root).joinpath(*rest)
        for path in sorted(folder.glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    continue
                for deco in node.decorator_list:
                    if (
                        isinstance(deco, ast.Call)
                        and getattr(deco.func, "id", getattr(deco.func, "attr", None)) == decorator
                        and deco.args
                        and isinstance(deco.args[0], ast.Constant)
                        and isinstance(deco.args[0].value, str)
                    ):
                        names.add(deco.args[0].value)
    return tuple(sorted(names))


class Registry:
    """Classes registered by name with a decorator next to their definition, one file each
    in ``package``; every module of ``package`` is imported on the first lookup, so adding
    an entry is adding a file (timm's style)."""

    def __init__(self, what: str, package: str, error: type[Exception], attr: str = "name"):
        self.what = what
        self.package = package
        self.error = error
        self.attr = attr  # the class attribute that receives the registered name
        self.entries: dict[str, type] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: register the class under ``name``."""

        def deco(cls: type) -> type:
            if name in self.entries and self.entries[name] is not cls:
                raise ValueError(
                    f"{self.what} {name!r} is registered twice ({self.entries[name]} and {cls})"
                )
            setattr(cls, self.attr, name)
            self.entries[name] = cls
            return cls

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        pkg = importlib.import_module(self.package)
        for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            importlib.import_module(f"{self.package}.{mod.name}")
        self._loaded = True

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self.entries)

    def get(self, name: str) -> type:
        """The class registered under ``name`` (``error`` naming the choices if none)."""
        self._load()
        if name not in self.entries:
            raise self.error(
                f"unknown {self.what} {name!r}; choose one of {', '.join(self.names())}"
            )
        return self.entries[name]
