"""The grid of fits in worker processes: the same numbers for any number of workers, resume
across worker counts, and the settings written beside the run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cellbag.aggregate.synthetic import witness_store
from cellbag.evaluate import run_cv

HEADS = ("meanpool", "abmil", "lgbm")
SMALL = {"abmil": {"epochs": 4, "inner_folds": 2}, "lgbm": {"n_estimators": 20}}


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("par") / "store.zarr"
    witness_store(str(path), n_train=24, n_test=0, cells=(8, 12), dim=8, seed=3)
    return str(path)


def _run(store: str, out: Path, **kw) -> None:
    args = dict(
        heads=",".join(HEADS),
        folds=3,
        repeats=1,
        seed=1,
        head_params=SMALL,
        inner_folds=2,
        quiet=True,
    )
    run_cv(store, out=out, **{**args, **kw})


def figures(out: Path) -> dict:
    """Everything a run computes, without its timings."""
    got = {}
    for head in (*HEADS, "clinical"):
        if not (out / head).is_dir():
            continue
        m = json.loads((out / head / "metrics.json").read_text())
        m.pop("seconds", None)
        got[head] = (m, (out / head / "oof_predictions.csv").read_bytes())
    table = pd.read_csv(out / "comparison.csv").drop(columns="seconds")
    got["comparison"] = table.astype(str).to_dict("list")  # NaN reads as "nan" on both sides
    return got


@pytest.fixture(scope="module")
def one_job(tiny_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jobs1") / "run"
    _run(tiny_store, out, jobs=1)
    return out


@pytest.mark.parametrize("jobs", [2, 3])
def test_any_number_of_workers_gives_the_same_figures(tiny_store, one_job, tmp_path, jobs):
    _run(tiny_store, tmp_path / "run", jobs=jobs)
    assert figures(tmp_path / "run") == figures(one_job)


def test_resume_with_another_number_of_workers(tiny_store, one_job, tmp_path):
    out = tmp_path / "run"
    _run(tiny_store, out, jobs=2)
    for f in ("r0_f1.json", "r0_f2.json"):
        (out / "abmil" / "folds" / f).unlink()
    kept = (out / "abmil" / "folds" / "r0_f0.json").stat().st_mtime_ns
    _run(tiny_store, out, jobs=1)
    assert (out / "abmil" / "folds" / "r0_f0.json").stat().st_mtime_ns == kept
    assert figures(out) == figures(one_job)


def test_run_folder_holds_its_config(one_job, tiny_store):
    from cellbag.evaluate.config import CVConfig, read_config

    cfg = read_config(one_job / "config.yaml", CVConfig)
    assert cfg.heads == list(HEADS) and cfg.folds == 3 and cfg.seed == 1 and cfg.jobs == 1
    assert cfg.head_params == SMALL and Path(cfg.store) == Path(tiny_store)


def test_fit_ensemble_is_the_same_for_any_number_of_workers(tiny_store, tmp_path):
    from cellbag.evaluate import fit_model

    kw = dict(clinical=False, ensemble=3, threshold="youden", params={"epochs": 4})
    a = fit_model(tiny_store, "abmil", tmp_path / "a", jobs=1, **kw)
    b = fit_model(tiny_store, "abmil", tmp_path / "b", jobs=2, **kw)
    pa = a.predict_store(tiny_store, split="train")
    pb = b.predict_store(tiny_store, split="train")
    assert pa["probability"].tolist() == pb["probability"].tolist()
    assert a.doc["threshold"] == b.doc["threshold"]


def test_cv_config_replays_a_run_and_flags_override_it(tiny_store, one_job, tmp_path):
    from typer.testing import CliRunner

    from cellbag.cli import app
    from cellbag.evaluate.config import CVConfig, read_config

    first = read_config(one_job / "config.yaml", CVConfig)
    again = tmp_path / "again"
    args = ["cv", "--config", str(one_job / "config.yaml"), "--out", str(again), "-q"]
    r = CliRunner().invoke(app, [*args, "--jobs", "2"])
    assert r.exit_code == 0, r.output
    assert figures(again) == figures(one_job)  # the same run, from its file alone
    replayed = read_config(again / "config.yaml", CVConfig)
    assert replayed == CVConfig(**{**vars(first), "out": str(again), "jobs": 2})

    other = tmp_path / "other"
    r = CliRunner().invoke(
        app,
        ["cv", "--config", str(one_job / "config.yaml"), "-o", str(other), "-q"]
        + ["--head", "meanpool", "--seed", "5", "--set", "meanpool.C=0.5", "--jobs", "1"],
    )
    assert r.exit_code == 0, r.output
    cfg = read_config(other / "config.yaml", CVConfig)
    assert (cfg.heads, cfg.seed, cfg.folds) == (["meanpool"], 5, first.folds)
    assert cfg.head_params["meanpool"] == {"C": 0.5}


def test_a_config_with_an_unknown_setting_is_refused(tmp_path):
    from cellbag.evaluate.config import CVConfig, read_config
    from cellbag.evaluate.errors import EvaluateError

    (tmp_path / "config.yaml").write_text("cellbag: CVConfig\nheads: [meanpool]\nfodls: 4\n")
    with pytest.raises(EvaluateError, match="unknown setting.*fodls"):
        read_config(tmp_path, CVConfig)


#: where ``_fit_or_die`` leaves its mark (the workers inherit the environment)
KILL_MARKER = "CELLBAG_TEST_KILL_MARKER"


def _fit_or_die(data, tasks):
    """``run_folds``, except that the first call on any worker kills its own process, as
    a node lost mid-fit would (the marker file says it happened, once)."""
    import os
    import signal

    from cellbag.evaluate.fitting import run_folds

    try:
        fd = os.open(os.environ[KILL_MARKER], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return run_folds(data, tasks)
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_dask_cluster_gives_the_same_figures_when_a_worker_dies(
    tiny_store, one_job, tmp_path, monkeypatch
):
    """A LocalCluster of 2 processes, one of them killed (SIGKILL) in its first fit: Dask
    reruns the lost fit elsewhere, and every figure equals the one-process run's."""
    pytest.importorskip("distributed")
    import cellbag.evaluate.cv as cv_module

    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_MARKER, str(marker))
    monkeypatch.setattr(cv_module, "run_folds", _fit_or_die)
    _run(tiny_store, tmp_path / "run", cluster="local:2")
    assert marker.exists()  # a worker did die mid-run
    assert figures(tmp_path / "run") == figures(one_job)
