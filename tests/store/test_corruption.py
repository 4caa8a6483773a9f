"""Never corrupt (issue 32, 1.4-1.6 and 3): for every array of a small store, one chunk
deleted, truncated or with one bit flipped; every reader (``Store.open`` + bags, ``store
info``, ``store verify``, ``export-h5``, cv's ``load_bags``, the retrieval index) either
raises the store's one-line error or, for ``verify`` (and ``info`` for an encoder),
reports it; none returns numbers. Plus the patient table checks and the table digest."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.data import Cohort
from cellbag.errors import CellbagError
from cellbag.store import Store, StoreError, export_h5
from cellbag.store.verify import check_encoder, repair

ENC = "fake-0001"
FAULTS = ("delete", "truncate", "flip")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, store_cohort: Cohort, fake_embeddings: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "s.zarr"
    s = Store.create(path, store_cohort, chunk_rows=4, block_rows=8)
    s.add_embeddings(ENC, fake_embeddings, {"name": "fake"})
    return path


def _arrays(path: Path) -> list[str]:
    g = zarr.open_group(str(path), mode="r")
    return sorted(k for k, a in g.members(max_depth=None) if isinstance(a, zarr.Array))


ARRAYS = [
    *(f"cells/{n}" for n in ("cell_id", "mtime_ns", "patient_id", "path", "reason")),
    *(f"cells/{n}" for n in ("sha256", "size", "status")),
    *(f"embeddings/{ENC}/{n}" for n in ("data", "done", "status")),
    *(f"patients/{n}" for n in ("dob", "gender", "label", "lymph_count", "n_cells")),
    *(f"patients/{n}" for n in ("offsets", "patient_id", "split")),
]


def test_the_matrix_covers_every_array(pristine: Path) -> None:
    assert _arrays(pristine) == sorted(ARRAYS)


def damage(path: Path, array: str, fault: str) -> Path:
    """Damage one chunk file of ``array`` (the middle one) in place; return it."""
    files = sorted(p for p in (path / array / "c").rglob("*") if p.is_file())
    chunk = files[len(files) // 2]
    raw = chunk.read_bytes()
    if fault == "delete":
        chunk.unlink()
    elif fault == "truncate":
        chunk.write_bytes(raw[: len(raw) // 2])
    else:
        i = len(raw) // 2
        chunk.write_bytes(raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1 :])
    return chunk


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert isinstance(e, CellbagError) and "\n" not in text and "Traceback" not in text, text
    return text


def _must_fail(fn, *args, **kw) -> str:
    try:
        out = fn(*args, **kw)
    except CellbagError as e:
        return _one_line(e)
    raise AssertionError(f"{fn.__name__} returned {type(out).__name__} from a damaged store")


def _read_all(path: Path) -> None:
    s = Store.open(path)
    s.bags(ENC)
    s.bag(s.patients()["patient_id"].iloc[0], ENC)


def _load_bags(path: Path) -> None:
    from cellbag.aggregate.bags import load_bags

    load_bags(str(path), ENC, split="all")


def _index(path: Path) -> None:
    from cellbag.retrieval.store_index import build_index

    build_index(Store.open(path), ENC, save=False)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("array", ARRAYS)
def test_every_reader_refuses_a_damaged_chunk(
    tmp_path: Path, pristine: Path, array: str, fault: str
) -> None:
    path = tmp_path / "s.zarr"
    shutil.copytree(pristine, path)
    damage(path, array, fault)
    table = not array.startswith("embeddings/")
    msg = _must_fail(_read_all, path)
    assert str(path) in msg and ("damaged" in msg or "checksum" in msg or "missing" in msg)
    _must_fail(_load_bags, path)
    _must_fail(_index, path)
    out = tmp_path / "out"
    _must_fail(lambda: export_h5(Store.open(path), ENC, out))
    assert not out.exists() or not any(out.rglob("*.h5"))  # nothing written from it
    runner = CliRunner()
    res = runner.invoke(app, ["store", "verify", str(path)])
    assert res.exit_code == 1 and "bad" in res.output, res.output
    info = runner.invoke(app, ["store", "info", str(path)])
    if table:
        assert isinstance(info.exception, StoreError), info.output
    elif array.endswith("/data") and fault != "delete":
        pass  # `info` reads no data chunk (it says so); verify, above, reads every one
    else:
        assert "damaged" in info.output and "complete (" not in info.output, info.output


@pytest.mark.parametrize("array", ["done", "status", "data"])
@pytest.mark.parametrize("fault", FAULTS)
def test_verify_repair_then_recompute_restores_an_encoder(
    tmp_path: Path, pristine: Path, fake_embeddings: np.ndarray, array: str, fault: str
) -> None:
    path = tmp_path / "s.zarr"
    shutil.copytree(pristine, path)
    damage(path, f"embeddings/{ENC}/{array}", fault)
    s = Store.open(path, mode="r+")
    check = check_encoder(s, ENC)
    assert check.findings and not check.ok
    blocks = repair(s, check)
    assert blocks and not Store.open(path).is_complete(ENC)
    for b in blocks:  # what featurize does for the un-marked blocks
        a, z = s.block_range(b)
        s.write_block(ENC, b, fake_embeddings[a:z])
    assert s.mark_complete(ENC)
    again = Store.open(path)
    assert check_encoder(again, ENC).ok
    np.testing.assert_array_equal(again.read_rows(ENC, 0, again.n_cells), _expected(pristine))


def _expected(pristine: Path) -> np.ndarray:
    s = Store.open(pristine)
    return s.read_rows(ENC, 0, s.n_cells)


def _edit(path: Path, array: str, values: np.ndarray, digest: bool = False) -> None:
    from cellbag.store.feature_store import record_tables_digest

    g = zarr.open_group(str(path), mode="r+")
    g[array][:] = values
    if digest:
        record_tables_digest(g)


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda off: off + np.r_[0, 1, np.zeros(len(off) - 2, int)], "n_cells disagrees"),
        (lambda off: np.r_[off[:-1], off[-1] - 1], "offsets must rise"),
        (lambda off: np.r_[off[0], off[2], off[1], off[3:]], "never decreasing"),
    ],
)
def test_patient_table_is_validated_on_open(tmp_path: Path, pristine: Path, change, why) -> None:
    """Even with a digest recorded to match (an edit by hand), the table must make sense."""
    path = tmp_path / "s.zarr"
    shutil.copytree(pristine, path)
    off = np.asarray(zarr.open_group(str(path))["patients/offsets"][:])
    _edit(path, "patients/offsets", change(off), digest=True)
    with pytest.raises(StoreError, match=why):
        Store.open(path)


def test_a_flipped_label_or_offset_is_refused_by_the_digest(tmp_path: Path, pristine: Path) -> None:
    """Values that still look valid (a label 0 -> 1, a shifted bag) fail the digest."""
    for array in ("patients/label", "patients/offsets", "cells/patient_id"):
        path = tmp_path / array.replace("/", "_") / "s.zarr"
        shutil.copytree(pristine, path)
        values = np.asarray(zarr.open_group(str(path))[array][:])
        if array == "patients/label":
            values[0] = 1 - values[0]
        elif array == "patients/offsets":
            values[2] += 1  # P2's bag would take the next patient's first cell
            _edit(path, "patients/n_cells", np.diff(values))  # and the counts agree
        else:
            values = values.astype(object)
            values[[0, -1]] = values[[-1, 0]]
        _edit(path, array, values)
        msg = _must_fail(Store.open, path)
        assert "does not match the digest" in msg
        res = CliRunner().invoke(app, ["store", "verify", str(path)])
        assert res.exit_code == 1 and "does not match the digest" in res.output


def test_labels_outside_the_code_are_refused(tmp_path: Path, pristine: Path) -> None:
    path = tmp_path / "s.zarr"
    shutil.copytree(pristine, path)
    labels = np.asarray(zarr.open_group(str(path))["patients/label"][:])
    labels[1] = 7
    _edit(path, "patients/label", labels, digest=True)
    with pytest.raises(StoreError, match=r"patients/label holds a value other than -1, 0 or 1"):
        Store.open(path)


def test_a_store_without_a_digest_still_opens(tmp_path: Path, pristine: Path) -> None:
    """Stores written before the digest (format 2) open; their tables are still validated."""
    path = tmp_path / "s.zarr"
    shutil.copytree(pristine, path)
    g = zarr.open_group(str(path), mode="r+")
    attrs = dict(g.attrs)
    attrs.pop("tables_digest")
    g.attrs.put({**attrs, "format_version": 2})
    assert Store.open(path).bags(ENC)
    labels = np.asarray(g["patients/label"][:])
    labels[0] = 9
    g["patients/label"][:] = labels
    with pytest.raises(StoreError, match="patients/label"):
        Store.open(path)


@pytest.mark.parametrize("what", ["done-folder", "zarr-json"])
def test_a_removed_array_or_garbage_metadata_is_one_line(
    tmp_path: Path, pristine: Path, what: str
) -> None:
    path = tmp_path / "s.zarr"
    shutil.copytree(pristine, path)
    if what == "done-folder":
        shutil.rmtree(path / "embeddings" / ENC / "done")
    else:
        (path / "embeddings" / ENC / "status" / "zarr.json").write_text("{not json")
    runner = CliRunner()
    for verb in ("info", "verify"):
        res = runner.invoke(app, ["store", verb, str(path)])
        assert res.exception is None or isinstance(res.exception, (SystemExit, CellbagError))
        assert "damaged" in res.output or "bad" in res.output, res.output
    _must_fail(_load_bags, path)
    res = runner.invoke(app, ["store", "verify", str(path), "--repair"])
    assert isinstance(res.exception, SystemExit) and "repaired" in res.output, res.output
    after = check_encoder(Store.open(path), ENC)  # every block un-marked: featurize redoes it
    assert after.done_blocks == 0 and after.findings
    assert all("unfinished" in f.what for f in after.findings)


def test_verify_suggests_what_works(tmp_path: Path, pristine: Path) -> None:
    path = tmp_path / "s.zarr"
    shutil.copytree(pristine, path)
    damage(path, f"embeddings/{ENC}/data", "truncate")
    res = CliRunner().invoke(app, ["store", "verify", str(path)])
    assert res.exit_code == 1
    assert "--repair" in res.output and "--update" not in res.output


@pytest.mark.parametrize("array", ["status", "done"])
def test_resuming_an_encoder_with_damaged_marks_is_one_line(
    tmp_path: Path, pristine: Path, array: str
) -> None:
    """What featurize (and --update) does first: it never says 'nothing to do' over them."""
    path = tmp_path / "s.zarr"
    shutil.copytree(pristine, path)
    damage(path, f"embeddings/{ENC}/{array}", "delete")
    s = Store.open(path, mode="r+")
    with pytest.raises(StoreError, match=r"verify .*--repair`, then `cellbag featurize"):
        s.init_encoder(ENC, 12, {"name": "fake"})
    repair(s, check_encoder(s, ENC))
    assert Store.open(path, mode="r+").init_encoder(ENC, 12, {"name": "fake"}) is False
