"""Featurize throughput, bag read latency and store size, measured in one run.

For each encoder: the bare model forward on pre-decoded pixels (cells/s) against the
full pipeline from JPEG files to the store (cells/s), and their ratio; then the p50/p95
latency of ``store.bag()`` and the store's bytes against raw float32.

    python benchmarks/featurize.py                      # CPU, demo cohort
    python benchmarks/featurize.py --device cuda --patients 100 --cells-per-patient 80

Targets on 2 CPU cores: pipeline/bare >= 0.95, bag read p50 <= 2 ms, bytes <= 0.5 x fp32.
On an H100 (``--device cuda``, ViT-S/16 bf16): >= 6,000 cells/s from JPEG files.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENCODERS = {
    "tf_efficientnet_lite0": "package:efficientnet-lite0",
    "vit_small_patch16_224": "none",
}


def bare_forward(enc, pixels: np.ndarray, batch_size: int) -> float:
    """Cells/s of the model alone on pre-decoded uint8 pixels (same batches as the pipeline)."""
    import torch

    x = torch.from_numpy(pixels)
    enc.forward_pixels(x[:batch_size])  # warm-up
    if enc.device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, len(x), batch_size):
        enc.forward_pixels(x[i : i + batch_size])
    if enc.device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(x) / (time.perf_counter() - t)


def bag_latency(store, eid: str, n: int = 300, seed: int = 0) -> tuple[float, float]:
    """p50 and p95 (ms) of ``store.bag`` for random patients, on a freshly opened store."""
    from cellbag.store import Store

    s = Store.open(store.path)
    pids = list(s.patients()["patient_id"])
    s.bag(pids[0], eid)  # opens arrays, caches offsets/status
    rng = np.random.default_rng(seed)
    times = []
    for pid in rng.choice(pids, size=n):
        t = time.perf_counter()
        s.bag(pid, eid)
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 95) * 1e3)


def synthetic_bag_latency(real: np.ndarray, work: Path, patients: int, cells: int) -> tuple:
    """Bag p50/p95 on a challenge-size store (rows sampled from real embeddings)."""
    import pandas as pd

    from cellbag.data import Cohort
    from cellbag.store import Store

    pids = [f"P{i}" for i in range(patients)]
    pts = pd.DataFrame(
        {
            "patient_id": pids,
            "split": "train",
            "label": pd.array([i % 2 for i in range(patients)], dtype="Int64"),
            "gender": "M",
            "dob": pd.Timestamp("1950-01-01"),
            "lymph_count": 5.0,
        }
    )
    cell_rows = [
        {"cell_id": f"{p}/{j}.jpg", "patient_id": p, "path": f"/none/{p}/{j}.jpg"}
        for p in pids
        for j in range(cells)
    ]
    cohort = Cohort(work, "synthetic", pts, pd.DataFrame(cell_rows))
    s = Store.create(work / "synthetic.zarr", cohort)
    rng = np.random.default_rng(0)
    ok = real[np.isfinite(real).all(1)]
    s.add_embeddings("synthetic", ok[rng.integers(0, len(ok), cohort.n_cells)])
    return bag_latency(s, "synthetic")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--cells-per-patient", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=None, help="default 32 (CPU), 256 (GPU)")
    ap.add_argument("--workers", type=int, default=None, help="decode threads")
    ap.add_argument("--encoders", nargs="*", default=list(ENCODERS))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the cohort/stores here")
    args = ap.parse_args()

    import torch

    from cellbag.data import read_cohort
    from cellbag.data.demo import make_demo_cohort
    from cellbag.featurize import create_encoder, run_featurize

    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.keep or Path(tempfile.mkdtemp(prefix="cellbag-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "demo"
    if not (root / "trainset").exists():
        make_demo_cohort(root, patients=args.patients, cells_per_patient=args.cells_per_patient)
    cohort = read_cohort(root)
    gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    batch = args.batch_size or (256 if gpu else 32)
    print(
        f"cohort: {cohort.n_patients} patients, {cohort.n_cells} cells (224x224 JPEG); "
        f"device {args.device}; torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}; "
        f"batch {batch}"
    )
    results = []
    for name in args.encoders:
        enc = create_encoder(name, weights=ENCODERS.get(name, "none"), device=args.device)
        pixels = np.stack([enc.prepare(_open(p)) for p in cohort.cells["path"]])
        # bare forward before and after the pipeline: a shared machine's load drifts
        bare_before = bare_forward(enc, pixels, batch)
        store_path = work / f"{name}.zarr"
        shutil.rmtree(store_path, ignore_errors=True)
        t = time.perf_counter()
        rep = run_featurize(cohort, store_path, enc, batch_size=batch, workers=args.workers)
        wall = time.perf_counter() - t
        pipe = cohort.n_cells / wall
        bare_after = bare_forward(enc, pixels, batch)
        bare = 2 / (1 / bare_before + 1 / bare_after)  # cells/s of the mean time
        store = rep.store
        p50, p95 = bag_latency(store, enc.id)
        nbytes = store.size_bytes(enc.id)
        raw = cohort.n_cells * enc.dim * 4
        real = np.asarray(store.embeddings(enc.id)[:], dtype=np.float32)
        sp50, sp95 = synthetic_bag_latency(real, work / f"syn-{name}", 205, 80)
        shutil.rmtree(work / f"syn-{name}", ignore_errors=True)
        r = {
            "encoder": enc.id,
            "device": enc.device,
            "precision": enc.precision,
            "dim": enc.dim,
            "cells": cohort.n_cells,
            "bare_cells_per_s": round(bare, 1),
            "bare_before_after": [round(bare_before, 1), round(bare_after, 1)],
            "pipeline_cells_per_s": round(pipe, 1),
            "pipeline_over_bare": round(pipe / bare, 3),
            "bag_p50_ms": round(p50, 3),
            "bag_p95_ms": round(p95, 3),
            "bag80_p50_ms": round(sp50, 3),
            "bag80_p95_ms": round(sp95, 3),
            "store_bytes": nbytes,
            "bytes_over_fp32": round(nbytes / raw, 3),
        }
        results.append(r)
        print(
            f"\n{enc.id} ({enc.device}, {enc.precision}, dim {enc.dim})\n"
            f"  bare forward     {bare:10.1f} cells/s   (before {bare_before:.1f}, "
            f"after {bare_after:.1f})\n"
            f"  full pipeline    {pipe:10.1f} cells/s   (files -> store, {wall:.1f} s)\n"
            f"  pipeline / bare  {pipe / bare:10.3f}        target >= 0.95\n"
            f"  bag read         p50 {p50:.2f} ms, p95 {p95:.2f} ms "
            f"(bags of ~{cohort.n_cells // cohort.n_patients})   target p50 <= 2 ms\n"
            f"  bag read, 80/bag p50 {sp50:.2f} ms, p95 {sp95:.2f} ms (205 patients x 80)\n"
            f"  store bytes      {nbytes:,} = {nbytes / raw:.3f} x raw fp32   target <= 0.5"
        )
    print("\n" + json.dumps(results))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


def _open(path: str):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.copy()


if __name__ == "__main__":
    main()
