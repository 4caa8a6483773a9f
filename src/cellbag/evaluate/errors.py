"""Errors of the evaluation stage (one line each, naming the file or the option)."""

from __future__ import annotations

from cellbag.aggregate.errors import AggregateError


class EvaluateError(AggregateError):
    """Bad input to a cross-validation run, a fitted model or a run folder (an
    ``AggregateError`` too, so callers that caught those before still do)."""


class RunFolderError(EvaluateError):
    """A cv run folder is missing, incomplete or unreadable (the message names the file)."""


class LabelLeakError(EvaluateError):
    """Scoring would use patients whose labels trained the encoder."""
