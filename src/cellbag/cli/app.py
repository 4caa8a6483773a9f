"""The typer app shared by every command module (thin: parse, then call the package)."""

from __future__ import annotations

import os
from typing import TypeVar

import typer
from rich.console import Console

from cellbag import __version__

# Hugging Face tokenizers, if a hub code path loads them, warn after a fork: keep them quiet.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
T = TypeVar("T")


class HelpGroup(typer.core.TyperGroup):
    """Click's plain help, with each command's first sentence wrapped, never cut off."""

    def format_commands(self, ctx, formatter) -> None:  # noqa: ANN001
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    name="cellbag",
    cls=HelpGroup,
    help="Multi-instance learning on bags of blood-cell images: featurize once, aggregate fast.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: option names are never cut and it reads well at 80 columns
    rich_markup_mode=None,
)
store_app = typer.Typer(
    cls=HelpGroup,
    help="Inspect and export a feature store.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
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


def deprecated(value: T, old_value: T | None, old: str, new: str) -> T:
    """The value of ``new``, or of its old spelling ``old`` (a hidden alias) with a notice."""
    if old_value is None or old_value is False:
        return value
    err_console.print(
        f"[yellow]deprecated:[/] {old} is now {new} (the old spelling will be removed)",
        highlight=False,
        soft_wrap=True,
    )
    return old_value


def next_step(*commands: str) -> None:
    """The closing ``next:`` line: the natural following command, with the user's paths."""
    from rich.markup import escape

    for c in commands:
        console.print(f"[bold]next:[/] {escape(c)}", highlight=False, soft_wrap=True)


def shell_path(path: object) -> str:
    """A path as it can be pasted into a shell."""
    import shlex

    return shlex.quote(str(path))


def suggested_store(data: os.PathLike | str) -> str:
    """Where a ``next:`` line proposes a cohort's store: beside the cohort, never inside."""
    from pathlib import Path

    folder = Path(data) if Path(data).is_dir() else Path(data).parent
    return shell_path(folder.parent / "store.zarr")
