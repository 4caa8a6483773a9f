"""Figures on patients whose images pretrained the encoder (self-supervision) are marked
transductive: by `cellbag cv` and on the report's first screen."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from htmlparse import read_page

from cellbag.aggregate.synthetic import witness_store
from cellbag.cli import main
from cellbag.evaluate import run_cv
from cellbag.report import write_report
from cellbag.store import Store


def test_cv_marks_figures_transductive_when_the_encoder_saw_the_patients_images(
    tmp_path, monkeypatch, capsys
):
    """Self-supervision reads no label: cv scores the patients whose images pretrained the
    encoder, and says so (a warning line, each head's config.json, the report's first
    screen); an encoder that saw only other patients' images is not marked."""
    path = tmp_path / "store.zarr"
    store, eid, wc = witness_store(str(path), n_train=24, n_test=4, cells=(5, 8), dim=8)
    st = Store.open(str(path), mode="r+")
    pats = st.patients()
    x = np.concatenate([st.bag(p, eid) for p in pats["patient_id"]])
    seen = [f"P{i}" for i in range(6)]
    test_ids = pats.loc[pats["split"] == "test", "patient_id"].astype(str).tolist()
    st.add_embeddings("ssl", x, {"name": "synthetic", "dim": 8, "image_patients": seen})
    st.add_embeddings("ssl-test", x, {"name": "synthetic", "dim": 8, "image_patients": test_ids})
    # `store info` says whose cells trained the encoder
    monkeypatch.setattr(sys, "argv", ["cellbag", "store", "info", str(path)])
    with pytest.raises(SystemExit) as e:
        main()
    said = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and "trained on the images of 6 patient(s), the labels of 0" in said
    assert "cannot compare" in said  # a synthetic store has no cohort to compare with
    out = tmp_path / "r"
    argv = ["cellbag", "cv", str(path), "-e", "ssl", "--head", "meanpool", "--no-clinical"]
    argv += ["--folds", "3", "--repeats", "1", "--inner-folds", "2", "--out", str(out), "-q"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0
    said = " ".join(capsys.readouterr().out.split())
    assert (
        "warning: transductive: the encoder was pretrained on the images of 6 of these 24" in said
    )
    cfg = json.loads((out / "meanpool" / "config.json").read_text())
    assert cfg["transductive"]["image_patients"] == 6 and cfg["transductive"]["of"] == 24
    page = read_page(write_report(out, tmp_path / "rep", top_k=1))
    assert "transductive" in {a["data-warning"] for tag, a in page.elements if "data-warning" in a}
    # pretrained on the unlabelled test patients only: the figures are not transductive
    run_cv(str(path), "ssl-test", "meanpool", tmp_path / "t", folds=3, repeats=1, quiet=True,
           clinical=False, inner_folds=2)  # fmt: skip
    assert "transductive" not in json.loads(
        (tmp_path / "t" / "meanpool" / "config.json").read_text()
    )
    page = read_page(write_report(tmp_path / "t", tmp_path / "rep2", top_k=1))
    assert "transductive" not in {
        a["data-warning"] for tag, a in page.elements if "data-warning" in a
    }
    # the leaderboard across both runs says which one is transductive
    from cellbag.report.leaderboard import collect, write_leaderboard

    table = collect([tmp_path / "r", tmp_path / "t"]).set_index("run")
    assert table.loc[str(out), "transductive"] == "6 of 24"
    assert table.loc[str(tmp_path / "t"), "transductive"] == ""
    html = write_leaderboard(table.reset_index(), tmp_path / "lb.html").read_text()
    assert html.count('class="transductive"') == 1 and "transductive (6 of 24)" in html
