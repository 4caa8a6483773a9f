"""With a store: encoder details, and look-alike cells of misclassified patients."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import ENCODER_ID
from htmlparse import read_page

from cellbag.report import ReportError, write_report
from cellbag.store import Store


@pytest.fixture(scope="module")
def page(store_report):
    return read_page(store_report)


def test_encoder_details_from_the_store(page):
    keys = {c.attrs.get("data-key"): c.text for c in page.cells if c.attrs.get("data-key")}
    assert keys["encoder_id"] == ENCODER_ID
    assert keys["weights"] == "synthetic" and keys["dim"] == "16"
    assert "generation" not in keys  # bookkeeping stays out


def test_lookalikes_of_misclassified_patients(synthetic_run, synthetic_store, page, demo_cohort):
    store = Store.open(synthetic_store)
    labels = store.patients().set_index("patient_id")["label"]
    cell_patient = store.cells().set_index("cell_id")["patient_id"]
    # every cell's truth, test patients' too (look-alikes are searched among all patients)
    gt = pd.read_csv(demo_cohort / "ground_truth.csv", dtype={"cell_id": str})
    witness = gt.set_index("cell_id")["witness"]
    blob = page.data["heads"]["abmil"]["patients"]
    wrong = {r["patient_id"]: r for r in blob if not r["correct"]}
    assert len(wrong) >= 2
    html = [(tag, a) for tag, a in page.elements]
    blocks = [a["data-patient"] for t, a in html if a.get("class") == "nn-patient"]
    assert {a["data-head"] for t, a in html if a.get("class") == "nn-patient"} == {"abmil"}
    assert sorted(blocks) == sorted(wrong)
    # figures in order: a query figure then its hits, grouped by row
    rows, current = [], None
    for t, a in html:
        if a.get("class") == "nn-row":
            current = {"query": a["data-query"], "hits": []}
            rows.append(current)
        elif t == "figure" and "hit" in a.get("class", "") and current is not None:
            current["hits"].append(a)
    assert rows
    checked = 0
    for r in rows:
        q = r["query"]
        qpid = cell_patient[q]
        assert qpid in wrong and q in wrong[qpid]["top_cells"][:2]
        assert len(r["hits"]) == 4
        for h in r["hits"]:
            assert h["data-patient"] != qpid  # other patients only
            assert cell_patient[h["data-cell-id"]] == h["data-patient"]
            y = labels[h["data-patient"]]
            assert h["data-label"] == ("" if pd.isna(y) else str(int(y)))
        if witness[q] == 1:  # witness cells find witness cells of other (tumoral) patients
            assert all(witness[h["data-cell-id"]] == 1 for h in r["hits"])
            checked += 1
    assert checked >= 1
    # each misclassified row of the abmil table links to its look-alikes
    links = {a["href"] for t, a in html if t == "a" and a.get("href", "").startswith("#nn-")}
    assert links == {f"#nn-abmil-{pid}" for pid in wrong}


def test_store_without_the_run_encoder(synthetic_run, demo_cohort, tmp_path):
    from cellbag.data import read_cohort

    run_dir, _ = synthetic_run
    Store.create(tmp_path / "other.zarr", read_cohort(demo_cohort))
    with pytest.raises(ReportError, match=rf"other.zarr has no encoder {ENCODER_ID}"):
        write_report(run_dir, tmp_path / "out", store=str(tmp_path / "other.zarr"))
