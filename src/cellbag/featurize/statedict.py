"""Checking that a state dict fits a model before loading it (one message for every caller)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def state_dict_mismatch(state: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    """Why ``state`` does not fit ``expected`` (missing/unexpected keys, a shape), or None.

    BatchNorm's ``num_batches_tracked`` counters may be missing (they do not change outputs).
    """
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        return (
            f"keys do not match ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            return f"{k} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}"
    return None
