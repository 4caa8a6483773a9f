"""Commands of this stage (registered on the shared app)."""

from cellbag.cli.app import app  # noqa: F401
