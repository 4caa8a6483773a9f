"""The fixtures of ``tests/aggregate`` (a small witness store, one cv run over it, fast head
parameters), shared here: evaluation tests run the same heads on the same data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_aggregate_fixtures", Path(__file__).resolve().parents[1] / "aggregate" / "conftest.py"
)
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

FAST = _fixtures.FAST
_one_torch_thread = _fixtures._one_torch_thread
fast = _fixtures.fast
store_path = _fixtures.store_path
cv_run = _fixtures.cv_run
witness = _fixtures.witness
