"""Shared, session-scoped fixtures: a tiny demo cohort, its store with a teacher encoder,
a teacher cv run folder written in the documented format, and one trained student."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

TEACHER_SIZE = 64
STUDENT_SIZE = 64

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    from cellbag.data.demo import make_demo_cohort

    return make_demo_cohort(
        tmp_path_factory.mktemp("distill") / "demo", patients=12, cells_per_patient=6, seed=0
    )


@pytest.fixture(scope="session")
def cohort(demo):
    from cellbag.data import read_cohort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_cohort(demo)


@pytest.fixture(scope="session")
def featurized(demo, cohort, tmp_path_factory):
    """(store, teacher encoder id): the teacher encoder is a random-weights EfficientNet."""
    from cellbag.featurize import run_featurize
    from cellbag.store import Store

    path = tmp_path_factory.mktemp("distill") / "store.zarr"
    rep = run_featurize(
        cohort,
        path,
        "tf_efficientnet_lite0",
        weights="none",
        image_size=TEACHER_SIZE,
        device="cpu",
        workers=1,
    )
    return Store.open(path), rep.encoder_id


def write_teacher_run(
    run: Path,
    store,
    encoder_id: str,
    head: str = "abmil",
    repeats: int = 2,
    attention: bool = True,
    seed: int = 0,
    metric: float = 0.8,
) -> Path:
    """A `cellbag cv` head folder (issue 4 layout) with plausible OOF values. Attention rows
    are written shuffled; each cell's weight is a known function of its position."""
    rng = np.random.default_rng(seed)
    folder = run / head
    folder.mkdir(parents=True, exist_ok=True)
    pats = store.patients()
    train = pats[pats["split"] == "train"]
    oof, att = [], []
    for r in range(repeats):
        for k, row in enumerate(train.itertuples()):
            y = int(row.label)
            p = float(np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.1), 0.02, 0.98))
            oof.append(
                {
                    "patient_id": row.patient_id,
                    "repeat": r,
                    "fold": k % 3,
                    "probability": p,
                    "label": y,
                }
            )
            if attention:
                cells = store.bag_cells(row.patient_id)
                w = rng.random(len(cells)) + 0.05
                w /= w.sum()
                for c, wi in zip(cells.itertuples(), w, strict=True):
                    att.append(
                        {
                            "patient_id": row.patient_id,
                            "cell_id": c.cell_id,
                            "path": c.path,
                            "repeat": r,
                            "fold": k % 3,
                            "weight": wi,
                        }
                    )
    pd.DataFrame(oof).to_csv(folder / "oof_predictions.csv", index=False)
    if attention:
        df = pd.DataFrame(att)
        df = df.iloc[rng.permutation(len(df))]
        df.to_csv(folder / "attention.csv", index=False)
    (folder / "config.json").write_text(json.dumps({"head": head, "encoder_id": encoder_id}))
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "metrics": {
                    "roc_auc": {"value": metric, "ci95_low": 0.6, "ci95_high": 0.9},
                    "balanced_accuracy": {"value": metric, "ci95_low": 0.6, "ci95_high": 0.9},
                }
            }
        )
    )
    return folder


@pytest.fixture(scope="session")
def teacher_run(featurized, tmp_path_factory) -> Path:
    store, eid = featurized
    run = tmp_path_factory.mktemp("distill") / "run"
    write_teacher_run(run, store, eid, "abmil", metric=0.8)
    write_teacher_run(run, store, eid, "meanpool", attention=False, metric=0.7, seed=1)
    return run


@pytest.fixture(scope="session")
def small_config():
    from cellbag.distill import DistillConfig

    return DistillConfig(
        image_size=STUDENT_SIZE,
        weights="none",
        epochs=2,
        cells_per_bag=4,
        bags_per_step=3,
        encoder_batch=8,
        device="cpu",
        seed=0,
    )


@pytest.fixture(scope="session")
def trained(featurized, cohort, teacher_run, small_config, tmp_path_factory):
    """A student distilled for 2 epochs (bags capped at 4 cells while training)."""
    from cellbag.distill import distill, read_teacher
    from cellbag.distill.train import training_patients

    store, _ = featurized
    pids, _ = training_patients(cohort.patients)
    teacher = read_teacher(teacher_run, store, pids)
    out = tmp_path_factory.mktemp("distill") / "model"
    return distill(store, cohort, teacher, small_config, out=out)
