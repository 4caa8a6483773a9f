"""The report a clinician reads: a one-screen summary (cohort, the recommended head and why,
its figures with intervals, warnings), each patient's clinical values beside its
probability; pages from autoescaped templates whose CSS/JS ship as package data."""

from __future__ import annotations

import fnmatch
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from htmlparse import read_page

from cellbag.data.clinical import raw_clinical
from cellbag.evaluate.run_folder import best_head
from cellbag.report import write_report
from cellbag.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _copy_run(run_dir: Path, dest: Path, heads: dict[str, str] | None = None) -> Path:
    """A copy of the run, with head folders renamed (``{old: new}``)."""
    shutil.copytree(run_dir, dest)
    for old, new in (heads or {}).items():
        (dest / old).rename(dest / new)
        cfg = json.loads((dest / new / "config.json").read_text())
        (dest / new / "config.json").write_text(json.dumps(cfg | {"head": new}))
    return dest


def test_summary_names_the_best_head_with_its_figures_and_verdicts(synthetic_run, store_report):
    run_dir, _ = synthetic_run
    page = read_page(store_report)
    html = store_report.read_text()
    best = best_head(run_dir).name
    rec = [a for tag, a in page.elements if "recommended" in a.get("class", "").split()]
    assert rec and rec[0]["data-head"] == best
    assert "highest ROC AUC of the pooled out-of-fold predictions (ties: the first by name)" in html
    m = json.loads((run_dir / best / "metrics.json").read_text())["metrics"]
    shown = {
        c.attrs["data-metric"]: c
        for c in page.cells
        if c.table.get("id") == "summary-figures" and "data-metric" in c.attrs
    }
    assert {"roc_auc", "balanced_accuracy", "triage_sensitivity", "triage_spared"} <= set(shown)
    for k, c in shown.items():
        assert float(c.attrs["data-value"]) == m[k]["value"]
        assert float(c.attrs["data-lo"]) == m[k]["ci95_low"]
        assert f"[{m[k]['ci95_low']:.3f}, {m[k]['ci95_high']:.3f}]" in c.text
    pairs = pd.read_csv(run_dir / "comparison_pairs.csv")
    assert len(pairs) == 2 and html.count('<ul class="verdicts">') == 1
    assert "on ROC AUC:" in html and "on Balanced accuracy:" in html
    cohort = {
        c.attrs["data-key"]: c.text
        for c in page.cells
        if "summary-cohort" in c.table.get("class", "")
    }
    n = pd.read_csv(run_dir / best / "oof_predictions.csv").groupby("patient_id")["label"].first()
    labelled = f"{len(n)}: {(n == 1).sum()} tumoral, {(n == 0).sum()} reactive"
    assert cohort["labelled patients (out-of-fold)"] == labelled
    assert int(cohort["cells of these patients"].replace(",", "")) > 0


def test_small_cohort_and_missed_triage_are_warned(store_report):
    page = read_page(store_report)
    warned = {a["data-warning"] for tag, a in page.elements if "data-warning" in a}
    assert "small-cohort" in warned  # 10 labelled patients
    html = store_report.read_text()
    assert "under 40 in a class" in html


def test_zero_width_interval_and_missed_triage(synthetic_run, tmp_path):
    run_dir, _ = synthetic_run
    run = _copy_run(run_dir, tmp_path / "run")
    d = run / "abmil"
    oof = pd.read_csv(d / "oof_predictions.csv")
    oof["probability"] = oof["label"] * 0.8 + 0.1  # a perfect ranking: ROC AUC [1, 1]
    oof["triage_threshold"] = 0.95  # every tumoral patient under it: triage missed
    oof.to_csv(d / "oof_predictions.csv", index=False)
    m = pd.read_csv(run / "meanpool" / "oof_predictions.csv")
    from cellbag.evaluate.run_folder import write_summary

    info = {"clinical": True, "folds": 3, "repeats": 2, "seed": 0, "triage_sensitivity": 0.95}
    comp = {
        h: {"oof": o, "info": info, "seconds": 1.0} for h, o in (("abmil", oof), ("meanpool", m))
    }
    write_summary(run, comp, 0, resamples=200)
    page = read_page(write_report(run, tmp_path / "out", top_k=1))
    warnings = {a["data-warning"] for tag, a in page.elements if "data-warning" in a}
    assert {"zero-width", "triage-missed", "small-cohort"} <= warnings
    html = (tmp_path / "out" / "index.html").read_text()
    assert "abmil&#39;s ROC AUC is 1.000 [1.000, 1.000]" in html
    assert "no error in this sample" in html


