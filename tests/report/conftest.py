"""Shared fixtures: a small demo cohort and a run folder written by hand in the cv layout.

The synthetic run gives attention weights we choose (witness cells of tumoral patients
weigh most), so the tests know which cells the galleries must show on top.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellbag.data.demo import make_demo_cohort

ENCODER_ID = "tf_efficientnet_lite0-synthetic"


def make_synthetic_run(cohort: Path, out: Path, seed: int = 0, repeats: int = 2, folds: int = 3):
    """Write RUN_DIR with heads `abmil` (attention) and `meanpool` (none) from the cohort's
    ground truth. Returns (run_dir, ground_truth DataFrame)."""
    from cellbag.evaluate.run_folder import write_summary

    rng = np.random.default_rng(seed)
    gt = pd.read_csv(cohort / "ground_truth.csv", dtype={"patient_id": str, "cell_id": str})
    gt = gt[gt["split"] == "train"].copy()
    gt["path"] = [str(cohort / f) for f in gt["file"]]
    patients = gt.groupby("patient_id", sort=False)["label"].first()
    pids = list(patients.index)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"folds": folds, "repeats": repeats, "seed": seed, "assignments": []}
    for _ in range(repeats):
        perm = rng.permutation(len(pids))
        splits["assignments"].append({pids[i]: int(j % folds) for j, i in enumerate(perm)})
    (out / "splits.json").write_text(json.dumps(splits))
    # one tumoral patient (the richest in witness cells) and one reactive patient are
    # predicted wrong by every head, so the report has misclassified patients to show
    n_wit = gt.groupby("patient_id")["witness"].sum()
    wrong = {str(n_wit.idxmax()): 0.2, str(patients[patients == 0].index[0]): 0.8}
    comp = {}
    for head, has_att in (("abmil", True), ("meanpool", False)):
        d = out / head
        d.mkdir(exist_ok=True)
        oof, att = [], []
        for r in range(repeats):
            for pid in pids:
                y = int(patients[pid])
                # mostly right, a few confidently wrong (so there are misclassified patients)
                p = float(np.clip(rng.normal(0.75 if y else 0.25, 0.15), 0.01, 0.99))
                p = wrong.get(pid, p)
                fold = splits["assignments"][r][pid]
                oof.append(
                    dict(
                        patient_id=pid,
                        repeat=r,
                        fold=fold,
                        probability=p,
                        label=y,
                        youden_threshold=0.45 + 0.05 * fold,
                        triage_threshold=0.25 + 0.02 * fold,
                    )
                )
                if has_att:
                    cells = gt[gt["patient_id"] == pid]
                    score = rng.normal(0, 0.3, len(cells)) + 3.0 * cells["witness"].to_numpy()
                    w = np.exp(score) / np.exp(score).sum()
                    for (cid, path), wt in zip(
                        cells[["cell_id", "path"]].itertuples(index=False), w, strict=False
                    ):
                        att.append(
                            dict(
                                patient_id=pid,
                                cell_id=cid,
                                path=path,
                                repeat=r,
                                fold=fold,
                                weight=wt,
                            )
                        )
        oof = pd.DataFrame(oof)
        oof.to_csv(d / "oof_predictions.csv", index=False)
        if has_att:
            pd.DataFrame(att).to_csv(d / "attention.csv", index=False)
            Image.new("RGB", (40, 30), "white").save(d / "roc.png")
        config = {
            "head": head,
            "encoder_id": ENCODER_ID,
            "store": str(out.parent / "store.zarr"),
            "clinical": True,
            "folds": folds,
            "repeats": repeats,
            "seed": seed,
            "params": {"epochs": 50, "lr": 0.001} if head == "abmil" else {"C": 1.0},
        }
        (d / "config.json").write_text(json.dumps(config, indent=2))
        info = {"clinical": True, "folds": folds, "repeats": repeats, "seed": seed}
        comp[head] = {"oof": oof, "info": {**info, "triage_sensitivity": 0.95}, "seconds": 1.0}
    # the figures, intervals and paired comparisons as `cellbag cv` writes them
    write_summary(out, comp, seed, resamples=2000)
    return out, gt


@pytest.fixture(scope="session")
def demo_cohort(tmp_path_factory) -> Path:
    return make_demo_cohort(
        tmp_path_factory.mktemp("report_cohort") / "cohort", patients=12, cells_per_patient=10
    )


@pytest.fixture(scope="session")
def synthetic_run(demo_cohort, tmp_path_factory):
    return make_synthetic_run(demo_cohort, tmp_path_factory.mktemp("report_run") / "run")


@pytest.fixture(scope="session")
def synthetic_store(demo_cohort, tmp_path_factory) -> Path:
    """A real store of the demo cohort with synthetic embeddings: witness cells share a
    direction, so their nearest neighbours in other patients are witness cells too."""
    from cellbag.data import read_cohort
    from cellbag.store import Store

    path = tmp_path_factory.mktemp("report_store") / "store.zarr"
    store = Store.create(path, read_cohort(demo_cohort))
    gt = pd.read_csv(demo_cohort / "ground_truth.csv", dtype={"cell_id": str})
    witness = gt.set_index("cell_id").loc[store.cells()["cell_id"], "witness"].to_numpy()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((len(witness), 16)).astype(np.float32)
    x[:, 0] += 8.0 * witness
    store.add_embeddings(ENCODER_ID, x, {"name": "tf_efficientnet_lite0", "weights": "synthetic"})
    return path


WITNESS_ENCODER = "synthetic-witness"


@pytest.fixture(scope="session")
def witness_store(tmp_path_factory):
    """A cohort of real JPEG crops in the challenge layout, with a store whose synthetic
    embeddings (``cellbag.aggregate.synthetic.witness_cohort``) carry the signal only in a
    few witness cells per tumoral bag; the witness crops are smudge / small mature cells.
    Returns (store path, set of witness cell ids). Cheap: crops are rendered once and copied."""
    from cellbag.aggregate.synthetic import witness_cohort
    from cellbag.data import read_cohort
    from cellbag.data.demo import render_cell
    from cellbag.store import Store

    root = tmp_path_factory.mktemp("report_witness")
    rng = np.random.default_rng(1)
    crops = {}
    for t in ("normal", "activated", "small_mature", "smudge"):
        crops[t] = []
        for i in range(3):
            p = root / "crops" / f"{t}{i}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            render_cell(t, rng).save(p, quality=90)
            crops[t].append(p.read_bytes())
    wc = witness_cohort(n_patients=40, cells=12, dim=16, witnesses=3, shift=5.0, seed=0)
    rows, vectors, witnesses = [], {}, set()
    for i, (bag, y, wit) in enumerate(zip(wc.bags, wc.y, wc.witness, strict=True)):
        pid = f"P{i + 1}"
        folder = root / "cohort" / "trainset" / pid
        folder.mkdir(parents=True)
        for j, (vec, w) in enumerate(zip(bag, wit, strict=True)):
            kinds = ("small_mature", "smudge") if w else ("normal", "activated")
            (folder / f"{j:06d}.jpg").write_bytes(crops[kinds[j % 2]][j % 3])
            cid = f"{pid}/{j:06d}.jpg"
            vectors[cid] = vec
            if w:
                witnesses.add(cid)
        rows.append((pid, int(y), "F" if i % 2 else "M", "3/4/1950", 5.0 + i % 9))
    pd.DataFrame(rows, columns=["ID", "LABEL", "GENDER", "DOB", "LYMPH_COUNT"]).to_csv(
        root / "cohort" / "trainset" / "trainset_true.csv", index=False
    )
    store = Store.create(root / "store.zarr", read_cohort(root / "cohort"))
    x = np.stack([vectors[c] for c in store.cells()["cell_id"]])
    store.add_embeddings(WITNESS_ENCODER, x, {"name": "synthetic", "weights": "witness_cohort"})
    return root / "store.zarr", witnesses


@pytest.fixture(scope="session")
def store_report(synthetic_run, synthetic_store, tmp_path_factory) -> Path:
    from cellbag.report import write_report

    run_dir, _ = synthetic_run
    out = tmp_path_factory.mktemp("report_store_out") / "report"
    return write_report(run_dir, out, store=synthetic_store, top_k=3, n_queries=2, n_neighbors=4)


@pytest.fixture(scope="session")
def synthetic_report(synthetic_run, tmp_path_factory) -> Path:
    from cellbag.report import write_report

    run_dir, _ = synthetic_run
    return write_report(run_dir, tmp_path_factory.mktemp("report_out") / "report", top_k=3)
