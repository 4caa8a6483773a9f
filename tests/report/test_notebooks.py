"""The notebooks run top to bottom, offline, on a small demo cohort (nbclient), without
warning spam, and show their outputs (progress lines and tables)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = (
    "01_quickstart",
    "02_aggregators",
    "03_retrieval",
    "04_own_cohort",
    "05_fit_predict_distill",
)
SMALL = {
    "CELLBAG_NB_PATIENTS": "12",
    "CELLBAG_NB_CELLS": "6",
    "CELLBAG_NB_IMAGE_SIZE": "48",
    "CELLBAG_NB_FOLDS": "2",
    "CELLBAG_NB_REPEATS": "1",
    "CELLBAG_NB_DISTILL_EPOCHS": "1",
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "2",
    "CELLBAG_NB_EPOCHS": "10",
}
#: what a reader must never see in a notebook's output
SPAM = ("ipywidgets", "Warning", "Traceback")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stripped_and_uses_python3(name):
    nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.fixture(scope="module")
def nb_work(tmp_path_factory):
    """One work folder for the notebooks, run in order (later ones reuse 01's store)."""
    return tmp_path_factory.mktemp("notebooks")


def _text(output) -> str:
    if output.output_type == "stream":
        return output.text
    return "\n".join(str(v) for v in output.get("data", {}).values())


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, nb_work, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for k, v in SMALL.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CELLBAG_PROGRESS", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows figures
    monkeypatch.setenv("CELLBAG_NB_WORK", str(nb_work / "work"))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(nb_work)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    spam = [_text(o)[:200] for o in outputs if any(s in _text(o) for s in SPAM)]
    assert not spam, spam
    # every code cell shows something (a table, a figure, a line of progress or of results)
    silent = ["".join(c.source)[:60] for c in code if not c.outputs]
    assert not silent, silent
    # long steps show progress as plain lines in a notebook (no widget needed)
    progress = [o.text for o in outputs if o.output_type == "stream" and "ETA" in o.text]
    if name in ("01_quickstart", "04_own_cohort", "05_fit_predict_distill"):
        assert progress, f"{name}: no progress line"
    work = nb_work / "work"
    if name == "01_quickstart":
        assert (work / "report" / "index.html").is_file()
    if name == "04_own_cohort":
        assert (work / "own_report" / "index.html").is_file()
        assert (work / "own_runs" / "leaderboard.html").is_file()
    if name == "05_fit_predict_distill":
        assert (work / "submission.csv").is_file() and (work / "student_submission.csv").is_file()
