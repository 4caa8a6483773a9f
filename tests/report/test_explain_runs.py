"""Explanations for every head (per-cell contributions, galleries, predicted patients) and
the leaderboard across runs (`cellbag runs`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import WITNESS_ENCODER
from htmlparse import read_page
from scipy import special
from typer.testing import CliRunner

from cellbag.aggregate.registry import make_head
from cellbag.aggregate.synthetic import witness_cohort
from cellbag.cli import app
from cellbag.report import write_report
from cellbag.report.leaderboard import collect, rank, write_leaderboard

HEADS = ["meanpool", "maxpool", "lgbm", "abmil"]


@pytest.fixture(scope="module")
def small_cohort():
    wc = witness_cohort(n_patients=24, cells=(6, 14), dim=8, witnesses=2, shift=5.0, seed=3)
    return wc.bags, wc.y


def test_pooled_contributions_sum_to_the_image_logit(small_cohort):
    bags, y = small_cohort
    head = make_head("meanpool", clinical=False, seed=0).fit(bags, y)
    contrib = head.cell_contributions(bags)
    assert head.contribution_kind == "logit"
    p = head.predict_proba(bags)[:, 1]
    logit = special.logit(p)
    for b, c, z in zip(bags, contrib, logit, strict=True):
        assert c.shape == (len(b),)
        # the cells' terms add up to the bag's logit (no clinical part: only the intercept left)
        assert c.sum() + head.intercept_ == pytest.approx(z, abs=1e-6)  # float32 cells


def test_maxpool_contributions_favour_the_arg_max_cell(small_cohort):
    bags, y = small_cohort
    head = make_head("maxpool", clinical=False, seed=0, epochs=5, inner_folds=2).fit(bags, y)
    contrib = head.cell_contributions(bags)
    assert head.contribution_kind == "attention"
    assert all(
        c.shape == (len(b),) and c.sum() == pytest.approx(1.0, abs=1e-5)
        for b, c in zip(bags, contrib, strict=True)
    )


def test_lgbm_contributions_are_the_gain_of_each_cells_cluster(small_cohort):
    bags, y = small_cohort
    head = make_head("lgbm", clinical=False, seed=0, n_estimators=30).fit(bags, y)
    contrib = head.cell_contributions(bags)
    gain = dict(
        zip(head.booster_.feature_name(), head.booster_.feature_importance("gain"), strict=True)
    )
    k = len(head.stats_.centers_)
    g = np.array([gain.get(f"cluster{j}_frac", 0.0) for j in range(k)])
    for b, c in zip(bags, contrib, strict=True):
        cl = head.stats_.assign(head.stats_.project(b))
        assert np.allclose(c, g[cl] / g.sum())


@pytest.fixture(scope="module")
def four_head_run(witness_store, tmp_path_factory):
    from cellbag.evaluate import run_cv

    store, witnesses = witness_store
    root = tmp_path_factory.mktemp("explain")
    run_dir = root / "runs" / "witness"
    run_cv(
        str(store),
        WITNESS_ENCODER,
        HEADS,
        run_dir,
        clinical=False,
        folds=2,
        repeats=1,
        seed=0,
        head_params={
            "abmil": {"epochs": 10, "inner_folds": 2},
            "maxpool": {"epochs": 10, "inner_folds": 2},
            "lgbm": {"n_estimators": 30},
        },
        quiet=True,
    )
    return store, run_dir


def test_every_head_gets_galleries_ranked_by_its_own_scores(four_head_run, tmp_path):
    store, run_dir = four_head_run
    for h in ("meanpool", "lgbm"):
        c = pd.read_csv(run_dir / h / "contributions.csv", dtype={"cell_id": str})
        assert set(c["kind"]) == {"logit" if h == "meanpool" else "cluster gain"}
        assert not (run_dir / h / "attention.csv").exists()  # distill reads attention only
    assert (run_dir / "maxpool" / "attention.csv").is_file()  # softmax of its cell scores
    index = write_report(run_dir, tmp_path / "report", store=str(store), top_k=3)
    page = read_page(index)
    kinds = {a["data-kind"] for t, a in page.elements if t == "p" and "data-kind" in a}
    assert kinds == {"logit", "cluster gain", "attention"}
    for h in HEADS:
        assert [g for g in page.galleries if g[2].get("data-head") == h], f"no gallery for {h}"
    # meanpool's top cells are its highest mean contributions, highest first
    c = pd.read_csv(run_dir / "meanpool" / "contributions.csv", dtype={"cell_id": str})
    mean = c.groupby(["patient_id", "cell_id"])["weight"].mean().reset_index()
    for attrs, row, table in page.galleries:
        if table.get("data-head") != "meanpool" or "top" not in attrs["class"]:
            continue
        pid = row["data-patient"]
        want = (
            mean[mean["patient_id"] == pid]
            .sort_values(["weight", "cell_id"], ascending=[False, True], kind="stable")["cell_id"]
            .head(3)
            .tolist()
        )
        assert attrs["data-cells"].split() == want
    # cells are shown at 128 px and link to a copy of the original image
    shown = [i for i in page.imgs if i["src"].startswith("thumbs/")]
    assert shown and all(i["width"] == "128" for i in shown)
    originals = [a["href"] for a in page.links if a.get("href", "").startswith("cells/")]
    assert originals and all((index.parent / h).is_file() for h in originals)
    html = index.read_text()
    assert "no cell galleries" not in html and 'data-kind="cluster gain"' in html


def test_predict_output_adds_predicted_patients_with_galleries(four_head_run, tmp_path):
    store, run_dir = four_head_run
    runner = CliRunner()
    model = tmp_path / "model"
    r = runner.invoke(
        app, ["fit", str(store), "--head", "meanpool", "--no-clinical", "--out", str(model), "-q"]
    )
    assert r.exit_code == 0, r.output
    assert "next: cellbag predict" in r.output
    sub = tmp_path / "pred" / "sub.csv"
    r = runner.invoke(app, ["predict", str(model), str(store), "--split", "train", "-o", str(sub)])
    assert r.exit_code == 0, r.output
    assert "next: cellbag distill" in r.output
    cells = pd.read_csv(tmp_path / "pred" / "sub_cells.csv", dtype={"cell_id": str})
    assert set(cells["kind"]) == {"logit"} and cells["patient_id"].nunique() == 40
    r = runner.invoke(
        app,
        ["report", str(run_dir), "-o", str(tmp_path / "rep"), "--predictions", str(sub), "-q"],
    )
    assert r.exit_code == 0, r.output
    assert "next: open" in r.output and "next: cellbag fit" in r.output
    page = read_page(tmp_path / "rep" / "index.html")
    rows = {c.row.get("data-patient") for c in page.cells if c.table.get("id") == "pt-test"}
    assert len(rows) == 40
    test_galleries = [g for g in page.galleries if g[2].get("id") == "pt-test"]
    assert len(test_galleries) == 2 * 40
    r = runner.invoke(
        app, ["report", str(run_dir), "-o", str(tmp_path / "x"), "--predictions", str(tmp_path)]
    )
    assert "_proba.csv: missing" in str(r.exception)


def test_runs_leaderboard_ranks_heads_with_intervals_and_reports_link_it(
    four_head_run, synthetic_run, tmp_path
):
    store, run_dir = four_head_run
    other, _ = synthetic_run
    table = rank(collect([run_dir.parent, other]), "balanced_accuracy")
    assert len(table) == len(HEADS) + 2
    ba = table["balanced_accuracy"].to_numpy()
    assert (np.diff(ba) <= 0).all()
    assert (table["balanced_accuracy_lo"] <= ba + 1e-12).all()
    assert (table["balanced_accuracy_hi"] >= ba - 1e-12).all()
    if "brier" in table.columns:  # a lower-is-better figure ranks the other way round
        assert (np.diff(rank(table, "brier")["brier"].to_numpy()) >= 0).all()
    page = write_leaderboard(table, tmp_path / "board" / "leaderboard.html")
    html = page.read_text()
    assert html.count("<tr data-rank=") == len(table)
    assert (tmp_path / "board" / "leaderboard.csv").is_file()
    r = CliRunner().invoke(app, ["runs", str(run_dir.parent)])
    assert r.exit_code == 0, r.output
    assert "next: cellbag fit" in r.output and f"--head {table_best(run_dir)}" in r.output
    assert (run_dir.parent / "leaderboard.html").is_file()
    index = write_report(run_dir, run_dir / "report", top_k=1)
    links = [a for a in read_page(index).links if a.get("id") == "runs-link"]
    assert (
        links
        and (index.parent / links[0]["href"]).resolve()
        == (run_dir.parent / "leaderboard.html").resolve()
    )
    r = CliRunner().invoke(app, ["runs", str(tmp_path / "board")])
    assert "no cv runs under" in str(r.exception)


def table_best(run_dir) -> str:
    return rank(collect([run_dir]))["head"].iloc[0]
