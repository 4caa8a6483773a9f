"""Daily use of the CLI: examples in every verb's help, one option vocabulary with the old
spellings as hidden, announced aliases, a closing `next:` line, ordinary file permissions."""

from __future__ import annotations

import os
import re
import stat

import pandas as pd
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from cellbag.cli import app

runner = CliRunner()


def _verbs(cmd=None, prefix=()):
    cmd = cmd or typer.main.get_command(app)
    for name, sub in cmd.commands.items():
        if hasattr(sub, "commands"):
            yield from _verbs(sub, (*prefix, name))
        else:
            yield (*prefix, name)


VERBS = list(_verbs())


def test_the_cli_has_its_verbs():
    assert {("cv",), ("runs",), ("report",), ("store", "info")} <= set(VERBS)


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_examples_and_clean_help(verb):
    r = runner.invoke(app, [*verb, "--help"], env={"COLUMNS": "120"})
    assert r.exit_code == 0, r.output
    assert "Examples:" in r.output and f"cellbag {' '.join(verb)}" in r.output
    assert "<bool>" not in r.output and "{" not in r.output.split("Options")[0]
    for old in ("--student", "--top-k", "--model", "--k "):
        assert old not in r.output  # hidden aliases stay hidden


def _manifest(tmp_path, clinical: bool):
    rows = []
    for pid in ("A", "B", "C"):
        for j in range(2):
            p = tmp_path / "imgs" / pid / f"{j}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (200, 100, 100)).save(p)
            rows.append((pid, str(p.relative_to(tmp_path)), "train"))
    pd.DataFrame(rows, columns=["patient_id", "image_path", "split"]).to_csv(
        tmp_path / "manifest.csv", index=False
    )
    if clinical:
        (tmp_path / "clin.csv").write_text(
            "patient_id,label,gender,dob,lymph_count\nA,1,F,1/2/1950,10\nB,0,M,1/2/1960,3\n"
        )
    return tmp_path / "manifest.csv"


def test_inspect_reports_unlabeled_patients_and_missing_clinical_data(tmp_path):
    m = _manifest(tmp_path, clinical=False)
    r = runner.invoke(app, ["inspect", str(m)])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "No problems found" not in out
    assert "none of the 3 training patients has a label" in out
    assert "no clinical data for any patient" in out
    assert "nan" not in out  # a variable nobody has prints dashes
    assert f"next: cellbag featurize {m} {tmp_path.parent / 'store.zarr'}" in out


def test_inspect_class_balance_and_the_old_clinical_spelling(tmp_path):
    m = _manifest(tmp_path, clinical=True)
    r = runner.invoke(app, ["inspect", str(m), "--clinical", str(tmp_path / "clin.csv")])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "deprecated: --clinical is now --clinical-csv" in out
    assert "class balance (labelled training patients): 1 reactive / 1 tumoral (50% tumoral)" in out
    assert "1 of 3 training patients have no label" in out and ": C" in out
    assert "1 patient(s) have no clinical data at all" in out
    r2 = runner.invoke(app, ["inspect", str(m), "--clinical-csv", str(tmp_path / "clin.csv")])
    assert "deprecated" not in r2.output and "1 reactive / 1 tumoral" in " ".join(r2.output.split())


def test_demo_data_and_encoders_end_with_a_next_line(tmp_path):
    r = runner.invoke(app, ["demo-data", str(tmp_path / "d"), "--patients", "4"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == f"next: cellbag inspect {tmp_path / 'd'}"
    r = runner.invoke(app, ["demo-data", str(tmp_path / "e"), "--patients", "3"])
    assert r.exit_code != 0  # demo and demo-data share one minimum
    r = runner.invoke(app, ["encoders"])
    assert r.exit_code == 0 and r.output.strip().splitlines()[-1].startswith(
        "next: cellbag featurize"
    )


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_pages_get_ordinary_permissions(tmp_path, umask):
    from cellbag.retrieval.render import _atomic_write

    old = os.umask(umask)
    try:
        _atomic_write(tmp_path / "page.html", b"<html></html>")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "page.html").stat().st_mode)
    assert mode == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]  # no temporary left


def test_an_index_prints_as_one_short_line():
    import numpy as np

    from cellbag.retrieval.faiss_index import CellIndex

    vecs = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    index = CellIndex.build(lambda: iter([vecs]), 500, 8)
    assert repr(index) == "CellIndex(flat, 500 cells, dim 8)"


@pytest.mark.parametrize("verb", [(), ("store",), *VERBS], ids=lambda v: " ".join(v) or "-")
def test_help_reads_at_80_columns(verb):
    r = runner.invoke(app, [*verb, "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    wide = [line for line in r.output.splitlines() if len(line) > 80]
    assert not wide, wide
    cmd = typer.main.get_command(app)
    for name in verb:
        cmd = cmd.commands[name]
    for p in cmd.params:
        if getattr(p, "hidden", False):
            continue
        for opt in (*p.opts, *p.secondary_opts):
            if opt.startswith("--"):
                assert re.search(rf"(^|[\s,/]){re.escape(opt)}(\s|,|$)", r.output, re.M), opt
    assert "…" not in r.output
