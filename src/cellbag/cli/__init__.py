"""Command-line interface. Each stage registers its commands in its own module."""

from __future__ import annotations

import sys

from cellbag.cli.app import app, fail

# importing the modules registers their commands on `app`
from cellbag.cli import (  # noqa: E402,F401  isort: skip
    data_cmds,
    featurize_cmds,
    store_cmds,
    aggregate_cmds,
    retrieval_cmds,
    adapt_cmds,
    distill_cmds,
    report_cmds,
    demo_cmd,
)

__all__ = ["app", "fail", "main"]


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """A warning as one line (``warning: ...``), not Python's ``file.py:589: UserWarning``."""
    from rich.markup import escape

    from cellbag.cli.app import err_console

    text = " ".join(str(message).split())
    err_console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point; known input errors become one-line messages, and
    warnings one line each."""
    import warnings

    from cellbag.errors import CellbagError

    warnings.showwarning = _warning_line
    try:
        app()
    except CellbagError as e:
        from rich.markup import escape

        from cellbag.cli.app import err_console

        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
