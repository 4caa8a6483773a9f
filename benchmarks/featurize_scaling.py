"""Featurize scaling across processes (torchrun), with store writes timed apart from compute.

On a CPU: the same cohort embedded by 1 process x T threads and by T processes x 1 thread
(``torchrun --standalone --nproc_per_node=T``); cells/s of each and their ratio. On a GPU
(``--device cuda``): cells/s of 1 rank, and of N ranks when the machine has N > 1 GPUs.

For every rank the script prints the seconds spent in the model (compute), waiting for
decoded images, writing blocks to the store (a writer thread, overlapped with compute)
and stalled on the writer; the write rate (cells/s a rank's writer could sustain) shows
whether the store would be the bottleneck before the model is.

    python benchmarks/featurize_scaling.py                              # 2-core CPU
    python benchmarks/featurize_scaling.py --device cuda --image-size 224 --batch-size 256 \\
        --patients 40 --cells-per-patient 50 --replicate 10             # ~20,000 cells

Figures come from the store's ``last_run`` record (the job's wall time from the first
block to the last barrier, without the processes' start-up), plus the command's wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_cohort(out: Path, patients: int, cells: int, replicate: int, seed: int) -> Path:
    """A demo cohort; ``replicate`` > 1 adds hard-linked copies of its patients (fast)."""
    from cellbag.data.demo import make_demo_cohort

    root = make_demo_cohort(out, patients=patients, cells_per_patient=cells, seed=seed)
    for split, name in (("trainset", "trainset_true.csv"), ("testset", "testset_data.csv")):
        table = root / split / name
        if replicate <= 1 or not table.exists():
            continue
        with table.open(newline="") as f:
            rows = list(csv.DictReader(f))
        fields = list(rows[0]) if rows else ["ID"]
        extra = []
        for k in range(1, replicate):
            for row in rows:
                pid = f"P{int(row['ID'][1:]) + 100_000 * k}"
                shutil.copytree(root / split / row["ID"], root / split / pid, copy_function=os.link)
                extra.append(dict(row, ID=pid))
        with table.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows + extra)
    return root


def run_job(
    label: str,
    data: Path,
    store: Path,
    args: argparse.Namespace,
    procs: int,
    threads: int,
    device: str,
) -> dict:
    """Run one featurize job (torchrun when ``procs`` > 1); its ``last_run`` plus wall time."""
    from cellbag.store import Store

    cli = [
        "featurize",
        str(data),
        str(store),
        "--encoder",
        args.encoder,
        "--weights",
        args.weights,
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--device",
        device,
        "--chunk-rows",
        str(args.chunk_rows),
        "--block-rows",
        str(args.block_rows),
        "-q",
    ]
    if procs > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd = [*launch, f"--nproc_per_node={procs}", "-m", "cellbag", *cli]
    else:
        cmd = [sys.executable, "-m", "cellbag", *cli]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"{label}: featurize failed:\n{out.stderr[-3000:]}")
    s = Store.open(store)
    eid = s.encoders()[0]
    run = dict(s.encoder_info(eid)["last_run"], wall_s=wall, label=label, eid=eid)
    run["emb"] = np.asarray(s.embeddings(eid)[:], dtype=np.float32)
    return run


def _synthetic_cohort(n_cells: int, per_patient: int = 256):
    """A Cohort of ``n_cells`` cells without images (for the write-path measurement)."""
    import pandas as pd

    from cellbag.data import Cohort

    n_p = max(1, n_cells // per_patient)
    pids = [f"P{i}" for i in range(n_p)]
    patients = pd.DataFrame(
        {
            "patient_id": pids,
            "split": "train",
            "label": pd.array([i % 2 for i in range(n_p)], dtype="Int64"),
            "gender": "F",
            "dob": pd.Timestamp("1950-01-01"),
            "lymph_count": 10.0,
        }
    )
    owner = np.minimum(np.arange(n_cells) // per_patient, n_p - 1)
    cells = pd.DataFrame(
        {
            "cell_id": [f"P{o}/{i:07d}.jpg" for i, o in enumerate(owner)],
            "patient_id": [f"P{o}" for o in owner],
            "path": [f"/nowhere/P{o}/{i:07d}.jpg" for i, o in enumerate(owner)],
        }
    )
    return Cohort(root=Path("/nowhere"), layout="synthetic", patients=patients, cells=cells)


def _write_share(path: str, eid: str, rank: int, world: int, dim: int, q, go) -> None:
    """One writer process: write blocks ``rank::world`` as the pipeline does; report seconds."""
    from cellbag.store import Store, chunks_for_rank

    s = Store.open(path, mode="r+")
    rng = np.random.default_rng(rank)
    blocks = chunks_for_rank(s.n_blocks, rank, world)
    cells, busy = 0, 0.0
    q.put("ready")
    go.wait()
    t0 = time.time()
    for b in blocks:
        a, z = s.block_range(b)
        emb = rng.standard_normal((z - a, dim), dtype=np.float32)
        sha = [f"{i:016x}" for i in range(a, z)]
        t = time.perf_counter()
        s.write_block(eid, b, emb, np.zeros(z - a, np.uint8), [""] * (z - a), sha)
        busy += time.perf_counter() - t
        cells += z - a
    q.put((rank, cells, busy, t0, time.time()))


def write_path(work: Path, n_cells: int, dim: int, max_writers: int) -> None:
    """Cells/s of the store's block writes: 1 writer vs W concurrent writer processes."""
    import multiprocessing as mp

    from cellbag.store import Store

    cohort = _synthetic_cohort(n_cells)
    print(
        f"store write path: {n_cells} cells x {dim} dims, blocks of 1024 rows (the defaults), "
        "random float32 -> float16 + zstd, as featurize writes them"
    )
    ctx = mp.get_context("spawn")
    for world in sorted({1, max_writers}):
        path = str(work / f"write{world}.zarr")
        s = Store.create(path, cohort)
        eid = "synthetic-0000"
        s.init_encoder(eid, dim, {"name": "synthetic"})
        q, go = ctx.Queue(), ctx.Event()
        procs = [
            ctx.Process(target=_write_share, args=(path, eid, r, world, dim, q, go))
            for r in range(world)
        ]
        for pr in procs:
            pr.start()
        for _ in procs:
            q.get()  # every writer has started and opened the store
        go.set()
        got = sorted(q.get() for _ in procs)
        for pr in procs:
            pr.join()
        wall = max(g[4] for g in got) - min(g[3] for g in got)
        assert Store.open(path).done_blocks(eid).all()
        each = ", ".join(f"rank {r}: {c / b:,.0f} cells/s" for r, c, b, _, _ in got)
        print(
            f"    {world} writer(s) at once: {n_cells / wall:,.0f} cells/s in all "
            f"({wall:.2f} s); each writer while writing: {each}"
        )


