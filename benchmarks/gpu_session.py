"""One command for a lent GPU: featurize throughput per encoder and a time-boxed MAE run.

    python benchmarks/gpu_session.py DATA
        [--encoders tf_efficientnet_lite0,tf_efficientnet_lite1,tf_efficientnet_lite2,
                    vit_small_patch16_224]
        [--device cuda] [--repeats 2] [--mae-seconds 240] [--out /tmp/gpu_session]
        [--image-size PX] [--batch-size 64] [--mae-encoder vit_small_patch16_224]
        [--mae-batch-size N] [--budget-seconds 560]

DATA is a challenge-layout folder, on a GPU machine the subset that travels
(``benchmarks/lymphocytosis_subset.py``; docs/benchmarks.md, "GPU session"). Every step is
the CLI (``python -m cellbag``), as a user runs it:

1. per encoder, ``cellbag featurize DATA OUT/stores/<encoder>.zarr`` into a fresh store
   (``--decode gpu`` on CUDA; a failed GPU decode is retried with ``--decode cpu`` and
   said so), then ``--repeats`` more runs with ``--force`` (the same process start, the
   file cache warm): each run's cells/s as the pipeline records it in the store
   (``last_run``: model time, decode time, the model's wait for images) and its wall
   seconds as a user waits for it (interpreter, imports and model build included);
2. ``cellbag pretrain-mae DATA --max-seconds S`` of ``--mae-encoder`` from random weights
   (the training split; the cosine schedule spans ``--mae-epochs``, so within the budget
   the rate stays near its peak after one warm-up epoch): steps/s and images/s over the
   loop's wall clock, images/s inside the steps, and the loss per epoch from ``mae.json``.

Weights: an encoder whose preset ships weights in a package (EfficientNet-Lite0/1/2) uses
them when the package is importable; hub-only presets (the ViTs) use ``--weights none``
(random initialisation) on an offline machine, and the table says so. Cells/s do not
depend on the weights' values, only on the architecture and input size.

It prints what it measures as it goes, then one summary table, and writes
``OUT/gpu_session.md`` (the table), ``OUT/gpu_session.json`` and ``OUT/gpu_session.log``
(every command's output), rewritten after each step so a run stopped at its limit keeps
what it measured. ``--budget-seconds`` keeps the whole inside one ten-minute command:
featurize repeats are skipped (and said so) when they would leave the MAE run less than
its budget, and the MAE budget shrinks to what is left. Never commit OUT (derived from
patient images).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ENCODERS = "tf_efficientnet_lite0,tf_efficientnet_lite1,tf_efficientnet_lite2,vit_small_patch16_224"
MAE_OVERHEAD_S = 60.0  # interpreter, imports, the first epoch's decoding, the encoder export


class Session:
    """The figures measured so far, the log, and the files they are written to."""

    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.budget, self.t0 = out, budget, time.perf_counter()
        self.doc: dict = {"featurize": [], "mae": None, "notes": []}
        self.log = (out / "gpu_session.log").open("w")

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def cellbag(self, *args: str) -> tuple[int, float, str]:
        """Run ``python -m cellbag ARGS``: exit code, wall seconds, output (also logged)."""
        cmd = [sys.executable, "-m", "cellbag", *args]
        env = dict(os.environ, HF_HUB_OFFLINE="1", CELLBAG_PROGRESS="plain")
        t = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        output = (r.stdout or "") + (r.stderr or "")
        self.log.write(f"$ {' '.join(cmd)}\n{output}[exit {r.returncode}, {wall:.1f} s]\n\n")
        self.log.flush()
        return r.returncode, wall, output

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.doc["notes"].append(text)

    def save(self) -> None:
        (self.out / "gpu_session.json").write_text(json.dumps(self.doc, indent=1) + "\n")
        (self.out / "gpu_session.md").write_text(markdown(self.doc))


def last_line(output: str) -> str:
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def environment(device: str) -> dict:
    import torch

    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cpus": os.cpu_count(),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
    head = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    )
    env["commit"] = head.stdout.strip() if head.returncode == 0 else "unknown (no .git)"
    return env


def choose_weights(name: str) -> tuple[str, str]:
    """``(weights argument, note)``: the preset's package weights when importable, else
    random initialisation (hub-only presets cannot load on an offline machine)."""
    from cellbag.featurize.errors import WeightsError
    from cellbag.featurize.registry import get_preset
    from cellbag.featurize.weights import package_file

    preset = get_preset(name)
    source = preset.weights if preset else "hub"
    if source.startswith("package:"):
        try:
            package_file(source)
            return source, ""
        except WeightsError as e:
            return "none", f"random init ({e})"
    if source == "none":
        return "none", ""
    return "none", "random init (hub-only weights, offline machine)"


def store_run(store: Path) -> dict:
    """The ``last_run`` figures featurize recorded in a one-encoder store."""
    from cellbag.store import Store

    s = Store.open(str(store))
    eid = s.encoders()[0]
    info = s.encoder_info(eid)
    run = info.get("last_run") or {}
    rank = (run.get("ranks") or [{}])[0]
    return {
        "encoder_id": eid,
        "n_cells": int(s.n_cells),
        "cells": run.get("cells"),
        "seconds": run.get("seconds"),
        "cells_per_s": run.get("cells_per_s"),
        "compute_s": rank.get("compute_s"),
        "decode_s": rank.get("decode_s"),
        "decode_wait_s": rank.get("decode_wait_s"),
        "decode": run.get("decode"),
        "precision": run.get("precision"),
        "batch_size": run.get("batch_size"),
    }


def featurize_encoder(ses: Session, args: argparse.Namespace, name: str) -> None:
    weights, why = choose_weights(name)
    rec: dict = {"encoder": name, "weights": weights, "weights_note": why, "runs": []}
    ses.doc["featurize"].append(rec)
    print(f"\n{name} (weights {weights}{'; ' + why if why else ''})", flush=True)
    store = args.out / "stores" / f"{name}.zarr"
    if store.exists():
        shutil.rmtree(store)
    cuda = args.device.startswith("cuda")
    decode = "gpu" if cuda else "cpu"
    base = [str(args.data), str(store), "-e", name, "-w", weights, "--device", args.device]
    base += ["-b", str(args.batch_size), "-q"]
    if args.image_size:
        base += ["--image-size", str(args.image_size)]
    for r in range(1 + args.repeats):
        kind = "cold" if r == 0 else f"repeat {r}"
        last_wall = rec["runs"][-1]["wall_s"] if rec["runs"] else 0.0
        if r and ses.left() < last_wall + args.mae_seconds + MAE_OVERHEAD_S:
            ses.note(f"{name}: {kind} and later skipped (session budget)")
            break
        rc, wall, output = ses.cellbag(
            "featurize", *base, "--decode", decode, *(["--force"] * bool(r))
        )
        if rc and decode == "gpu":
            ses.note(
                f"{name}: --decode gpu failed ({last_line(output)}); retried with --decode cpu"
            )
            decode = "cpu"
            rc, wall, output = ses.cellbag(
                "featurize", *base, "--decode", decode, *(["--force"] * bool(r))
            )
        if rc:
            rec["error"] = last_line(output)
            print(f"  {kind}: failed: {rec['error']}", flush=True)
            break
        run = dict(store_run(store), run=kind, wall_s=round(wall, 2))
        rec["runs"].append(run)
        print(
            f"  {kind}: {run['cells']} cells in {run['seconds']:.2f} s = {run['cells_per_s']:.1f} "
            f"cells/s (model {run['compute_s']:.2f} s, decode {run['decode']} "
            f"{run['decode_s']:.2f} s, waited for images {run['decode_wait_s']:.2f} s; "
            f"{run['precision']}); command {wall:.1f} s",
            flush=True,
        )
        ses.save()
    ses.save()


def pretrain(ses: Session, args: argparse.Namespace) -> None:
    budget = min(args.mae_seconds, ses.left() - MAE_OVERHEAD_S)
    if budget < 10:
        ses.note("MAE skipped: the session budget is spent")
        ses.save()
        return
    if budget < args.mae_seconds:
        ses.note(f"MAE budget cut to {budget:.0f} s (session budget)")
    out = args.out / "mae"
    if out.exists():
        shutil.rmtree(out)
    cmd = ["pretrain-mae", str(args.data), "-o", str(out), "-e", args.mae_encoder, "-w", "none"]
    cmd += ["--device", args.device, "--epochs", str(args.mae_epochs)]
    cmd += ["--max-seconds", f"{budget:.1f}", "-q"]
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    if args.mae_batch_size:
        cmd += ["--batch-size", str(args.mae_batch_size)]
    print(f"\nMAE {args.mae_encoder} (weights none), {budget:.0f} s budget", flush=True)
    rc, wall, output = ses.cellbag(*cmd)
    if rc:
        ses.doc["mae"] = {"model": args.mae_encoder, "error": last_line(output)}
        print(f"  failed: {ses.doc['mae']['error']}", flush=True)
        ses.save()
        return
    s = json.loads((out / "mae.json").read_text())
    cfg, loop = s["config"], s["loop_seconds"]
    rec = {
        "model": cfg["model"],
        "weights": "none (random init)",
        "image_size": cfg["image_size"],
        "batch_size": cfg["batch_size"],
        "n_images": s["n_images"],
        "device": s["device"],
        "autocast": s["autocast"],
        "budget_s": budget,
        "loop_s": round(loop, 2),
        "wall_s": round(wall, 2),
        "steps": s["steps_now"],
        "epochs": s["epochs_done"],
        "steps_per_s": s["steps_now"] / loop if loop else None,
        "images_per_s": s["images_now"] / loop if loop else None,
        "images_per_s_in_steps": s["images_per_s"],
        "history": s["history"],
        "last_step_losses": s["last_step_losses"],
    }
    ses.doc["mae"] = rec
    print(
        f"  {rec['steps']} steps ({rec['epochs']} epochs of {rec['n_images']} images, batch "
        f"{rec['batch_size']}, {rec['image_size']} px) in {loop:.1f} s: "
        f"{rec['steps_per_s']:.2f} steps/s, {rec['images_per_s']:.1f} images/s "
        f"({rec['images_per_s_in_steps']:.1f} inside the steps); command {wall:.1f} s",
        flush=True,
    )
    print(f"  loss: {loss_curve(rec)}", flush=True)
    ses.save()


def loss_curve(rec: dict, points: int = 12) -> str:
    """The loss per epoch, thinned to about ``points`` epochs (the last one always shown),
    or the last steps' losses when no epoch completed."""
    hist = [h for h in rec.get("history") or [] if h.get("loss") is not None]
    if not hist:
        steps = rec.get("last_step_losses") or []
        return "no epoch completed; last steps " + ", ".join(f"{v:.4f}" for v in steps[-points:])
    stride = max(1, -(-len(hist) // points))
    shown = hist[::stride]
    if shown[-1] is not hist[-1]:
        shown.append(hist[-1])
    return ", ".join(f"ep {h['epoch']} {h['loss']:.4f}" for h in shown)


def fmt(value, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def markdown(doc: dict) -> str:
    env = doc.get("environment", {})
    lines = ["# GPU session", ""]
    where = env.get("gpu") or env.get("device", "?")
    lines += [
        f"{env.get('date', '?')} · {where} · torch {env.get('torch', '?')} · python "
        f"{env.get('python', '?')} · {env.get('cpus', '?')} CPUs · commit {env.get('commit', '?')}",
        "",
        f"Data: `{doc.get('data', '?')}` ({doc.get('cells', '?')} cells). Command: "
        f"`{doc.get('command', '')}`",
        "",
        "## featurize (cells/s as the pipeline records it; command = wall seconds of the CLI)",
        "",
        "| encoder | weights | decode · precision | cold: cells/s (command s) "
        "| repeats: cells/s | best cells/s | best run: model s · decode s · waited s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rec in doc["featurize"]:
        runs = rec["runs"]
        weights = rec["weights"] + (f" ({rec['weights_note']})" if rec["weights_note"] else "")
        if not runs:
            lines.append(f"| {rec['encoder']} | {weights} | failed: {rec.get('error', '?')} |||||")
            continue
        cold, reps = runs[0], runs[1:]
        best = max(runs, key=lambda r: r["cells_per_s"] or 0)
        lines.append(
            f"| {rec['encoder']} | {weights} | {cold['decode']} · {cold['precision']} "
            f"| {fmt(cold['cells_per_s'])} ({fmt(cold['wall_s'])}) "
            f"| {', '.join(fmt(r['cells_per_s']) for r in reps) or '—'} "
            f"| **{fmt(best['cells_per_s'])}** ({best['run']}) "
            f"| {fmt(best['compute_s'], '.2f')} · {fmt(best['decode_s'], '.2f')} · "
            f"{fmt(best['decode_wait_s'], '.2f')} |"
        )
        if rec.get("error"):
            lines.append(f"| {rec['encoder']} (later run) | | failed: {rec['error']} |||||")
    mae = doc.get("mae")
    lines += ["", "## MAE pretraining (time-boxed)", ""]
    if not mae:
        lines.append("not run")
    elif mae.get("error"):
        lines.append(f"{mae['model']}: failed: {mae['error']}")
    else:
        lines += [
            "| model | weights | px · batch · images | budget s | steps (epochs) | steps/s "
            "| images/s (loop wall) | images/s (in steps) | loss first → last epoch |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        hist = [h["loss"] for h in mae["history"] if h.get("loss") is not None]
        loss = f"{hist[0]:.4f} → {hist[-1]:.4f}" if hist else "—"
        lines.append(
            f"| {mae['model']} | {mae['weights']} | {mae['image_size']} · {mae['batch_size']} · "
            f"{mae['n_images']} | {mae['budget_s']:.0f} | {mae['steps']} ({mae['epochs']}) "
            f"| {fmt(mae['steps_per_s'], '.2f')} | {fmt(mae['images_per_s'])} "
            f"| {fmt(mae['images_per_s_in_steps'])} | {loss} |"
        )
        lines += ["", f"Loss curve: {loss_curve(mae)}"]
    if doc["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="a challenge-layout folder (the travelling subset)")
    ap.add_argument("--encoders", default=ENCODERS, help="comma-separated presets / timm names")
    ap.add_argument("--device", default="cuda", help="cuda | cpu (a dry run)")
    ap.add_argument("--repeats", type=int, default=2, help="featurize runs after the cold one")
    ap.add_argument("--mae-seconds", type=float, default=240.0, help="MAE time budget")
    ap.add_argument("--mae-encoder", default="vit_small_patch16_224", help="a timm ViT")
    ap.add_argument("--mae-epochs", type=int, default=1000, help="the schedule's length")
    ap.add_argument("--mae-batch-size", type=int, help="default: 256 on GPU, 32 on CPU")
    ap.add_argument("--image-size", type=int, help="input px for every run (default: each's)")
    ap.add_argument("--batch-size", type=int, default=64, help="featurize images per forward")
    ap.add_argument("--budget-seconds", type=float, default=560.0, help="the whole session")
    ap.add_argument("--out", type=Path, default=Path("/tmp/gpu_session"))
    args = ap.parse_args()
    try:
        import zarr  # noqa: F401

        import cellbag  # noqa: F401
    except ImportError as e:
        sys.exit(f"{e}: put src/ on PYTHONPATH and install the carried wheels (docs/benchmarks.md)")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device here (use --device cpu for a dry run)")
    if not (args.data / "trainset").is_dir():
        sys.exit(f"{args.data}: not a challenge-layout folder (no trainset/)")

    args.out.mkdir(parents=True, exist_ok=True)
    ses = Session(args.out, args.budget_seconds)
    ses.doc.update(
        environment=environment(args.device),
        data=str(args.data),
        command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    )
    env = ses.doc["environment"]
    print(
        f"{env.get('gpu', args.device)}, torch {env['torch']}, {env['cpus']} CPUs, "
        f"commit {env['commit']}; data {args.data}",
        flush=True,
    )
    for name in [e.strip() for e in args.encoders.split(",") if e.strip()]:
        featurize_encoder(ses, args, name)
        cells = [r["n_cells"] for rec in ses.doc["featurize"] for r in rec["runs"]]
        if cells:
            ses.doc["cells"] = cells[0]
    if args.mae_seconds > 0:
        pretrain(ses, args)
    ses.save()
    print("\n" + markdown(ses.doc), flush=True)
    print(f"written: {args.out / 'gpu_session.md'}, gpu_session.json, gpu_session.log")


if __name__ == "__main__":
    main()
