"""Property tests (hypothesis) of the id check (issue 32, section 3): any string as a
patient id either becomes a store whose exported files all lie inside OUT, or is refused
in one line naming it; never a traceback, never a file outside its folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellbag.core.io import UnsafeName, name_problem, safe_child
from cellbag.data.cohort import check_patient_id
from cellbag.data.errors import CohortError
from cellbag.store import export_h5, from_arrays
from cellbag.store.errors import FeatureImportError

# plain names, path-like names and arbitrary text (control characters, long strings)
_IDS = st.one_of(
    st.text(min_size=0, max_size=12),
    st.text(alphabet="./\\-_ab\x00\n", min_size=1, max_size=10),
    st.text(min_size=190, max_size=260),
    st.sampled_from(["../../x", "/abs/path", "../victim/results", "..", ".", "~", "C:\\x"]),
)
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(name=_IDS)
def test_a_name_is_refused_or_stays_in_its_folder(tmp_path_factory, name: str) -> None:
    folder = tmp_path_factory.mktemp("out")
    try:
        child = safe_child(folder, name, ".h5")
    except UnsafeName as e:
        assert "\n" not in str(e) and name_problem(name) is not None or "outside" in str(e)
        return
    assert child.resolve().parent == folder.resolve() and child.name == name + ".h5"


@SETTINGS
@given(pid=_IDS)
def test_the_door_check_is_one_line_naming_the_id(pid: str) -> None:
    try:
        assert check_patient_id(pid, "where.csv") == pid
    except CohortError as e:
        msg = str(e)
        assert msg.startswith("where.csv: patient ") and "\n" not in msg
        assert "an ID must be a plain file name" in msg


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(pids=st.lists(_IDS, min_size=2, max_size=3, unique=True))
def test_any_ids_give_a_store_exported_inside_out_or_one_line(
    tmp_path_factory, pids: list[str]
) -> None:
    root = tmp_path_factory.mktemp("prop")
    bags = [np.full((2, 3), i, np.float32) for i in range(len(pids))]
    try:
        s = from_arrays(root / "s.zarr", bags, [0, 1, 0][: len(pids)], pids)
    except FeatureImportError as e:
        assert "\n" not in str(e)
        assert not (root / "s.zarr").exists()
        return
    out = root / "out"
    files = export_h5(s, None, out)
    assert {Path(f).resolve().parent for f in files} == {out.resolve()}
    outside = [p for p in root.rglob("*") if not p.resolve().is_relative_to(root.resolve())]
    assert not outside and sorted(p.name for p in root.iterdir()) == ["out", "s.zarr"]
