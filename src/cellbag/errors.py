"""Errors a user can fix: the CLI prints them as one line (no traceback)."""


class CellbagError(Exception):
    """Base of known, user-fixable errors. The message names the file, patient or store."""
