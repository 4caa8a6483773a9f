"""Errors of the data stage (one line each, naming the file and the patient)."""

from __future__ import annotations

from cellbag.errors import CellbagError


class CohortError(CellbagError, ValueError):
    """Bad input that stops reading: the message names the file and the patient."""
