"""The report's figures equal the run's files; galleries show the most-weighted cells."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from htmlparse import read_page

from cellbag.evaluate.metrics import METRICS
from cellbag.report import load_run, write_report
from cellbag.report.render import SUMMARY_METRICS


@pytest.fixture(scope="module")
def page(synthetic_report):
    return read_page(synthetic_report)


def test_metrics_tables_equal_metrics_json(synthetic_run, page):
    run_dir, _ = synthetic_run
    seen = 0
    for head in ("abmil", "meanpool"):
        m = json.loads((run_dir / head / "metrics.json").read_text())["metrics"]
        expected = {"value": "value", "lo": "ci95_low", "hi": "ci95_high", "fold_sd": "fold_sd"}
        for c in page.cells:
            if c.attrs.get("data-head") != head or "data-stat" not in c.attrs:
                continue
            want = m[c.attrs["data-metric"]][expected[c.attrs["data-stat"]]]
            assert float(c.attrs["data-value"]) == want
            assert c.text == f"{want:.3f}"
            seen += 1
        # the comparison table: value first, then its interval and the fold sd
        comp = [
            c
            for c in page.cells
            if c.table.get("id") == "metrics-table" and c.attrs.get("data-head") == head
        ]
        assert {c.attrs["data-metric"] for c in comp} == set(SUMMARY_METRICS)
        for c in comp:
            block = m[c.attrs["data-metric"]]
            assert float(c.attrs["data-value"]) == block["value"]
            assert c.text.startswith(f"{block['value']:.3f}")
            assert f"[{block['ci95_low']:.3f}, {block['ci95_high']:.3f}]" in c.text
            assert f"fold sd {block['fold_sd']:.3f}" in c.text
    assert seen == 2 * len(METRICS) * 4


def test_paired_comparison_triage_and_calibration_sections(synthetic_run, synthetic_report):
    run_dir, _ = synthetic_run
    html = synthetic_report.read_text()
    pairs = pd.read_csv(run_dir / "comparison_pairs.csv")
    assert len(pairs) == 2  # abmil vs meanpool on ROC AUC and balanced accuracy
    for r in pairs.itertuples():
        assert r.verdict in html
        if r.ci95_low <= 0 <= r.ci95_high:
            assert r.verdict == "no difference shown"
    for fig in ("triage.png", "calibration.png"):
        assert f'src="{fig}"' in html
        assert (synthetic_report.parent / fig).read_bytes()[:4] == b"\x89PNG"
    m = json.loads((run_dir / "abmil" / "metrics.json").read_text())["metrics"]
    assert f"{m['triage_spared']['value']:.3f} [{m['triage_spared']['ci95_low']:.3f}" in html
    assert f"{m['brier']['value']:.3f} [{m['brier']['ci95_low']:.3f}" in html


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