def show(run: dict) -> None:
    print(
        f"{run['label']:<28} {run['cells_per_s']:8.1f} cells/s  (job {run['seconds']:.1f} s, "
        f"command {run['wall_s']:.1f} s incl. start-up)"
    )
    for r in run["ranks"]:
        wrote = r["cells"] / r["write_s"] if r["write_s"] > 0 else float("inf")
        print(
            f"    rank {r['rank']} {r['device']:<7} {r['cells']:6d} cells {r['blocks']:4d} blocks | "
            f"compute {r['compute_s']:7.2f} s  decode-wait {r['decode_wait_s']:6.2f} s  "
            f"write {r['write_s']:6.2f} s  write-stall {r['write_wait_s']:5.2f} s  "
            f"barrier-wait {r.get('waited_s', 0.0):5.2f} s | writer {wrote:,.0f} cells/s "
            f"({100 * r['write_s'] / max(r['compute_s'], 1e-9):.1f}% of compute)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--cells-per-patient", type=int, default=20)
    p.add_argument("--replicate", type=int, default=1, help="hard-linked copies of the cohort")
    p.add_argument("--encoder", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="none")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunk-rows", type=int, default=16)
    p.add_argument("--block-rows", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="CPU: T threads vs T processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-cells", type=int, default=16384, help="write-path test (0: skip)")
    p.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: temp)")
    args = p.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="cellbag-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        data = make_cohort(
            work / "demo", args.patients, args.cells_per_patient, args.replicate, args.seed
        )
        n = sum(1 for _ in data.glob("*set/*/*.jpg"))
        print(
            f"cohort: {n} cells ({time.perf_counter() - t:.1f} s to generate); {args.encoder} "
            f"weights {args.weights}, {args.image_size} px, batch {args.batch_size}, "
            f"blocks of {args.block_rows} rows; {os.cpu_count()} cores"
        )
        runs = []
        if args.device == "cpu":
            k = args.threads
            runs.append(
                run_job(f"1 process x {k} threads", data, work / "a.zarr", args, 1, k, "cpu")
            )
            show(runs[-1])
            runs.append(
                run_job(f"{k} processes x 1 thread", data, work / "b.zarr", args, k, 1, "cpu")
            )
            show(runs[-1])
        else:
            import torch

            gpus = torch.cuda.device_count()
            threads = max(1, (os.cpu_count() or 1) // max(gpus, 1))
            runs.append(run_job("1 rank (1 GPU)", data, work / "g1.zarr", args, 1, threads, "cuda"))
            show(runs[-1])
            if gpus > 1:
                label = f"{gpus} ranks ({gpus} GPUs)"
                runs.append(run_job(label, data, work / "gn.zarr", args, gpus, threads, "cuda"))
                show(runs[-1])
        if len(runs) == 2:
            a, b = runs
            diff = float(np.nanmax(np.abs(a["emb"] - b["emb"])))
            print(
                f"ratio ({b['label']}) / ({a['label']}): {b['cells_per_s'] / a['cells_per_s']:.2f}"
                f"  (end to end incl. start-up: {a['wall_s'] / b['wall_s']:.2f}); "
                f"max |difference| of the embeddings: {diff:.2e}"
            )
        if args.write_cells:
            dim = int(runs[0]["emb"].shape[1])
            writers = 2 if args.device == "cpu" else max(2, len(runs[-1]["ranks"]))
            write_path(work, args.write_cells, dim, writers)
        summary = {r["label"]: {k: v for k, v in r.items() if k not in ("emb",)} for r in runs}
        print(json.dumps(summary, default=str))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
