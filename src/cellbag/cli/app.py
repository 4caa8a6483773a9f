"""The typer app shared by every command module (thin: parse, then call the package)."""

from __future__ import annotations

import os

import typer
from rich.console import Console

from cellbag import __version__

# Hugging Face tokenizers, if a hub code path loads them, warn after a fork: keep them quiet.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="cellbag",
    help="Multi-instance learning on bags of blood-cell images: featurize once, aggregate fast.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
store_app = typer.Typer(help="Inspect and export a feature store.", no_args_is_help=True)
app.add_typer(store_app, name="store")

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        console.print(f"cellbag {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """cellbag: diagnose lymphocytosis from bags of blood-cell images with MIL."""
