"""How long `write_report` takes at the challenge's scale, and how big the report is.

A cohort of 163 training patients × 80 cells (JPEG crops copied from a few demo renders),
a real store with synthetic 384-d embeddings, and a cv run folder with two heads (one with
attention), 3 repeats. Prints the time of a first report (thumbnails written), of a second
one into the same folder (thumbnails reused), and with look-alike cells from the store.

    python benchmarks/report.py [--patients 163] [--cells 80] [--top-k 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_cohort(root: Path, patients: int, cells: int, seed: int = 0) -> pd.DataFrame:
    """Challenge layout; returns the cells (patient_id, cell_id, path, label)."""
    from cellbag.data.demo import CELL_TYPES, render_cell

    rng = np.random.default_rng(seed)
    crops = []
    for t in CELL_TYPES:
        for _ in range(5):
            p = root / "_crops" / f"{t}{len(crops)}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            render_cell(t, rng).save(p, quality=92)
            crops.append(p.read_bytes())
    rows, clin = [], []
    for i in range(patients):
        pid, y = f"P{i + 1}", int(i % 5 < 3)
        d = root / "trainset" / pid
        d.mkdir(parents=True)
        for j in range(cells):
            f = d / f"{j:06d}.jpg"
            f.write_bytes(crops[int(rng.integers(len(crops)))])
            rows.append((pid, f"{pid}/{f.name}", str(f), y))
        clin.append((pid, y, "M" if i % 2 else "F", "1/1/1950", 10.0 + i % 7))
    pd.DataFrame(clin, columns=["ID", "LABEL", "GENDER", "DOB", "LYMPH_COUNT"]).to_csv(
        root / "trainset" / "trainset_true.csv", index=False
    )
    shutil.rmtree(root / "_crops")
    return pd.DataFrame(rows, columns=["patient_id", "cell_id", "path", "label"])


def make_run(run: Path, cells: pd.DataFrame, encoder_id: str, repeats: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = cells.groupby("patient_id", sort=False)["label"].first()
    for head, attention in (("abmil", True), ("meanpool", False)):
        d = run / head
        d.mkdir(parents=True)
        oof = []
        for r in range(repeats):
            for pid, y in labels.items():
                p = float(np.clip(rng.normal(0.7 if y else 0.3, 0.25), 0, 1))
                oof.append((pid, r, int(rng.integers(5)), p, int(y)))
        pd.DataFrame(oof, columns=["patient_id", "repeat", "fold", "probability", "label"]).to_csv(
            d / "oof_predictions.csv", index=False
        )
        if attention:
            parts = []
            for r in range(repeats):
                w = rng.gamma(1.0, size=len(cells))
                a = cells[["patient_id", "cell_id", "path"]].assign(repeat=r, fold=0, weight=w)
                a["weight"] /= a.groupby("patient_id")["weight"].transform("sum")
                parts.append(a)
            pd.concat(parts).to_csv(d / "attention.csv", index=False)
        block = {"mean": 0.8, "std": 0.05, "ci95": [0.7, 0.9], "n": 5 * repeats}
        metrics = {k: block for k in ("balanced_accuracy", "roc_auc", "f1", "sensitivity")}
        metrics["specificity"] = block
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "config.json").write_text(json.dumps({"head": head, "encoder_id": encoder_id}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=163)
    ap.add_argument("--cells", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=8)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from cellbag.data import read_cohort
    from cellbag.report import write_report
    from cellbag.store import Store

    with tempfile.TemporaryDirectory(prefix="cellbag-bench-report-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        cells = make_cohort(tmp / "cohort", args.patients, args.cells)
        store = Store.create(tmp / "store.zarr", read_cohort(tmp / "cohort"))
        x = np.random.default_rng(0).standard_normal((store.n_cells, 384)).astype(np.float32)
        store.add_embeddings("synthetic-384", x, {"name": "synthetic"})
        make_run(tmp / "run", cells, "synthetic-384", args.repeats)
        print(
            f"setup: {args.patients} patients x {args.cells} cells, {args.repeats} repeats, "
            f"2 heads ({time.perf_counter() - t:.1f} s)"
        )

        def timed(label: str, **kw) -> Path:
            t = time.perf_counter()
            index = write_report(tmp / "run", top_k=args.top_k, **kw)
            print(f"{label}: {time.perf_counter() - t:.2f} s")
            return index

        a = timed("report, first (thumbnails written)", out=tmp / "r1")
        timed("report, again into the same folder (thumbnails reused)", out=tmp / "r1")
        b = timed(
            "report with --store (look-alikes of misclassified patients)",
            out=tmp / "r2",
            store=store,
        )
        for label, index in (("without store", a), ("with store", b)):
            files = [p for p in index.parent.rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            print(
                f"report {label}: {len(files)} files, {size / 2**20:.1f} MiB, "
                f"index.html {index.stat().st_size / 2**20:.2f} MiB"
            )


if __name__ == "__main__":
    main()
