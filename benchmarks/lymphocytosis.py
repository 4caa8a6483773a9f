"""The real lymphocytosis cohort, run as a user runs it, every figure with its interval.

    python benchmarks/lymphocytosis.py DATA [--encoders tf_efficientnet_lite0,...]
        [--heads meanpool,abmil,lgbm,svm] [--device cpu|cuda] [--folds 5] [--repeats 3]
        [--seed 0] [--out runs/lymphocytosis] [--no-report] [--no-predict]

DATA is a challenge-layout folder (``trainset/trainset_true.csv``, ``trainset/<ID>/``,
``testset/testset_data.csv``, ``testset/<ID>/``): the development extract of the real
cohort (``../shared/data/lymphocytosis``). Nothing here reads the images directly: every
step is the CLI (``python -m cellbag``), so the figures are what a user gets:

1. ``cellbag inspect DATA``;
2. per encoder, ``cellbag featurize DATA STORE --encoder E`` (timed; cells/s);
3. ``cellbag cv STORE -e E --head HEADS --no-clinical`` (images only) and the same fused
   with the clinical features (the clinical-only baseline is added by cv itself);
4. every head's out-of-fold table, images-only and fused, with the clinical baseline's,
   goes through one paired bootstrap (``cellbag.evaluate.stats.evaluate``: the same
   resamples of the same patients): ROC AUC and balanced accuracy with their 95%
   intervals, and each head's paired difference to the clinical baseline;
5. the triage operating point (threshold chosen inside each training fold at the target
   sensitivity): cross-validated sensitivity and the share of reactive patients spared,
   beside what a cut chosen in hindsight on the same scores would spare
   (``hindsight_spared``: a bound on any threshold rule, not a result);
6. ``cellbag report`` of the fused run, then ``cellbag fit`` of the best fused head with
   its cv run's thresholds and ``cellbag predict`` of the unlabelled test patients (a
   submission CSV: it cannot be scored here).

It prints one table (encoder x head) and writes it, with the seconds of every stage, to
``OUT/real-cohort.md``. Never point it at held-out patients, and never commit its output
(derived from patient images).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HEADS = ("meanpool", "abmil", "lgbm", "svm")


def cellbag(*args: str, quiet: bool = True) -> float:
    """Run ``python -m cellbag ARGS``; the wall seconds (the command's output is shown
    when it fails)."""
    cmd = [sys.executable, "-m", "cellbag", *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", CELLBAG_PROGRESS="plain")
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=quiet, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout or ''}{r.stderr or ''}")
    return time.perf_counter() - t


def encoder_id(store: Path, name: str) -> str:
    from cellbag.store import Store

    s = Store.open(str(store))
    ids = [e for e in s.encoders() if e == name or s.encoder_info(e).get("name") == name]
    if not ids:
        sys.exit(f"{store}: no embeddings of encoder {name}")
    return sorted(ids)[-1]


def load_oofs(run: Path, heads: list[str], tag: str) -> dict[str, pd.DataFrame]:
    out = {}
    for h in heads:
        f = run / h / "oof_predictions.csv"
        if f.is_file():
            out[f"{h}{tag}"] = pd.read_csv(f, dtype={"patient_id": str})
    return out


def fmt(m: dict, key: str) -> str:
    f = m.get(key)
    if not f or not np.isfinite(f["value"]):
        return "—"
    return f"{f['value']:.3f} [{f['ci95_low']:.3f}, {f['ci95_high']:.3f}]"


def fmt_diff(d: dict | None) -> str:
    if not d or not np.isfinite(d["difference"]):
        return "—"
    mark = " ✓" if d["ci95_low"] > 0 else (" ✗" if d["ci95_high"] < 0 else "")
    return f"{d['difference']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}]{mark}"


def hindsight_spared(
    oof: pd.DataFrame, target: float, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Reactive patients spared by the best single cut **chosen in hindsight** on the
    cross-validated scores: per repeat, the cut at the tumoral score below which fewer
    than ``1 - target`` of the tumoral patients fall, applied to that repeat's
    out-of-fold probabilities of every patient; the mean over repeats, and its 95%
    interval over stratified patient resamples. Not a result: no rule that chooses its
    cut without the test patients' labels can do better on average than a cut chosen
    with them, so it bounds what any threshold rule (empirical, conformal) could spare
    with these scores. (Only the fold models' calibration could let per-fold cuts pass
    it.)"""
    piv = oof.pivot_table(index="patient_id", columns="repeat", values="probability")
    y = oof.groupby("patient_id")["label"].first().loc[piv.index].to_numpy()
    p = piv.to_numpy()

    def ceiling(idx: np.ndarray) -> float:
        yy, out = y[idx], []
        for r in range(p.shape[1]):
            s = p[idx, r]
            pos, neg = np.sort(s[yy == 1]), s[yy == 0]
            miss = int(np.floor((1.0 - target) * len(pos) + 1e-9))  # tumoral allowed below
            out.append(float(np.mean(neg < pos[miss])))
        return float(np.mean(out))

    rng = np.random.default_rng(seed)
    pos_i, neg_i = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    boots = [
        ceiling(np.concatenate([rng.choice(pos_i, len(pos_i)), rng.choice(neg_i, len(neg_i))]))
        for _ in range(resamples)
    ]
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return ceiling(np.arange(len(y))), float(lo), float(hi)


