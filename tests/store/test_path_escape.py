"""Ids never become paths outside their folder (issue 32, 1.1).

A patient id such as ``../../x``, ``/abs/path`` or ``../victim/results`` is refused at every
door (challenge CSV, manifest, ``store import``, ``from_arrays``, ``Store.create``) in
one line naming it, and ``export-h5`` writes only through ``safe_child``, so even a store
made before these checks cannot write outside OUT or overwrite a user's file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellbag.core.io import UnsafeName, name_problem, safe_child
from cellbag.data import Cohort, CohortError, read_cohort
from cellbag.store import Store, export_h5, from_arrays
from cellbag.store.errors import FeatureImportError, StoreError
from cellbag.store.export import LAYOUTS
from cellbag.store.feature_store import record_tables_digest
from cellbag.store.importer import import_features

ESCAPES = [
    "../../x",
    "/abs/path",
    "../victim/results",
    "..",
    ".hidden",
    "a\x00b",
    "a\nb",
    "x" * 201,
]


@pytest.mark.parametrize("name", ESCAPES)
def test_safe_child_refuses_a_name_that_leaves_its_folder(tmp_path: Path, name: str) -> None:
    assert name_problem(name) is not None
    with pytest.raises(UnsafeName, match="cannot name a file here") as e:
        safe_child(tmp_path, name)
    assert "\n" not in str(e.value)


def test_safe_child_refuses_a_link_out_of_its_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "P1.h5").symlink_to(tmp_path / "victim.h5")
    with pytest.raises(UnsafeName, match="outside"):
        safe_child(tmp_path / "out", "P1", ".h5")
    assert safe_child(tmp_path / "out", "P 2", ".h5") == tmp_path / "out" / "P 2.h5"
    assert name_problem("P-1_a.b (2)") is None


@pytest.mark.parametrize("pid", ["../../x", "/abs/path", "../victim/results"])
def test_from_arrays_refuses_an_unsafe_id_and_writes_nothing(tmp_path: Path, pid: str) -> None:
    bags = [np.ones((3, 4), np.float32), np.zeros((2, 4), np.float32)]
    with pytest.raises(FeatureImportError, match="an ID must be a plain file name") as e:
        from_arrays(tmp_path / "s.zarr", bags, [0, 1], patient_ids=["P1", pid])
    assert repr(pid) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "s.zarr").exists()


def test_store_import_refuses_an_unsafe_id(tmp_path: Path) -> None:
    table = tmp_path / "inst.csv"
    pd.DataFrame(
        {"patient_id": ["P1", "P1", "../victim/results"], "label": [0, 0, 1], "f0": [1.0, 2, 3]}
    ).to_csv(table, index=False)
    with pytest.raises(FeatureImportError, match=r"inst.csv: patient '../victim/results': an ID"):
        import_features(table, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_manifest_and_challenge_csv_refuse_unsafe_ids(tmp_path: Path) -> None:
    img = tmp_path / "a.jpg"
    img.write_bytes(b"")
    (tmp_path / "manifest.csv").write_text(f"patient_id,image_path\n../../x,{img}\n")
    with pytest.raises(CohortError, match=r"manifest.csv: patient '../../x': an ID must be"):
        read_cohort(tmp_path / "manifest.csv")
    root = tmp_path / "ch"
    (root / "trainset").mkdir(parents=True)
    (root / "trainset" / "trainset_true.csv").write_text("ID,LABEL\n/abs/path,1\n")
    with pytest.raises(CohortError, match=r"trainset_true.csv: patient '/abs/path'"):
        read_cohort(root)


def test_store_create_refuses_an_unsafe_id(tmp_path: Path, store_cohort: Cohort) -> None:
    p = store_cohort.patients.copy()
    old = p.at[0, "patient_id"]
    p.at[0, "patient_id"] = "../victim/results"
    cells = store_cohort.cells.replace({"patient_id": {old: "../victim/results"}})
    bad = Cohort(store_cohort.root, store_cohort.layout, p, cells)
    with pytest.raises(StoreError, match=r"patient '../victim/results': an ID must be"):
        Store.create(tmp_path / "s.zarr", bad)
    assert not (tmp_path / "s.zarr").exists()


@pytest.fixture
def escaping_store(tmp_path: Path) -> Store:
    """A store whose ids were written before the door checked them (edited in place)."""
    s = from_arrays(
        tmp_path / "s.zarr", [np.ones((2, 4), np.float32)] * 3, [0, 1, 0], ["P1", "P2", "P3"]
    )
    w = Store.open(s.path, mode="r+").zarr_group
    w["patients/patient_id"][:] = np.asarray(["P1", "../victim/results", "/abs/path"], object)
    record_tables_digest(w)
    return Store.open(s.path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_h5_never_writes_outside_out(
    tmp_path: Path, escaping_store: Store, layout: str
) -> None:
    victim = tmp_path / "work" / "victim" / "results.h5"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"the user's results")
    out = tmp_path / "work" / "out" / "sub"
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(StoreError, match=r"patient '../victim/results' cannot name a file here"):
        export_h5(escaping_store, None, out, layout=layout)
    assert victim.read_bytes() == b"the user's results"
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not os.path.exists("/abs/path.h5")
