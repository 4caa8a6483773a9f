"""The CLI tells one story: cv, runs and the report name the same best head by one rule;
each `next:` line leads to the natural following command; a cohort given where a store is
expected says so (help at 80 columns: tests/cli/test_daily_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import ENCODER_ID
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.evaluate.stats import BEST_RULE, best_of

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_the_rule_ranks_by_auc_then_name_with_missing_figures_last():
    assert best_of({"meanpool": 0.8, "abmil": 0.9}) == "abmil"
    assert best_of({"meanpool": 0.9, "abmil": 0.9, "lgbm": 0.9}) == "abmil"  # ties: by name
    assert best_of({"abmil": float("nan"), "svm": 0.51}) == "svm"
    assert "ties" in BEST_RULE and "ROC AUC" in BEST_RULE


@pytest.fixture(scope="module")
def tied_run(synthetic_run, tmp_path_factory) -> Path:
    """The synthetic run's heads given the same predictions, listed meanpool first: a tie."""
    from cellbag.evaluate.run_folder import write_summary

    src, _ = synthetic_run
    out = tmp_path_factory.mktemp("tied") / "run"
    out.mkdir()
    (out / "splits.json").write_text((src / "splits.json").read_text())
    oof = pd.read_csv(src / "abmil" / "oof_predictions.csv")
    comp = {}
    for head in ("meanpool", "abmil"):
        (out / head).mkdir()
        cfg = json.loads((src / "abmil" / "config.json").read_text()) | {"head": head}
        (out / head / "config.json").write_text(json.dumps(cfg))
        oof.to_csv(out / head / "oof_predictions.csv", index=False)
        info = {"clinical": True, "folds": 3, "repeats": 2, "seed": 0, "triage_sensitivity": 0.95}
        comp[head] = {"oof": oof, "info": info, "seconds": 1.0}
    write_summary(out, comp, 0, resamples=200)
    return out


def test_cv_runs_and_report_name_the_same_best_head(tied_run, tmp_path):
    from cellbag.cli.aggregate_cmds import best_line
    from cellbag.evaluate.display import comparison_table
    from cellbag.evaluate.run_folder import best_head
    from cellbag.report.leaderboard import collect, rank

    metrics = json.loads((tied_run / "meanpool" / "metrics.json").read_text())
    assert metrics["best"] == "abmil"  # what cv records
    table = pd.read_csv(tied_run / "comparison.csv")
    assert "best head: abmil" in best_line(table)  # what cv prints
    assert "ties" in str(comparison_table(table).caption)
    assert best_head(tied_run).name == "abmil"  # what distill and report's fit hint take
    assert rank(collect([tied_run])).iloc[0]["head"] == "abmil"  # what runs puts first
    r = runner.invoke(app, ["runs", str(tied_run), "--out", str(tmp_path / "lb.html")])
    assert r.exit_code == 0, r.output
    assert "--head abmil" in _flat(r.output).split("next:")[-1]
    assert "ties: the first by name" in _flat(r.output)


def test_report_next_line_fits_with_the_cv_run(synthetic_run, tmp_path):
    run_dir, _ = synthetic_run
    r = runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "rep"), "-q"])
    assert r.exit_code == 0, r.output
    fit = [line for line in _flat(r.output).split("next: ") if line.startswith("cellbag fit")]
    assert fit and f"--cv-run {run_dir}" in fit[0] and "--threshold youden" in fit[0]


def test_predict_offers_the_report_before_distill(synthetic_store, synthetic_run, tmp_path):
    run_dir, _ = synthetic_run
    model = tmp_path / "model"
    r = runner.invoke(
        app,
        ["fit", str(synthetic_store), "-e", ENCODER_ID, "--head", "meanpool", "-o", str(model)],
    )
    assert r.exit_code == 0, r.output
    (model / "config.yaml").write_text(f"cv_run: {run_dir}\n")  # as fit --cv-run records it
    sub = tmp_path / "sub.csv"
    r = runner.invoke(app, ["predict", str(model), str(synthetic_store), "-o", str(sub)])
    assert r.exit_code == 0, r.output
    hints = [h.strip() for h in _flat(r.output).split("next: ")[1:]]
    assert hints[0].startswith(f"cellbag report {run_dir} --store {synthetic_store}")
    assert f"--predictions {sub}" in hints[0]
    assert hints[1].startswith("cellbag distill ")


@pytest.mark.parametrize("verb", [["cv"], ["fit"], ["store", "info"], ["index"]])
def test_a_cohort_where_a_store_is_expected(demo_cohort, tmp_path, verb):
    args = {
        "cv": ["--out", str(tmp_path / "run")],
        "fit": ["--head", "meanpool", "--out", str(tmp_path / "m")],
    }.get(verb[0], [])
    r = runner.invoke(app, [*verb, str(demo_cohort), *args])
    assert r.exit_code != 0
    msg = _flat(f"{r.output} {r.exception or ''}")
    assert (
        f"{demo_cohort} is a cohort, not a store: cellbag featurize {demo_cohort} STORE first"
        in msg
    )
    assert "GroupNotFound" not in msg
