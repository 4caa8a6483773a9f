"""Wall time of cross-validation on cached bags vs one encoder pass over the same cells.

A store of 200 patients x 100 cells x 384-d synthetic embeddings (a real Zarr store,
written with ``store.add_embeddings``); 5-fold cv (one repeat), 50 epochs, of abmil,
transformer and lgbm. Targets on 2 CPU cores: abmil <= 10 s, transformer <= 20 s,
lgbm <= 3 s. Then the time of one ViT-S/16 forward pass over the same 20,000 cells
(random weights; a few batches, extrapolated): what every epoch would cost without
the feature store.

    python benchmarks/aggregate.py [--threads 2] [--patients 200] [--cells 100]

``--preset lymphocytosis``: a synthetic cohort of the real one's shape (163 patients x 82
cells x 1,280-d, the lite0 width), every head (meanpool, maxpool, abmil, transformer, lgbm,
svm, ensemble + the clinical baseline) in one cv of 5 folds x 3 repeats with nested
thresholds, as ``cellbag cv`` runs it. It prints each head's fit seconds (the sum over its
folds, ``--jobs 1``) and AUC, the levers tried on the neural heads (``pca_dim``: inputs
projected on the fold's first principal axes), and the wall time of the whole cv with
``--jobs 1`` and ``--jobs 2`` (their ratio, in this one run). ``--before REV`` runs the
same cv on the code of a git revision too (``git archive``, in a subprocess) and prints
before/after per head.

``--store STORE [--encoder ID]``: the same cvs on a real store's training split instead of
the synthetic cohort (the real development patients), images only and fused with the
clinical values, so a speed lever's cost in accuracy is read where it matters; the store
is only read. ``--heads`` restricts the heads, ``--jobs`` runs the cvs on more cores; with
``--jobs 1`` each head runs in a cv of its own and its seconds are that cv's CPU time in
the process (before/after ratios that hold on a machine loaded by other jobs).

    python benchmarks/aggregate.py --preset lymphocytosis [--repeats 3] [--before REV]
    python benchmarks/aggregate.py --preset lymphocytosis --store runs/lympho/store.zarr \
        --before main~3 --heads abmil,maxpool,transformer
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

HEADS = "meanpool,maxpool,abmil,transformer,lgbm,svm,ensemble"
#: head parameters tried against each neural head's defaults (the speed levers)
LEVERS = {
    "abmil": [{"pca_dim": None}, {"pca_dim": 256}, {"pca_dim": 128}],
    "maxpool": [{"pca_dim": 256}, {"pca_dim": 128}],
    "transformer": [{"pca_dim": 256}, {"pca_dim": 128}],
}


#: fitted once in each process before anything is timed: the imports a first fit pulls in
#: (torch, torch.optim and _dynamo, LightGBM, scikit-learn) would otherwise count in the
#: CPU seconds of whichever head runs first, and only in the process that had not paid them
WARM_UP = """
import numpy as _np
from cellbag.aggregate.registry import make_head as _make_head
_r = _np.random.default_rng(0)
_b = [_r.normal(size=(5, 8)).astype("float32") for _ in range(12)]
for _h in ("abmil", "maxpool", "transformer", "lgbm", "svm", "meanpool"):
    try:
        _make_head(_h, clinical=False, epochs=1).fit(_b, [0, 1] * 6)
    except Exception:  # a head without epochs (its own error class in each revision)
        _make_head(_h, clinical=False).fit(_b, [0, 1] * 6)
"""

#: the cv of another revision's code, in a subprocess (prints [wall, {head: [s, auc]}] per
#: clinical setting)
BEFORE_CODE = """
import json, sys, time
sys.path.insert(0, {src!r})
for name in [m for m in sys.modules if m == "cellbag" or m.startswith("cellbag.")]:
    del sys.modules[name]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
import cellbag
assert cellbag.__file__.startswith({src!r}), cellbag.__file__
try:
    from cellbag.evaluate import run_cv
except ImportError:
    from cellbag.aggregate import run_cv
