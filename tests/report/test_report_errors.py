"""Bad input gives one clear line naming the file; the CLI prints it without a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from cellbag.cli.app import app
from cellbag.report import ReportError, write_report


@pytest.fixture
def run_copy(synthetic_run, tmp_path):
    run_dir, _ = synthetic_run
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def _err(run, out, match):
    with pytest.raises(ReportError, match=match) as e:
        write_report(run, out)
    assert "\n" not in str(e.value)
    return e


def test_missing_run_folder(tmp_path):
    _err(tmp_path / "nope", tmp_path / "out", r"run folder .*nope not found")


def test_folder_without_heads(tmp_path):
    (tmp_path / "empty").mkdir()
    _err(tmp_path / "empty", tmp_path / "out", r"empty: no head results .*cellbag cv")


def test_invalid_metrics_json(run_copy, tmp_path):
    (run_copy / "abmil" / "metrics.json").write_text("{not json")
    _err(run_copy, tmp_path / "out", r"abmil/metrics.json: not valid JSON")


def test_metrics_json_without_metrics(run_copy, tmp_path):
    (run_copy / "abmil" / "metrics.json").write_text(json.dumps({"threshold": 0.5}))
    _err(run_copy, tmp_path / "out", r"abmil/metrics.json: no metrics found")


def test_oof_missing_column(run_copy, tmp_path):
    p = run_copy / "meanpool" / "oof_predictions.csv"
    pd.read_csv(p).drop(columns=["probability"]).to_csv(p, index=False)
    _err(
        run_copy, tmp_path / "out", r"meanpool/oof_predictions.csv: missing column\(s\) probability"
    )


def test_oof_probability_out_of_range_names_patient(run_copy, tmp_path):
    p = run_copy / "meanpool" / "oof_predictions.csv"
    df = pd.read_csv(p, dtype={"patient_id": str})
    df.loc[3, "probability"] = 1.7
    df.to_csv(p, index=False)
    _err(
        run_copy,
        tmp_path / "out",
        rf"patient {df.loc[3, 'patient_id']} is not a number in \[0, 1\]",
    )


def test_attention_names_unknown_patient(run_copy, tmp_path):
    p = run_copy / "abmil" / "attention.csv"
    df = pd.read_csv(p, dtype={"patient_id": str})
    df.loc[0, "patient_id"] = "P999"
    df.to_csv(p, index=False)
    _err(run_copy, tmp_path / "out", r"attention.csv names patient P999")


def test_out_is_a_file(run_copy, tmp_path):
    (tmp_path / "file").write_text("x")
    _err(run_copy, tmp_path / "file", r"report folder .*file is a file")


def test_failure_keeps_previous_report(run_copy, tmp_path):
    index = write_report(run_copy, tmp_path / "out", top_k=1)
    before = index.read_bytes()
    (run_copy / "abmil" / "metrics.json").write_text("{")
    with pytest.raises(ReportError):
        write_report(run_copy, tmp_path / "out", top_k=1)
    assert index.read_bytes() == before


def test_cli_writes_report(synthetic_run, tmp_path):
    run_dir, _ = synthetic_run
    r = CliRunner().invoke(
        app, ["report", str(run_dir), "--out", str(tmp_path / "o"), "--top-k", "2"]
    )
    assert r.exit_code == 0, r.output
    assert "Report written" in r.output and (tmp_path / "o" / "index.html").is_file()


def test_cli_help():
    r = CliRunner().invoke(app, ["report", "--help"])
    assert r.exit_code == 0 and "--store" in r.output and "--cells" in r.output


def test_cli_error_is_one_line(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "cellbag",
            "report",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert "nope not found" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_missing_store_is_one_line(synthetic_run, tmp_path):
    from cellbag.errors import CellbagError

    run_dir, _ = synthetic_run
    with pytest.raises(CellbagError, match="nope.zarr") as e:
        write_report(run_dir, tmp_path / "out", store=str(tmp_path / "nope.zarr"))
    assert "\n" not in str(e.value)


def test_embedded_data_is_strict_json(synthetic_run, tmp_path):
    import re

    run_dir, _ = synthetic_run
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    m = json.loads((d / "abmil" / "metrics.json").read_text())
    m["metrics"]["roc_auc"]["fold_sd"] = float("nan")  # e.g. a single-class fold
    (d / "abmil" / "metrics.json").write_text(json.dumps(m))
    html = write_report(d, tmp_path / "out", top_k=1).read_text()
    blob = re.search(
        r'<script type="application/json" id="cellbag-data">(.*?)</script>', html, re.S
    )
    data = json.loads(blob.group(1), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert data["heads"]["abmil"]["metrics"]["roc_auc"]["fold_sd"] is None
