"""Errors of the distillation stage."""

from cellbag.errors import CellbagError


class DistillError(CellbagError, ValueError):
    """Bad input to distillation or a student model folder (the message names the file)."""
