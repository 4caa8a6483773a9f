"""A real `cellbag cv` run through the real abmil head, then the report.

The store holds real JPEG crops with synthetic embeddings in which only a few witness
cells of each tumoral bag carry the signal (and every bag moves as a whole, so the bag mean
is a poor signal). The attention head must weight the witnesses most, and the report's
galleries must show them on top.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import WITNESS_ENCODER
from htmlparse import read_page

from cellbag.report import write_report


@pytest.fixture(scope="module")
def cv_report(witness_store, tmp_path_factory):
    from cellbag.evaluate import run_cv

    store, _ = witness_store
    run_dir = tmp_path_factory.mktemp("report_cv") / "run"
    run_cv(
        str(store),
        WITNESS_ENCODER,
        ["meanpool", "abmil"],
        run_dir,
        clinical=False,
        folds=2,
        repeats=1,
        seed=0,
        head_params={"abmil": {"epochs": 30}},
        quiet=True,
    )
    return run_dir, write_report(run_dir, run_dir.parent / "report", store=str(store), top_k=3)


def test_report_of_a_real_run_equals_its_files(cv_report):
    run_dir, index = cv_report
    page = read_page(index)
    for head in ("meanpool", "abmil"):
        figures = json.loads((run_dir / head / "metrics.json").read_text())["metrics"]
        cells = [
            c for c in page.cells if c.attrs.get("data-head") == head and "data-stat" in c.attrs
        ]
        assert len(cells) == len(figures) * 4
        stat = {"value": "value", "fold_sd": "fold_sd", "lo": "ci95_low", "hi": "ci95_high"}
        for c in cells:
            want = figures[c.attrs["data-metric"]][stat[c.attrs["data-stat"]]]
            assert float(c.attrs["data-value"]) == pytest.approx(want, abs=0, nan_ok=True)
        oof = pd.read_csv(run_dir / head / "oof_predictions.csv", dtype={"patient_id": str})
        mean = oof.groupby("patient_id")["probability"].mean()
        shown = {r["patient_id"]: r["probability"] for r in page.data["heads"][head]["patients"]}
        assert shown == pytest.approx(mean.to_dict(), abs=1e-12)
    keys = {c.attrs.get("data-key"): c.text for c in page.cells if c.attrs.get("data-key")}
    assert keys["encoder_id"] == WITNESS_ENCODER and keys["folds"] == "2"
    assert keys["weights"] == "witness_cohort"  # the encoder record saved by the run


def test_galleries_put_the_witness_cells_on_top(cv_report, witness_store):
    _, index = cv_report
    _, witnesses = witness_store
    page = read_page(index)
    top_hits = top_total = bottom_hits = 0
    for r in page.data["heads"]["abmil"]["patients"]:
        if r["label"] == 1:  # 3 witness cells per tumoral bag, top_k = 3
            top_hits += sum(c in witnesses for c in r["top_cells"])
            top_total += len(r["top_cells"])
            bottom_hits += sum(c in witnesses for c in r["bottom_cells"])
    assert top_total == 20 * 3
    # chance is 3 of 12 cells (0.25); 20 training bags per fold: 53/60 with the default
    # batch size, at least 54/60 with the former fixed 32 (bag AUC ~0.99 either way)
    assert top_hits / top_total >= 0.85, f"{top_hits}/{top_total} top cells are witnesses"
    assert bottom_hits == 0