from cellbag.aggregate.synthetic import witness_store
{warm_up}
store, heads, out, folds, repeats, jobs, encoder = sys.argv[1:8]
if {synthetic!r}:
    # the same cohort, written by that revision's store code (its format may be older)
    witness_store(store, 163, 0, 82, 1280, witnesses=5, seed=0)
kw = {{"jobs": int(jobs)}} if "jobs" in run_cv.__code__.co_varnames else {{}}
res = []
for clinical in {clinicals!r}:
    t = time.perf_counter()
    heads_ = {{}}
    for group in ([heads] if not {per_head!r} else heads.split(",")):
        cpu = time.process_time()
        tb = run_cv(store, encoder or None, group, out + str(clinical) + group,
                    clinical=clinical, folds=int(folds), repeats=int(repeats), seed=0,
                    threads=1, quiet=True, **kw)
        cpu = time.process_time() - cpu
        for _, r in tb.iterrows():
            if r["head"] not in heads_:
                s = cpu if {per_head!r} and r["head"] == group else float(r["seconds"])
                heads_[r["head"]] = [s, float(r["roc_auc"])]
    res.append([time.perf_counter() - t, heads_])
print(json.dumps(res))
"""


def one_cv(
    store: str, out: str, heads: str, folds: int, repeats: int, jobs: int, params: dict,
    encoder: str | None = None, clinical: bool = True, per_head: bool = False,
) -> tuple[float, dict]:  # fmt: skip
    """Wall seconds of one cv, and per head (fit seconds summed over folds, ROC AUC).
    ``per_head``: one cv per head, each head's seconds the CPU time of its cv in this
    process (``--jobs 1``; on a loaded machine CPU time moves less than wall time)."""
    from cellbag.evaluate import run_cv

    t = time.perf_counter()
    got: dict = {}
    for group in heads.split(",") if per_head else [heads]:
        cpu = time.process_time()
        table = run_cv(
            store, encoder, group, f"{out}_{group}", clinical=clinical, folds=folds,
            repeats=repeats, seed=0, head_params=params, threads=1, quiet=True, jobs=jobs,
        )  # fmt: skip
        cpu = time.process_time() - cpu
        for _, r in table.iterrows():
            if r["head"] not in got:
                sec = cpu if per_head and r["head"] == group else float(r["seconds"])
                got[r["head"]] = (sec, float(r["roc_auc"]))
    return time.perf_counter() - t, got


def per_head(args: argparse.Namespace) -> bool:
    """Time each head by its own cv's CPU seconds (a real store, one process)."""
    return bool(args.store) and args.jobs == 1


