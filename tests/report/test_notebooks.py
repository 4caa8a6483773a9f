"""The three notebooks run top to bottom, offline, on a small demo cohort (nbclient)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ("01_quickstart", "02_aggregators", "03_retrieval")
SMALL = {
    "CELLBAG_NB_PATIENTS": "12",
    "CELLBAG_NB_CELLS": "6",
    "CELLBAG_NB_IMAGE_SIZE": "48",
    "CELLBAG_NB_FOLDS": "2",
    "CELLBAG_NB_REPEATS": "1",
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "2",
    "MPLBACKEND": "Agg",
    "CELLBAG_NB_EPOCHS": "10",
}


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stripped_and_uses_python3(name):
    nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.fixture(scope="module")
def nb_work(tmp_path_factory):
    """One work folder for the three notebooks, run in order (02 and 03 reuse 01's store)."""
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, nb_work, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for k, v in SMALL.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CELLBAG_NB_WORK", str(nb_work / "work"))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(nb_work)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    if name == "01_quickstart":
        assert (nb_work / "work" / "report" / "index.html").is_file()