def test_each_patient_shows_its_clinical_values_beside_its_probability(
    store_report, synthetic_store
):
    page = read_page(store_report)
    pts = Store.open(synthetic_store).patients()
    age = raw_clinical(pts)["age"]
    rows: dict[str, dict[str, str]] = {}
    for c in page.cells:
        if c.table.get("id") == "pt-summary":
            rows.setdefault(c.row["data-patient"], {})[c.attrs.get("data-col", "")] = c
    assert rows
    for pid, cols in rows.items():
        r = pts.set_index("patient_id").loc[pid]
        assert cols["gender"].text == r["gender"]
        assert float(cols["lymph_count"].attrs["data-value"]) == pytest.approx(r["lymph_count"])
        assert float(cols["age"].attrs["data-value"]) == pytest.approx(age[pid])
        assert cols["probability"].attrs["data-value"]
        assert cols["triage"].text in ("cytometry", "spared")
    # every head's own table carries them too
    heads = {c.table.get("data-head") for c in page.cells if c.attrs.get("data-col") == "age"}
    assert {"abmil", "meanpool"} <= heads


def test_without_a_store_the_page_says_where_clinical_values_come_from(synthetic_report):
    html = synthetic_report.read_text()
    assert "to show each patient's age, gender and lymphocyte count" in html
    assert 'data-col="age"' not in html


def test_clinical_baseline_is_not_told_to_rerun(synthetic_run, tmp_path):
    run_dir, _ = synthetic_run
    run = _copy_run(run_dir, tmp_path / "run", {"meanpool": "clinical"})
    html = write_report(run, tmp_path / "out", top_k=1).read_text()
    section = html.split('id="head-clinical"')[1]
    assert "The clinical-only baseline reads no cells" in section
    assert "rerun <code>cellbag cv</code>" not in section


def test_galleries_say_where_their_weights_come_from(store_report):
    html = store_report.read_text()
    assert "Galleries (attention, out-of-fold: from the models that did not train" in html


def test_values_are_escaped(synthetic_run, tmp_path):
    run_dir, _ = synthetic_run
    run = _copy_run(run_dir, tmp_path / "run")
    cfg = json.loads((run / "abmil" / "config.json").read_text())
    cfg["params"]["note"] = "<script>alert(1)</script>"
    (run / "abmil" / "config.json").write_text(json.dumps(cfg))
    html = write_report(run, tmp_path / "out", top_k=1).read_text()
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_templates_and_assets_ship_as_package_data():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        pytest.skip("tomllib needs Python 3.11")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    for package in ("report", "retrieval"):
        folder = ROOT / "src" / "cellbag" / package
        files = [p.relative_to(folder).as_posix() for p in folder.glob("*/*") if p.is_file()]
        files = [f for f in files if f.split("/")[0] in ("templates", "static")]
        assert files
        patterns = data[f"cellbag.{package}"]
        for f in files:
            assert any(fnmatch.fnmatch(f, pat) for pat in patterns), f


def test_the_page_is_offline_and_its_assets_inlined(store_report):
    html = store_report.read_text()
    page = read_page(store_report)
    assert "<style>" in html and ".gallery{" in html  # report.css, inlined
    assert "table.sortable" in html  # report.js, inlined
    assert not [a for a in page.links if a.get("href", "").startswith(("http:", "https:"))]
    assert not [s for s in page.scripts if s.get("src")]
    assert all(not i["src"].startswith(("http", "/")) for i in page.imgs)


def test_a_fused_probability_is_split_into_image_and_clinical_log_odds(synthetic_store, tmp_path):
    """Late fusion is one linear model: each patient's fused log-odds is base + image term
    + clinical term, exactly; the run keeps the terms and the report shows them."""
    import numpy as np
    from scipy.special import logit

    from cellbag.evaluate import run_cv

    run = tmp_path / "run"
    run_cv(synthetic_store, None, "meanpool", run, folds=3, repeats=1, seed=0, quiet=True, jobs=1)
    oof = pd.read_csv(run / "meanpool" / "oof_predictions.csv", dtype={"patient_id": str})
    terms = oof[["log_odds_base", "log_odds_image", "log_odds_clinical"]]
    np.testing.assert_allclose(terms.sum(axis=1), logit(oof["probability"]), atol=1e-9)
    assert terms["log_odds_clinical"].abs().max() > 0 and terms["log_odds_image"].abs().max() > 0
    clinical_oof = pd.read_csv(run / "clinical" / "oof_predictions.csv")
    assert not any(c.startswith("log_odds") for c in clinical_oof.columns)  # no image term
    page = read_page(write_report(run, tmp_path / "report", store=synthetic_store, top_k=2))
    shown = {
        (c.row["data-patient"], c.attrs["data-col"]): float(c.attrs["data-value"])
        for c in page.cells
        if c.table.get("id") == "pt-meanpool" and c.attrs.get("data-col", "").startswith("log_odds")
    }
    assert shown
    for (pid, col), value in shown.items():
        assert value == pytest.approx(oof.loc[oof["patient_id"] == pid, col].mean())


def test_late_fusion_parts_sum_to_its_decision():
    import numpy as np

    from cellbag.aggregate.base import LateFusion

    rng = np.random.default_rng(0)
    z, c = rng.normal(size=40), rng.normal(size=(40, 3))
    y = (z + c[:, 0] + rng.normal(size=40) > 0).astype(int)
    f = LateFusion().fit(z, c, y)
    parts = f.parts(z, c)
    np.testing.assert_allclose(parts["base"] + parts["image"] + parts["clinical"], f.decision(z, c))
