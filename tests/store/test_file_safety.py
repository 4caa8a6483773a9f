"""Nothing the user owns is deleted (issue 32, 1.3): ``--force`` (``store import``,
``featurize``) and ``featurize --update`` remove or move only what cellbag wrote; a store
folder holding anything else is refused, naming the first foreign entry, before anything
is deleted, and the foreign entries stay byte-identical."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cellbag.data import Cohort, read_cohort
from cellbag.data.demo import make_demo_cohort
from cellbag.store import Store, StoreError
from cellbag.store.importer import from_arrays


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry below ``folder``: file bytes (None for a folder)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def add_user_files(folder: Path) -> dict[str, bytes | None]:
    (folder / "notes.txt").write_bytes(b"my notes\x00\xff")
    (folder / "my_analysis").mkdir()
    (folder / "my_analysis" / "fig.png").write_bytes(b"\x89PNG user figure")
    return {k: v for k, v in snapshot(folder).items() if k.startswith(("notes", "my_"))}


def still_there(folder: Path, mine: dict[str, bytes | None]) -> bool:
    now = snapshot(folder)
    return all(now.get(k, b"<gone>") == v for k, v in mine.items())


def _bags(n: int = 4) -> list[np.ndarray]:
    return [np.full((2, 3), i, np.float32) for i in range(n)]


def test_import_force_keeps_user_files_and_refuses(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    from_arrays(path, _bags(), [0, 1, 0, 1])
    mine = add_user_files(path)
    with pytest.raises(StoreError, match=r"holds 'my_analysis', which cellbag did not write"):
        from_arrays(path, _bags(6), [0, 1] * 3, force=True)
    assert still_there(path, mine)
    assert Store.open(path).n_cells == 8  # the old store is whole too


def test_import_force_replaces_a_store_and_only_it(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    from_arrays(path, _bags(), [0, 1, 0, 1])
    beside = tmp_path / "beside.txt"
    beside.write_bytes(b"next to the store")
    from_arrays(path, _bags(6), [0, 1] * 3, force=True)
    assert Store.open(path).n_cells == 12 and beside.read_bytes() == b"next to the store"


def _copy_cohort(src: Cohort, dst: Path) -> Path:
    shutil.copytree(src.root, dst)
    return dst


def test_featurize_force_checks_everything_before_deleting(
    tmp_path: Path, store_cohort: Cohort
) -> None:
    from cellbag.featurize.pipeline import open_or_create

    path = tmp_path / "s.zarr"
    Store.create(path, store_cohort)
    mine = add_user_files(path)
    other = make_demo_cohort(tmp_path / "other", patients=2, cells_per_patient=2, seed=9)
    with pytest.raises(StoreError, match=r"holds 'my_analysis'"):
        open_or_create(other, path, force=True)
    assert still_there(path, mine) and Store.open(path).n_cells == store_cohort.n_cells
    # a store the new cohort would have to surround: refused before the old one goes
    inner = tmp_path / "c2"
    make_demo_cohort(inner, patients=2, cells_per_patient=2, seed=9)
    nested = inner / "trainset" / "s.zarr"
    Store.create(nested, store_cohort)
    with pytest.raises(StoreError, match="inside the cohort"):
        open_or_create(inner, nested, force=True)
    assert Store.open(nested).n_cells == store_cohort.n_cells


def test_featurize_update_refuses_to_move_a_user_file(tmp_path: Path, store_cohort: Cohort) -> None:
    from cellbag.featurize.pipeline import open_or_create

    root = _copy_cohort(store_cohort, tmp_path / "cohort")
    path = tmp_path / "s.zarr"
    Store.create(path, read_cohort(root))
    mine = add_user_files(path)
    first = Path(read_cohort(root).cells["path"].iloc[0])
    shutil.copy(first, first.with_name("zz_added.jpg"))  # an added image: the store is rebuilt
    with pytest.raises(StoreError, match=r"holds 'my_analysis'.*move them out"):
        open_or_create(root, path, update=True)
    assert still_there(path, mine)
    assert not Path(str(path) + ".cellbag-old").exists()


# ------------------------------------------------------------------ every verb with --out


def _user_folder(folder: Path) -> dict[str, bytes | None]:
    folder.mkdir(parents=True, exist_ok=True)
    return add_user_files(folder)


def _tiny_store(path: Path) -> Store:
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(4, 3)).astype(np.float32) + i % 2 for i in range(8)]
    return from_arrays(path, bags, [i % 2 for i in range(8)])


def test_export_h5_and_cv_leave_a_foreign_file_byte_identical(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cellbag.cli import app
    from cellbag.store import export_h5

    s = _tiny_store(tmp_path / "s.zarr")
    for layout in ("cellbag", "clam"):
        out = tmp_path / f"h5-{layout}"
        mine = _user_folder(out)
        (out / "labels.csv").write_bytes(b"my own labels")
        mine["labels.csv"] = b"my own labels"
        with pytest.raises(StoreError, match=r"not a cellbag export \(it holds 'labels.csv'\)"):
            export_h5(s, None, out, layout=layout)
        assert still_there(out, mine) and len(snapshot(out)) == len(mine)
        again = tmp_path / f"again-{layout}"
        export_h5(s, None, again, layout=layout)
        export_h5(s, None, again, layout=layout)  # over its own earlier export: allowed
    out = tmp_path / "run"
    mine = _user_folder(out)
    res = CliRunner().invoke(
        app,
        [
            "cv", s.path, "--head", "meanpool", "--folds", "2", "--repeats", "1",
            "--inner-folds", "0", "--no-clinical", "-q", "--jobs", "1", "--out", str(out),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert still_there(out, mine)


def test_cv_recomputing_a_head_deletes_only_its_fold_files(tmp_path: Path) -> None:
    import json

    from cellbag.evaluate.fold_cache import FoldCache

    head = tmp_path / "run" / "meanpool"
    (head / "folds").mkdir(parents=True)
    (head / "config.json").write_text(json.dumps({"key": {"seed": 0}, "state": "done"}))
    (head / "folds" / "r0_f0.json").write_text("{}")
    (head / "folds" / "notes.txt").write_bytes(b"mine")
    note = FoldCache(head, {"seed": 1}).open()  # other settings: its folds are recomputed
    assert note is not None and "recomputing" in note
    assert not (head / "folds" / "r0_f0.json").exists()
    assert (head / "folds" / "notes.txt").read_bytes() == b"mine"