def triage_target(run: Path) -> float:
    """The run's target triage sensitivity (its config.yaml; 0.95 by default)."""
    import yaml

    f = run / "config.yaml"
    cfg = yaml.safe_load(f.read_text()) if f.is_file() else {}
    return float((cfg or {}).get("triage_sensitivity") or 0.95)


def paired_vs(per_head: dict, oofs: dict, base: str, seed: int) -> dict[str, dict]:
    """Each head's paired difference to ``base`` on ROC AUC and balanced accuracy."""
    from cellbag.evaluate.stats import (
        paired_difference,
        patient_metrics,
        patient_table,
        resample_weights,
    )

    tables = {h: patient_table(o) for h, o in oofs.items()}
    y = tables[base]["label"].to_numpy()
    w = resample_weights(y, 2000, seed)
    figs = {}
    for h, t in tables.items():
        calls = {c[: -len("call")]: t[c].to_numpy() for c in t.columns if c.endswith("call")}
        p = t["probability"].to_numpy()
        figs[h] = (patient_metrics(y, p, calls), patient_metrics(y, p, calls, w))
    out = {}
    for h in tables:
        if h == base:
            continue
        out[h] = {
            k: paired_difference(
                figs[h][0][k][0], figs[base][0][k][0], figs[h][1][k], figs[base][1][k]
            )
            for k in ("roc_auc", "balanced_accuracy")
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="challenge-layout folder of the cohort")
    ap.add_argument("--encoders", default="tf_efficientnet_lite0")
    ap.add_argument("--heads", default=",".join(HEADS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/lymphocytosis"))
    ap.add_argument("--featurize-args", default="", help="extra featurize options, quoted")
    ap.add_argument("--cv-args", default="", help="extra cv options, quoted (e.g. --jobs 2)")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--no-predict", action="store_true")
    a = ap.parse_args()
    heads = [h for h in a.heads.split(",") if h]
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    store = out / "store.zarr"
    cv_common = ["--folds", str(a.folds), "--repeats", str(a.repeats), "--seed", str(a.seed)]
    cv_common += a.cv_args.split()
    seconds: dict[str, dict[str, float]] = {}
    print(f"inspect: {cellbag('inspect', str(a.data), quiet=False):.1f} s")
    n_cells = sum(1 for _ in (a.data / "trainset").glob("*/*.jpg"))
    n_cells += sum(1 for _ in (a.data / "testset").glob("*/*.jpg"))
    lines = []
    for name in [e for e in a.encoders.split(",") if e]:
        sec = seconds.setdefault(name, {})
        sec["featurize"] = cellbag(
            "featurize",
            str(a.data),
            str(store),
            "--encoder",
            name,
            "--device",
            a.device,
            *a.featurize_args.split(),
            "--quiet",
        )
        eid = encoder_id(store, name)
        tag = name.replace("/", "_")
        img_run, fused_run = out / tag / "images", out / tag / "fused"
        for what, run, flag in (
            ("images", img_run, "--no-clinical"),
            ("fused", fused_run, "--clinical"),
        ):
            sec[f"cv {what}"] = cellbag(
                "cv",
                str(store),
                "-e",
                eid,
                "--head",
                ",".join(heads),
                flag,
                "--out",
                str(run),
                "--quiet",
                *cv_common,
            )
        oofs = {**load_oofs(img_run, heads, " (images)"), **load_oofs(fused_run, heads, " (fused)")}
        oofs.update(load_oofs(fused_run, ["clinical"], ""))
        from cellbag.evaluate.stats import evaluate

        per_head, _ = evaluate(oofs, seed=a.seed)
        vs = paired_vs(per_head, oofs, "clinical", a.seed) if "clinical" in oofs else {}
        fused = [h for h in oofs if h.endswith("(fused)")]
        best = (
            max(fused, key=lambda h: per_head[h]["metrics"]["roc_auc"]["value"]) if fused else None
        )
        if best and not a.no_report:
            sec["report"] = cellbag(
                "report", str(fused_run), "--store", str(store), "--out", str(out / tag / "report")
            )
        if best and not a.no_predict:
            head = best.split(" ")[0]
            model = out / tag / "model"
            sec["fit"] = cellbag(
                "fit",
                str(store),
                "-e",
                eid,
                "--head",
                head,
                "--cv-run",
                str(fused_run),
                "--threshold",
                "triage",
                "--out",
                str(model),
                "--quiet",
            )
            sec["predict"] = cellbag(
                "predict", str(model), str(store), "--out", str(out / tag / "submission.csv")
            )
        print(f"\n{name} ({eid}): featurize {n_cells / sec['featurize']:.1f} cells/s")
        hdr = (
            "| encoder | head | ROC AUC | balanced accuracy | Δ AUC vs clinical | Δ BA vs clinical "
            "| triage sensitivity | reactive spared | spared by a cut in hindsight |"
        )
        lines += [f"### {name} (`{eid}`)", "", hdr, "|" + " --- |" * 9]
        target = triage_target(fused_run)
        for h, r in per_head.items():
            m = r["metrics"]
            d = vs.get(h, {})
            c = hindsight_spared(oofs[h], target, seed=a.seed)
            row = (
                f"| {name} | {h} | {fmt(m, 'roc_auc')} | {fmt(m, 'balanced_accuracy')} | "
                f"{fmt_diff(d.get('roc_auc'))} | {fmt_diff(d.get('balanced_accuracy'))} | "
                f"{fmt(m, 'triage_sensitivity')} | {fmt(m, 'triage_spared')} | "
                f"{c[0]:.3f} [{c[1]:.3f}, {c[2]:.3f}] |"
            )
            lines.append(row)
        lines += ["", "seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in sec.items())]
        lines += [f"featurize: {n_cells / sec['featurize']:.1f} cells/s ({n_cells} cells)", ""]
        if best:
            lines += [f"best fused head (ROC AUC): {best}", ""]
        print("\n".join(lines[-(len(per_head) + 8) :]))
        (out / tag / "figures.json").write_text(
            json.dumps({"per_head": per_head, "vs_clinical": vs, "seconds": sec}, indent=1)
        )
    doc = [
        "# Real lymphocytosis cohort: development patients",
        "",
        f"`python benchmarks/lymphocytosis.py {a.data} --encoders {a.encoders} --heads "
        f"{','.join(heads)}"
        + (f' --featurize-args "{a.featurize_args}"' if a.featurize_args else "")
        + f"` — {a.folds}-fold x {a.repeats}, seed {a.seed}; value [95% "
        "bootstrap interval over patients]; Δ: paired difference to the clinical-only "
        "baseline on the same resamples (✓ interval above 0, ✗ below). The last column "
        "is not a result: the reactive patients a single cut chosen in hindsight (with "
        "the labels) on the same out-of-fold scores would spare at the target "
        "sensitivity, a bound on any threshold rule.",
        "",
        *lines,
    ]
    (out / "real-cohort.md").write_text("\n".join(doc) + "\n")
    print(f"\nwritten: {out / 'real-cohort.md'}")


if __name__ == "__main__":
    main()
