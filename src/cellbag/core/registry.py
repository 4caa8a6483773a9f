"""Registry names read from source: the names a package's modules register with a
decorator (``@register_head("abmil")``), found by parsing the files without importing
them. The CLI builds its help from these without importing torch; a test checks that
they equal the names the registries hold once imported."""

from __future__ import annotations

import ast
import importlib.util
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