def run_before(args: argparse.Namespace, tmp: str, store: str, heads: str, clinicals) -> list:
    """The same cvs on the code of ``args.before`` (``git archive`` of its ``src``)."""
    import json
    import subprocess
    import sys

    src = Path(tmp) / "before"
    src.mkdir()
    tar = subprocess.run(
        ["git", "archive", args.before, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=tar, check=True)
    code = BEFORE_CODE.format(
        src=str(src / "src"),
        synthetic=not args.store,
        clinicals=list(clinicals),
        per_head=per_head(args),
        warm_up=WARM_UP,
    )
    res = subprocess.run(
        [sys.executable, "-c", code, store, heads, str(Path(tmp) / "before_run"),
         str(args.folds), str(args.repeats), str(args.jobs), args.encoder or ""],
        capture_output=True, text=True,
    )  # fmt: skip
    if res.returncode:
        raise SystemExit(f"--before {args.before} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def preset(args: argparse.Namespace) -> None:
    from cellbag.aggregate.synthetic import witness_store

    heads = args.heads or HEADS
    what = (
        f"store {args.store} (its training split)"
        if args.store
        else "163 patients x 82 cells x 1,280-d (synthetic)"
    )
    clinicals = (False, True) if args.store else (True,)
    print(
        f"preset lymphocytosis: {what}, {args.folds} folds x {args.repeats} repeats, nested "
        f"thresholds (3 inner folds), {'images only and fused' if args.store else 'fused'}, "
        f"--jobs {args.jobs}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.store:
            store = before_store = args.store
        else:
            store = str(Path(tmp) / "lympho.zarr")
            before_store = str(Path(tmp) / "before.zarr")
            witness_store(store, 163, 0, 82, 1280, witnesses=5, seed=0)
        before = run_before(args, tmp, before_store, heads, clinicals) if args.before else None
        exec(WARM_UP, {})  # as the other revision's process did
        for i, clinical in enumerate(clinicals):
            kind = "fused" if clinical else "images only"
            wall, got = one_cv(
                store, str(Path(tmp) / f"after{i}"), heads, args.folds, args.repeats,
                args.jobs, {}, args.encoder, clinical, per_head(args),
            )  # fmt: skip
            print(f"{kind}:")
            unit = "cpu s" if per_head(args) else "s"
            print(
                f"  {'head':<12} {'before ' + unit:>12} {'AUC':>6}   {'after ' + unit:>11} {'AUC':>6}"
            )
            for h, (sec, auc) in got.items():
                b = before[i][1].get(h) if before else None
                left = f"{b[0]:12.1f} {b[1]:6.3f}" if b else f"{'-':>12} {'-':>6}"
                ratio = f"  {b[0] / sec:5.2f}x" if b and sec > 0 else ""
                print(f"  {h:<12} {left}   {sec:11.1f} {auc:6.3f}{ratio}")
            if before:
                print(
                    f"  whole cv, --jobs {args.jobs}: before {before[i][0]:.1f} s, after {wall:.1f} s"
                )
        if not args.store:
            wall1, heads1 = one_cv(
                store, str(Path(tmp) / "j1"), heads, args.folds, args.repeats, 1, {}
            )
            wall2, heads2 = one_cv(
                store, str(Path(tmp) / "j2"), heads, args.folds, args.repeats, 2, {}
            )
            same = all(heads1[h][1] == heads2[h][1] for h in heads1)
            print(
                f"whole cv wall: --jobs 1 {wall1:.1f} s, --jobs 2 {wall2:.1f} s, ratio "
                f"{wall1 / wall2:.2f}x (same AUCs: {same})"
            )
        if args.levers:
            print("levers (one head per cv):")
            for head, variants in LEVERS.items():
                for i, params in enumerate([{}, *variants]):
                    out = str(Path(tmp) / f"lever_{head}_{i}")
                    _, got = one_cv(
                        store, out, head, args.folds, args.repeats, args.jobs, {head: params},
                        args.encoder,
                    )  # fmt: skip
                    sec, auc = got[head]
                    print(
                        f"  {head:<12} {str(params or 'defaults'):<22} {sec:7.1f} s  AUC {auc:.3f}"
                    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=["lymphocytosis"], default=None)
    ap.add_argument("--repeats", type=int, default=3, help="--preset: repeats of the k-fold")
    ap.add_argument("--before", default=None, help="--preset: a git revision to compare with")
    ap.add_argument("--levers", action="store_true", help="--preset: time the levers too")
    ap.add_argument("--store", default=None, help="--preset: a real store instead of synthetic")
    ap.add_argument("--encoder", default=None, help="--store: its encoder id")
    ap.add_argument("--jobs", type=int, default=1, help="--preset: cv worker processes")
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vit-batches", type=int, default=3)
    ap.add_argument("--heads", default="", help="only these heads (comma-separated)")
    args = ap.parse_args()
    if args.preset:
        preset(args)
        return

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
            jobs=1,
        )
        every_epoch = {"patience": args.epochs, "min_patience": args.epochs}
        runs = [
            ("abmil", {"epochs": args.epochs}, 10.0, "early stopping (default)"),
            ("abmil", {"epochs": args.epochs, **every_epoch}, 10.0, "all epochs"),
            ("abmil", {"epochs": args.epochs, "context": False}, 10.0, "no bag context"),
            ("transformer", {"epochs": args.epochs}, 20.0, "early stopping (default)"),
            ("transformer", {"epochs": args.epochs, **every_epoch}, 20.0, "all epochs"),
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
                jobs=1,
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
