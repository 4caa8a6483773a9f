"""The two classes a patient's label names: ``0`` reactive, ``1`` tumoral (one definition;
the cohort parser, the store's schema, inspect, the report and the neighbours page read it)."""

from __future__ import annotations

from typing import Any

import pandas as pd

CLASS_NAMES: dict[int, str] = {0: "reactive", 1: "tumoral"}
UNKNOWN = "unknown"


def label_name(label: Any) -> str:
    """``'reactive'``, ``'tumoral'`` or ``'unknown'`` for a label value (0, 1, None/NaN/<NA>)."""
    if label is None or pd.isna(label):
        return UNKNOWN
    return CLASS_NAMES.get(int(label), str(label))
