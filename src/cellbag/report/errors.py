"""Errors of the report stage."""

from __future__ import annotations

from cellbag.errors import CellbagError


class ReportError(CellbagError):
    """A run folder, or a file in it, cannot be turned into a report (the message names it)."""
