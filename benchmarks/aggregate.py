"""Wall time of cross-validation on cached bags vs one encoder pass over the same cells.

A store of 200 patients x 100 cells x 384-d synthetic embeddings (a real Zarr store,
written with ``store.add_embeddings``); 5-fold cv (one repeat), 50 epochs, of abmil,
transformer and lgbm. Targets on 2 CPU cores: abmil <= 10 s, transformer <= 20 s,
lgbm <= 3 s. Then the time of one ViT-S/16 forward pass over the same 20,000 cells
(random weights; a few batches, extrapolated): what every epoch would cost without
the feature store.

    python benchmarks/aggregate.py [--threads 2] [--patients 200] [--cells 100]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vit-batches", type=int, default=3)
    ap.add_argument("--heads", default="", help="only these heads (comma-separated)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from cellbag.aggregate.synthetic import witness_store
    from cellbag.evaluate import run_cv

    n_cells = args.patients * args.cells
    print(
        f"cohort: {args.patients} patients x {args.cells} cells x {args.dim}-d, "
        f"{args.folds}-fold x 1 repeat, {args.epochs} epochs, torch threads {args.threads}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        store, enc, _ = witness_store(
            str(Path(tmp) / "bench.zarr"),
            args.patients,
            0,
            args.cells,
            args.dim,
            witnesses=5,
            seed=0,
        )
        print(f"store written in {time.perf_counter() - t:.2f} s")
        # warm-up: imports (torch.optim/_dynamo, sklearn, lightgbm) are not the heads' cost
        run_cv(
            store,
            enc,
            "meanpool,abmil,lgbm",
            Path(tmp) / "warm",
            folds=2,
            repeats=1,
            head_params={"abmil": {"epochs": 1}, "lgbm": {"n_estimators": 2}},
            threads=args.threads,
            quiet=True,
        )
        runs = [
            ("abmil", {"epochs": args.epochs}, 10.0, "early stopping (default)"),
            ("abmil", {"epochs": args.epochs, "patience": args.epochs}, 10.0, "all epochs"),
            ("abmil", {"epochs": args.epochs, "context": False}, 10.0, "no bag context"),
            ("transformer", {"epochs": args.epochs}, 20.0, "early stopping (default)"),
            ("transformer", {"epochs": args.epochs, "patience": args.epochs}, 20.0, "all epochs"),
            ("lgbm", {}, 3.0, "num_threads=1 (default)"),
            ("lgbm", {"num_threads": args.threads}, 3.0, f"num_threads={args.threads}"),
            ("meanpool", {}, None, ""),
            ("svm", {}, None, ""),
            ("ensemble", {}, None, "4 members, stacked"),
        ]
        only = {h for h in args.heads.split(",") if h}
        for i, (head, params, target, note) in enumerate(runs):
            if only and head not in only:
                continue
            out = Path(tmp) / f"run{i}"
            t, cpu = time.perf_counter(), time.process_time()
            table = run_cv(
                store,
                enc,
                head,
                out,
                folds=args.folds,
                repeats=1,
                seed=0,
                head_params={head: params},
                threads=args.threads,
                quiet=True,
            )
            wall = time.perf_counter() - t
            cpu = time.process_time() - cpu
            rows.append((head, note, wall, target, table.loc[0, "roc_auc"]))
            print(
                f"  cv {head:<12} {note:<26} {wall:7.2f} s wall, {cpu:6.2f} s cpu"
                + (
                    f"  (target <= {target:.0f} s: {'met' if wall <= target else 'MISSED'})"
                    if target
                    else ""
                )
                + f"  AUC {table.loc[0, 'roc_auc']:.3f}"
            )

    if args.vit_batches < 1:
        return  # --vit-batches 0: heads only
    import timm

    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    bs = 16
    x = torch.randn(bs, 3, 224, 224)
    with torch.inference_mode():
        model(x[:2])  # warm-up
        t = time.perf_counter()
        for _ in range(args.vit_batches):
            model(x)
        per_img = (time.perf_counter() - t) / (args.vit_batches * bs)
    vit_total = per_img * n_cells
    abmil_wall = next(r[2] for r in rows if r[0] == "abmil" and r[1] == "all epochs")
    per_epoch_cached = abmil_wall / (args.folds * args.epochs)
    print(
        f"ViT-S/16 forward, CPU, {args.threads} threads: {per_img * 1000:.1f} ms/cell -> "
        f"{vit_total:.0f} s for the {n_cells} cells (once per epoch without the store)"
    )
    print(
        f"abmil per epoch on cached bags: {per_epoch_cached * 1000:.1f} ms "
        f"-> caching saves ~{vit_total / per_epoch_cached:,.0f}x per epoch"
    )


if __name__ == "__main__":
    main()
