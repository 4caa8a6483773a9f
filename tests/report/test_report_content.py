"""The report's figures equal the run's files; galleries show the most-weighted cells."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from htmlparse import read_page

from cellbag.report import load_run, write_report

METRICS = ("balanced_accuracy", "roc_auc", "f1", "sensitivity", "specificity")


@pytest.fixture(scope="module")
def page(synthetic_report):
    return read_page(synthetic_report)


def test_metrics_tables_equal_metrics_json(synthetic_run, page):
    run_dir, _ = synthetic_run
    seen = 0
    for head in ("abmil", "meanpool"):
        m = json.loads((run_dir / head / "metrics.json").read_text())
        expected = {"mean": "mean", "std": "std", "lo": 0, "hi": 1}
        for c in page.cells:
            if c.attrs.get("data-head") != head or "data-stat" not in c.attrs:
                continue
            block = m[c.attrs["data-metric"]]
            key = expected[c.attrs["data-stat"]]
            want = block[key] if isinstance(key, str) else block["ci95"][key]
            assert float(c.attrs["data-value"]) == want
            assert c.text == f"{want:.3f}"
            seen += 1
        # the comparison table: mean shown first, std and interval beside it
        comp = [
            c
            for c in page.cells
            if c.table.get("id") == "metrics-table" and c.attrs.get("data-head") == head
        ]
        assert {c.attrs["data-metric"] for c in comp} == set(METRICS)
        for c in comp:
            block = m[c.attrs["data-metric"]]
            assert float(c.attrs["data-value"]) == block["mean"]
            assert c.text.startswith(f"{block['mean']:.3f} ± {block['std']:.3f}")
            assert f"[{block['ci95'][0]:.3f}, {block['ci95'][1]:.3f}]" in c.text
    assert seen == 2 * len(METRICS) * 4


def test_patient_table_equals_oof_predictions(synthetic_run, page):
    run_dir, _ = synthetic_run
    for head in ("abmil", "meanpool"):
        oof = pd.read_csv(run_dir / head / "oof_predictions.csv", dtype={"patient_id": str})
        mean = oof.groupby("patient_id")["probability"].mean()
        label = oof.groupby("patient_id")["label"].first()
        rows = {}
        for c in page.cells:
            if c.table.get("id") == f"pt-{head}" and c.attrs.get("data-col"):
                rows.setdefault(c.row["data-patient"], {})[c.attrs["data-col"]] = c
        assert set(rows) == set(mean.index)
        tp = fn = fp = tn = 0
        for pid, cols in rows.items():
            p = float(cols["probability"].attrs["data-value"])
            assert p == pytest.approx(mean[pid], abs=1e-12)
            assert cols["probability"].text.startswith(f"{mean[pid]:.3f}")
            pred = int(mean[pid] >= 0.5)
            assert int(cols["predicted"].attrs["data-value"]) == pred
            correct = pred == label[pid]
            assert cols["correct"].attrs["data-value"] == str(int(correct))
            assert cols["correct"].row["data-label"] == str(label[pid])
            tp += pred == 1 and label[pid] == 1
            fn += pred == 0 and label[pid] == 1
            fp += pred == 1 and label[pid] == 0
            tn += pred == 0 and label[pid] == 0
        cm = {
            c.attrs["data-cm"]: int(c.attrs["data-value"])
            for c in page.cells
            if c.table.get("class") == "confusion" and c.table.get("data-head") == head
        }
        assert cm == {"tp": tp, "fn": fn, "fp": fp, "tn": tn}
        # the embedded data blob says the same
        blob = page.data["heads"][head]
        assert blob["confusion"] == cm
        assert {r["patient_id"]: r["probability"] for r in blob["patients"]} == pytest.approx(
            mean.to_dict(), abs=1e-12
        )


def test_galleries_show_the_most_weighted_cells_first(synthetic_run, page):
    run_dir, gt = synthetic_run
    att = pd.read_csv(run_dir / "abmil" / "attention.csv", dtype={"cell_id": str})
    w = att.groupby(["patient_id", "cell_id"])["weight"].mean()
    witness = gt.set_index("cell_id")["witness"]
    k = 3
    checked_witness = 0
    galleries = {(row["data-patient"], div["class"]): div for div, row, t in page.galleries}
    for pid, cells in w.groupby(level=0):
        order = cells.droplevel(0).sort_values(ascending=False)
        top = galleries[(pid, "gallery top")]["data-cells"].split()
        bottom = galleries[(pid, "gallery bottom")]["data-cells"].split()
        assert top == list(order.index[:k])
        assert bottom == list(order.index[::-1][: min(k, len(order) - k)])
        assert not set(top) & set(bottom)
        n_wit = int(witness[order.index].sum())
        if n_wit:  # the witness cells the head weighted most lead the gallery
            assert all(witness[c] == 1 for c in top[: min(n_wit, k)])
            assert all(witness[c] == 0 for c in bottom)
            checked_witness += 1
    assert checked_witness >= 2
    # the meanpool head has no attention: no galleries for it
    assert not [g for g in page.galleries if g[2].get("data-head") == "meanpool"]


def test_page_is_self_contained(synthetic_report, page):
    html = synthetic_report.read_text()
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html)
    assert "<link" not in html  # no external stylesheet
    assert all(not s.get("src") for s in page.scripts)  # inline scripts only
    assert page.imgs
    for img in page.imgs:
        assert (synthetic_report.parent / img["src"]).is_file(), img["src"]
    thumbs = list((synthetic_report.parent / "thumbs").iterdir())
    shown = {i["src"] for i in page.imgs if i["src"].startswith("thumbs/")}
    assert len(thumbs) == len(shown)  # one file per cell, however often it is shown


def test_thumbnails_written_once_and_report_deterministic(synthetic_run, tmp_path):
    run_dir, _ = synthetic_run
    a = write_report(run_dir, tmp_path / "r", top_k=2)
    thumbs = sorted((tmp_path / "r" / "thumbs").iterdir())
    stamps = [p.stat().st_mtime_ns for p in thumbs]
    first = a.read_bytes()
    b = write_report(run_dir, tmp_path / "r", top_k=2)
    assert b.read_bytes() == first
    assert [p.stat().st_mtime_ns for p in thumbs] == stamps  # not rewritten
    assert not list((tmp_path / "r").glob(".*tmp*"))


def test_head_folder_alone_and_threshold_from_metrics(synthetic_run, tmp_path):
    run_dir, _ = synthetic_run
    run = load_run(run_dir / "abmil")
    assert [h.name for h in run.heads] == ["abmil"]
    assert run.folder == run_dir  # splits.json one level up
    # a chosen threshold in metrics.json drives predictions and the confusion matrix
    d = tmp_path / "run" / "abmil"
    d.mkdir(parents=True)
    for f in (run_dir / "abmil").iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    m = json.loads((d / "metrics.json").read_text())
    m["threshold"] = 0.99
    (d / "metrics.json").write_text(json.dumps(m))
    page = read_page(write_report(d, tmp_path / "out", top_k=1))
    preds = [c for c in page.cells if c.attrs.get("data-col") == "predicted"]
    assert preds and all(c.attrs["data-value"] == "0" for c in preds)
    cm = page.data["heads"]["abmil"]["confusion"]
    assert cm["tp"] == 0 and cm["fp"] == 0


def test_unreadable_image_gives_a_placeholder_and_a_note(synthetic_run, tmp_path):
    run_dir, _ = synthetic_run
    d = tmp_path / "run" / "abmil"
    d.mkdir(parents=True)
    for f in (run_dir / "abmil").iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    att = pd.read_csv(d / "attention.csv")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    att.loc[att["cell_id"] == att["cell_id"].iloc[0], "path"] = str(bad)
    att.loc[att["cell_id"] == att["cell_id"].iloc[-1], "path"] = str(tmp_path / "gone.jpg")
    att.to_csv(d / "attention.csv", index=False)
    index = write_report(d, tmp_path / "out", top_k=50)  # every cell shown
    html = index.read_text()
    assert "2 cell image(s) could not be read" in html
    assert html.count('class="noimg"') == 2
    page = read_page(index)
    assert all((index.parent / i["src"]).is_file() for i in page.imgs)


def test_roc_figures(synthetic_report, page):
    png = synthetic_report.parent / "roc.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    srcs = {i["src"] for i in page.imgs}
    assert "roc.png" in srcs
    assert "heads/abmil_roc.png" in srcs  # the run's own figure, copied
    assert "heads/meanpool_roc.png" not in srcs  # that head has none


def test_config_and_encoder_shown(synthetic_report, page):
    html = synthetic_report.read_text()
    keys = {c.attrs.get("data-key"): c.text for c in page.cells if c.attrs.get("data-key")}
    assert keys["encoder_id"] == "tf_efficientnet_lite0-synthetic"
    assert keys["folds"] == "3" and keys["repeats"] == "2"
    assert keys["params.epochs"] == "50"  # abmil's own parameters in its section
    assert "--store STORE" in html


def test_api_returns_index_path(synthetic_report):
    assert isinstance(synthetic_report, Path) and synthetic_report.name == "index.html"
