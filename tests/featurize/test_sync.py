"""Change detection: a changed cohort is refused in one line, or applied with --update for
every encoder of the store; the updated store equals a fresh run on the new cohort."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cellbag.data import read_cohort
from cellbag.featurize import FeaturizeError, create_encoder, run_featurize
from cellbag.store import Store, StoreError


@pytest.fixture(scope="module")
def second_encoder():
    return create_encoder("tf_efficientnet_lite0", weights="none", image_size=32)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _raw(store: Store, eid: str) -> np.ndarray:
    return np.asarray(store.embeddings(eid)[:])


def _set_label(root: Path, pid: str, label: str) -> None:
    csv = root / "trainset" / "trainset_true.csv"
    lines = csv.read_text().splitlines()
    for i, line in enumerate(lines):
        parts = line.split(",")
        if parts[0] == pid:
            parts[1] = label
            lines[i] = ",".join(parts)
    csv.write_text("\n".join(lines) + "\n")


def test_in_place_update_equals_a_fresh_run(
    tmp_path, feat_cohort, tiny_encoder, second_encoder, feat_kw
) -> None:
    root = _copy(feat_cohort.root, tmp_path / "cohort")
    path = tmp_path / "s.zarr"
    run_featurize(root, path, tiny_encoder, **feat_kw)
    run_featurize(root, path, second_encoder, **feat_kw)
    cohort = read_cohort(root)
    victim = cohort.cells.iloc[9]
    Image.new("RGB", (30, 30), "blue").save(victim["path"], format="JPEG")
    pid = cohort.patients["patient_id"].iloc[0]
    old_label = int(cohort.patients["label"].iloc[0])
    _set_label(root, pid, str(1 - old_label))
    with pytest.raises(FeaturizeError, match=r"1 changed, 0 added, 0 removed .*1 patient") as e:
        run_featurize(root, path, tiny_encoder, **feat_kw)
    assert victim["cell_id"] in str(e.value) and pid in str(e.value)
    # cv refuses the store's old label while the CSV says otherwise
    from cellbag.aggregate.bags import load_bags

    with pytest.raises(StoreError, match=rf"label/clinical table .* changed .*{pid}.*--update"):
        load_bags(str(path), tiny_encoder.id)
    r = run_featurize(root, path, tiny_encoder, update=True, **feat_kw)
    assert r.sync is not None and r.sync.changed == [victim["cell_id"]]
    assert r.refreshed == [second_encoder.id]
    assert r.cells_computed == feat_kw["block_rows"]  # only the block holding the change
    s = Store.open(path)
    assert s.is_complete(tiny_encoder.id) and s.is_complete(second_encoder.id)
    assert int(s.patients().set_index("patient_id").loc[pid, "label"]) == 1 - old_label
    load_bags(str(path), tiny_encoder.id)  # in sync again
    fresh = tmp_path / "fresh.zarr"
    run_featurize(root, fresh, tiny_encoder, **feat_kw)
    run_featurize(root, fresh, second_encoder, **feat_kw)
    f = Store.open(fresh)
    for enc in (tiny_encoder, second_encoder):
        np.testing.assert_array_equal(_raw(s, enc.id), _raw(f, enc.id))
    again = run_featurize(root, path, tiny_encoder, **feat_kw)
    assert again.cells_computed == 0 and again.sync.in_sync


def test_added_and_removed_images_rebuild_the_store(
    tmp_path, feat_cohort, tiny_encoder, feat_kw
) -> None:
    root = _copy(feat_cohort.root, tmp_path / "cohort")
    path = tmp_path / "s.zarr"
    run_featurize(root, path, tiny_encoder, **feat_kw)
    cohort = read_cohort(root)
    last = cohort.patients["patient_id"].iloc[-1]
    folder = Path(cohort.cells.set_index("patient_id").loc[last, "path"].iloc[0]).parent
    Image.new("RGB", (30, 30), "red").save(folder / "zzz_new.png")
    gone = cohort.cells.iloc[1]
    os.remove(gone["path"])
    with pytest.raises(FeaturizeError, match=r"0 changed, 1 added, 1 removed"):
        run_featurize(root, path, tiny_encoder, **feat_kw)
    r = run_featurize(root, path, tiny_encoder, update=True, **feat_kw)
    s = Store.open(path)
    assert r.complete and s.is_complete(tiny_encoder.id)
    ids = list(s.cells()["cell_id"])
    assert f"{last}/zzz_new.png" in ids and gone["cell_id"] not in ids
    assert not Path(str(path) + ".cellbag-update").exists()
    assert not Path(str(path) + ".cellbag-old").exists()
    fresh = tmp_path / "fresh.zarr"
    run_featurize(root, fresh, tiny_encoder, **feat_kw)
    f = Store.open(fresh)
    assert list(f.cells()["cell_id"]) == ids
    assert r.cells_computed < s.n_cells  # unchanged blocks were copied, not recomputed
    np.testing.assert_allclose(
        _raw(s, tiny_encoder.id).astype(np.float32),
        _raw(f, tiny_encoder.id).astype(np.float32),
        rtol=2e-3,
        atol=2e-3,
    )
    assert list(s.cells()["status"]) == list(f.cells()["status"])


def test_touched_files_are_not_changes(tmp_path, feat_cohort, tiny_encoder, feat_kw) -> None:
    root = _copy(feat_cohort.root, tmp_path / "cohort")
    path = tmp_path / "s.zarr"
    run_featurize(root, path, tiny_encoder, **feat_kw)
    p = read_cohort(root).cells["path"].iloc[0]
    os.utime(p, ns=(1, 1))  # same bytes, new mtime: hashed once, then recorded
    r = run_featurize(root, path, tiny_encoder, **feat_kw)
    assert r.sync.in_sync and r.cells_computed == 0
    assert int(Store.open(path).file_records()["mtime_ns"].iloc[0]) == 1


def test_per_encoder_status(tmp_path, feat_cohort, tiny_encoder, second_encoder, feat_kw) -> None:
    path = tmp_path / "s.zarr"
    run_featurize(feat_cohort, path, tiny_encoder, **feat_kw)
    s = Store.open(path)
    st = s.encoder_status(tiny_encoder.id)
    assert set(np.unique(st)) == {0, 1}  # embedded, one broken JPEG
    assert s.cells(encoder_id=tiny_encoder.id)["status"].tolist() == s.cells()["status"].tolist()
    s = Store.open(path, mode="r+")
    s.init_encoder(second_encoder.id, second_encoder.dim, second_encoder.metadata)
    assert (s.encoder_status(second_encoder.id) == 255).all()  # nothing embedded yet
    assert set(s.cells(encoder_id=second_encoder.id)["status"]) == {"pending"}
    assert s.encoder_status(tiny_encoder.id).tolist() == st.tolist()  # untouched


def test_force_replaces_only_a_store_of_another_cohort(
    tmp_path, feat_cohort, tiny_encoder, feat_kw
) -> None:
    from cellbag.data.demo import make_demo_cohort

    path = tmp_path / "s.zarr"
    run_featurize(feat_cohort, path, tiny_encoder, **feat_kw)
    other = make_demo_cohort(tmp_path / "other", patients=2, cells_per_patient=2, seed=9)
    with pytest.raises(FeaturizeError, match="another cohort"):
        run_featurize(other, path, tiny_encoder, **feat_kw)
    r = run_featurize(other, path, tiny_encoder, force=True, **feat_kw)
    assert r.created_store and r.store.n_cells == read_cohort(other).n_cells


def test_exif_orientation_is_applied() -> None:
    from cellbag.featurize.images import PREPROCESSING_VERSION, prepare

    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = __import__("io").BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=100)
    buf.seek(0)
    shown = prepare(Image.open(buf), 40)
    plain = prepare(Image.fromarray(arr).rotate(-90, expand=True), 40)
    assert np.abs(shown.astype(int) - plain.astype(int)).mean() < 8
    assert PREPROCESSING_VERSION >= 2
    from cellbag.featurize.registry import identity

    assert identity("m", "w", 8, [0], [1], "bicubic")["preprocessing"] == PREPROCESSING_VERSION


# ------------------------------------------------------------------ CLI


class _Result:
    def __init__(self, res) -> None:  # noqa: ANN001
        self.exit_code, self.exception = res.exit_code, res.exception
        self.output = " ".join(res.output.split())  # rich wraps long lines


def _cli(*args: str) -> _Result:
    from cellbag.cli import app

    return _Result(CliRunner().invoke(app, list(args), terminal_width=200))


FEAT = ["--weights", "none", "--image-size", "32", "--batch-size", "8", "--device", "cpu", "-q"]


def test_cli_refuses_to_write_into_user_folders(tmp_path, feat_cohort) -> None:
    root = _copy(feat_cohort.root, tmp_path / "cohort")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for target in (root, root / "trainset", tmp_path):
        out = subprocess.run(
            [sys.executable, "-m", "cellbag", "featurize", str(root), str(target), *FEAT],
            capture_output=True,
            text=True,
            env=env,
        )
        assert out.returncode == 2, out.stdout + out.stderr
        assert "Traceback" not in out.stderr + out.stdout
        assert "error:" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_cli_update_info_and_verify(tmp_path, feat_cohort) -> None:
    root = _copy(feat_cohort.root, tmp_path / "cohort")
    store = tmp_path / "s.zarr"
    small = ["--chunk-rows", "4", "--block-rows", "8"]
    res = _cli("featurize", str(root), str(store), *FEAT, *small)
    assert res.exit_code == 0, res.output
    res = _cli("store", "info", str(store))
    assert res.exit_code == 0 and "in sync" in res.output and "complete" in res.output
    res = _cli("store", "verify", str(store))
    assert res.exit_code == 0 and "all checks passed" in res.output, res.output
    victim = read_cohort(root).cells.iloc[2]
    Image.new("RGB", (30, 30), "blue").save(victim["path"], format="JPEG")
    res = _cli("store", "info", str(store))
    assert "out of sync" in res.output and victim["cell_id"] in res.output
    res = _cli("store", "verify", str(store))
    assert res.exit_code == 1 and "out of sync" in res.output
    res = _cli("featurize", str(root), str(store), *FEAT)
    assert res.exit_code != 0 and "--update" in str(res.exception)
    res = _cli("featurize", str(root), str(store), *FEAT, "--update")
    assert res.exit_code == 0 and "updated the store: 1 changed" in res.output, res.output
    s = Store.open(store)
    eid = s.encoders()[0]
    chunk = Path(s.path) / "embeddings" / eid / "data" / "c" / "1" / "0"
    chunk.unlink()
    res = _cli("store", "info", str(store))
    assert "damaged" in res.output and "store verify" in res.output
    res = _cli("store", "verify", str(store))
    assert res.exit_code == 1 and "chunk 1 is missing" in res.output
    pid = s.patients_of_rows([s.chunk_rows])[0]
    assert pid in res.output
    res = _cli("store", "verify", str(store), "--repair")
    assert res.exit_code == 1 and "1 block(s) un-marked" in res.output, res.output
    res = _cli("featurize", str(root), str(store), *FEAT)  # recomputes only that block
    assert res.exit_code == 0 and "embedded 8 cells" in res.output, res.output
    res = _cli("store", "verify", str(store))
    assert res.exit_code == 0 and "all checks passed" in res.output, res.output
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for cmd in (["store", "verify", str(store)], ["store", "info", str(store)]):
        out = subprocess.run(
            [sys.executable, "-m", "cellbag", *cmd], capture_output=True, text=True, env=env
        )
        assert "Traceback" not in out.stdout + out.stderr


def test_cli_bad_inputs_are_one_line(tmp_path, feat_cohort, second_encoder) -> None:
    import json

    env = dict(os.environ, HF_HUB_OFFLINE="1")

    def run(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "cellbag", *args], capture_output=True, text=True, env=env
        )
        assert "Traceback" not in out.stdout + out.stderr, out.stderr
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        return out.stderr

    root = _copy(feat_cohort.root, tmp_path / "cohort")
    store = tmp_path / "s.zarr"
    Store.create(store, read_cohort(root))
    lock = store / "embeddings" / second_encoder.id / "job.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": "abc", "host": os.uname().nodename, "job_id": "x"}))
    whole = ["--crop", "1", "--stain", "none"]  # the lock's encoder (auto would pick the recipe)
    assert "non-numeric pid" in run("featurize", str(root), str(store), *FEAT, *whole)
    csv = root / "trainset" / "trainset_true.csv"
    text = csv.read_text().splitlines()
    text[1] = ",".join([text[1].split(",")[0], "inf", *text[1].split(",")[2:]])
    csv.write_text("\n".join(text) + "\n")
    assert "invalid LABEL 'inf'" in run("inspect", str(root))
    csv.write_bytes(csv.read_bytes() + b"P99,1,M,1/2/1950,\xff\n")
    assert "not UTF-8" in run("featurize", str(root), str(tmp_path / "new.zarr"), *FEAT)
