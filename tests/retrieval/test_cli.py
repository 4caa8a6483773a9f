"""`cellbag index` and `cellbag neighbors`."""

from __future__ import annotations

import json

import pytest
from conftest import FAKE, fake_embeddings
from PIL import Image
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.errors import CellbagError
from cellbag.retrieval import index_dir


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_index_command_builds_the_asked_kind(fake_store):
    r = run("index", fake_store.path, "--encoder", FAKE, "--kind", "ivf", "--nlist", "2")
    assert r.exit_code == 0, r.output
    n = len(fake_store.cells())
    assert f"ivf index of fake-encoder: {n} cells" in r.output.replace(",", "")
    info = json.loads((index_dir(fake_store, FAKE) / "index.json").read_text())
    assert info["kind"] == "ivf" and info["params"]["nlist"] == 2


def test_neighbors_command_prints_table_and_writes_pictures(fake_store, tmp_path):
    cell = fake_store.cells()["cell_id"].iloc[0]
    pid = fake_store.cells()["patient_id"].iloc[0]
    r = run(
        "neighbors", fake_store.path, "--cell", cell, "-k", "4", "--other-patients",
        "--html", tmp_path / "p.html", "--montage", tmp_path / "m.png",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "4 nearest cells to" in r.output and "similarity" in r.output
    assert f" {pid} " not in r.output  # the query's patient is excluded
    assert (tmp_path / "p.html").is_file() and (tmp_path / "m.png").is_file()
    with Image.open(tmp_path / "m.png") as im:
        assert im.width > 0


def test_neighbors_command_notices_a_stale_index_or_refuses(fake_store):
    cell = fake_store.cells()["cell_id"].iloc[0]
    assert run("index", fake_store.path).exit_code == 0
    fake_store.add_embeddings(FAKE, fake_embeddings(len(fake_store.cells()), 7), {"name": FAKE})
    r = run("neighbors", fake_store.path, "--cell", cell, "--no-rebuild")
    assert isinstance(r.exception, CellbagError) and "stale index" in str(r.exception)
    r = run("neighbors", fake_store.path, "--cell", cell, "-k", "2")
    assert r.exit_code == 0, r.output
    assert "notice:" in r.output and "rebuilding stale index" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "lsh"], "unknown --kind 'lsh'"),
    ],
)
def test_index_command_errors(fake_store, args, message):
    r = run("index", fake_store.path, *args)
    assert r.exit_code == 2 and message in r.output


def test_neighbors_command_usage_errors(fake_store):
    r = run("neighbors", fake_store.path)
    assert r.exit_code == 2 and "exactly one of --cell" in r.output
    r = run("neighbors", fake_store.path, "--cell", "x", "--split", "val")
    assert r.exit_code == 2 and "unknown --split 'val'" in r.output


def test_help_texts():
    for cmd in ("index", "neighbors"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "--encoder" in r.output
