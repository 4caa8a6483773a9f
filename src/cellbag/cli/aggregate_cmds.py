"""Commands of stage 2: `cv`, `fit`, `predict` (aggregators over cached bags)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cellbag.cli.app import app, console, next_step, shell_path
from cellbag.core.io import atomic_path
from cellbag.core.registry import declared_names

HEADS = ", ".join(declared_names("cellbag.aggregate.heads", "register_head"))
HEAD_HELP = (
    f"Head(s), comma-separated: {HEADS} (clinical: the clinical-only baseline, added by "
    "itself when the store has clinical data)."
)
SET_HELP = (
    "Head parameter KEY=VALUE (all heads) or HEAD.KEY=VALUE, repeatable, "
    "e.g. --set epochs=30 --set abmil.hidden=32."
)


def _head_params(sets: list[str] | None, heads: list[str]) -> dict[str, dict]:
    from cellbag.aggregate.errors import AggregateError

    out: dict[str, dict] = {h: {} for h in heads}
    for item in sets or []:
        if "=" not in item:
            raise AggregateError(f"--set {item!r}: expected KEY=VALUE or HEAD.KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if "." in key:
            head, key = key.split(".", 1)
            if head not in out:
                raise AggregateError(
                    f"--set {item!r}: head {head!r} is not among {', '.join(heads)}"
                )
            out[head][key] = value
        else:
            for h in heads:
                out[h][key] = value
    return out


def best_line(table) -> str:  # noqa: ANN001
    """The run's best head by the one rule `cv`, `runs` and the report share."""
    from cellbag.evaluate.stats import BEST_RULE, best_of

    best = best_of(dict(zip(table["head"], table["roc_auc"], strict=True)))
    return f"best head: {best} ({BEST_RULE}; a rank is no verdict: read the paired comparison)"


@app.command("cv")
def cv_cmd(
    store: str = typer.Argument(..., help="Feature store (folder or fsspec URL)."),
    encoder: str = typer.Option(
        None, "--encoder", "-e", help="Encoder id or name (default: the store's only encoder)."
    ),
    head: str = typer.Option("abmil", "--head", help=HEAD_HELP),
    clinical: bool = typer.Option(
        True, "--clinical/--no-clinical", help="Fuse clinical features (when the store has them)."
    ),
    folds: int = typer.Option(5, "--folds", min=2, help="Folds per repeat."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Repeats of the k-fold split."),
    seed: int = typer.Option(0, "--seed", help="Seed of the splits and of every head."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (splits.json, <head>/...)."),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
    threads: int = typer.Option(
        None,
        "--threads",
        min=1,
        help="Torch threads (default 1: reproducible, and fastest for these small tensors).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
    triage_sensitivity: float = typer.Option(
        0.95,
        "--triage-sensitivity",
        help="Target sensitivity of the triage operating point (its threshold is chosen "
        "inside each training fold).",
    ),
    inner_folds: int = typer.Option(
        3,
        "--inner-folds",
        min=0,
        help="Inner folds for the nested thresholds and calibration (0: none; each adds a "
        "head fit per outer fold).",
    ),
    calibrate: str = typer.Option(
        None,
        "--calibrate",
        help="Calibrate probabilities inside the training fold: sigmoid | isotonic.",
    ),
    holdout_finetuned: bool = typer.Option(
        False,
        "--holdout-finetuned",
        help="Leave out the patients whose labels fine-tuned the encoder (else refused).",
    ),
    cell_truth: Path = typer.Option(
        None,
        "--cell-truth",
        help="CSV cell_id,is_key: write the instance AUC of each head's cell weights "
        "into its metrics.json.",
    ),
) -> None:
    """Patient-level, stratified, repeated k-fold cross-validation of heads on the training
    split; every figure with its 95% bootstrap interval over patients.

    \b
    Examples:
      cellbag cv demo_out/store.zarr --head meanpool,abmil,lgbm --out runs/effnet
      cellbag cv store.zarr -e ENCODER_ID --head abmil --no-clinical \\
          --set abmil.hidden=32 -o runs/a
    """
    from cellbag.aggregate.registry import parse_heads
    from cellbag.evaluate.cv import run_cv

    names = parse_heads(head)
    table = run_cv(
        store,
        encoder,
        heads=names,
        out=out,
        clinical=clinical,
        folds=folds,
        repeats=repeats,
        seed=seed,
        head_params=_head_params(sets, names),
        threads=threads,
        console=console,
        quiet=quiet,
        inner_folds=inner_folds,
        triage_sensitivity=triage_sensitivity,
        calibrate=calibrate,
        holdout_finetuned=holdout_finetuned,
        cell_truth=cell_truth,
    )
    if not quiet:
        console.print(f"results in [bold]{out}[/] ({len(table)} head(s), comparison.csv)")
        console.print(best_line(table), highlight=False)
        if cell_truth is not None:
            for h in table["head"]:
                m = json.loads((out / h / "metrics.json").read_text()).get("cell_truth") or {}
                if m.get("instance_auc") is not None:
                    console.print(f"instance AUC of {h}'s cell weights: {m['instance_auc']:.3f}")
    next_step(
        f"cellbag report {shell_path(out)} --store {shell_path(store)} "
        f"--out {shell_path(out / 'report')}"
    )


@app.command("fit")
def fit_cmd(
    store: str = typer.Argument(..., help="Feature store (folder or fsspec URL)."),
    encoder: str = typer.Option(
        None, "--encoder", "-e", help="Encoder id or name (default: the store's only encoder)."
    ),
    head: str = typer.Option(..., "--head", help=f"One head: {HEADS}."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
    clinical: bool = typer.Option(True, "--clinical/--no-clinical", help="Fuse clinical features."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    ensemble: int = typer.Option(
        0, "--ensemble", min=0, help="Train a K-fold ensemble (K >= 2) instead of one model."
    ),
    threshold: str = typer.Option(
        "0.5",
        "--threshold",
        help="Decision threshold: a probability, 'youden', or 'triage[:SENS]' (target "
        "sensitivity, default 0.95); chosen from out-of-fold predictions of the training patients.",
    ),
    cv_run: Path = typer.Option(
        None,
        "--cv-run",
        help="A `cellbag cv` run folder whose out-of-fold predictions choose the threshold.",
    ),
    calibrate: str = typer.Option(
        None, "--calibrate", help="Calibrate on out-of-fold predictions: sigmoid | isotonic."
    ),
    holdout_finetuned: bool = typer.Option(
        False,
        "--holdout-finetuned",
        help="Leave out the patients whose labels fine-tuned the encoder (else refused).",
    ),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
    threads: int = typer.Option(
        None,
        "--threads",
        min=1,
        help="Torch threads (default 1: reproducible, and fastest for these small tensors).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a head on all training patients (optionally a fold ensemble) and save it.

    \b
    Examples:
      cellbag fit demo_out/store.zarr --head meanpool --out models/meanpool
      cellbag fit store.zarr --head abmil --ensemble 5 --threshold youden \\
          -o models/abmil
    """
    from cellbag.aggregate.errors import AggregateError
    from cellbag.aggregate.registry import parse_heads
    from cellbag.evaluate.model import fit_model

    names = parse_heads(head)
    if len(names) != 1:
        raise AggregateError(f"--head: `cellbag fit` trains one head, got {head!r}")
    from cellbag.core.progress import progress_bar

    with progress_bar("models", enabled=not quiet, console=console) as bar:
        task = bar.add_task(f"fit {names[0]}", total=None)
        model = fit_model(
            store,
            names[0],
            out,
            encoder_id=encoder,
            clinical=clinical,
            seed=seed,
            ensemble=ensemble,
            threshold=threshold,
            cv_run=cv_run,
            params=_head_params(sets, names)[names[0]],
            threads=threads,
            calibrate=calibrate,
            holdout_finetuned=holdout_finetuned,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    t = model.doc["threshold"]
    console.print(
        f"saved [bold]{out}[/]: {names[0]} on {model.doc['n_train_patients']} patients, "
        f"{len(model.members)} member(s), threshold {t['value']:.3f} ({t['method']})"
        + (
            f", triage threshold {model.triage_threshold:.3f} (sensitivity "
            f"{t['triage']['target_sensitivity']:.2f})"
            if model.triage_threshold is not None
            else ""
        )
    )
    # a store without test patients (an imported benchmark, say): predict on new patients' store
    has_test = _store_hint(store, lambda s: bool((s.patients()["split"] == "test").any()), True)
    target = shell_path(store) if has_test else "NEW_STORE"
    next_step(f"cellbag predict {shell_path(out)} {target} --out submission.csv")


@app.command("predict")
def predict_cmd(
    model_dir: Path = typer.Argument(..., help="Model folder written by `cellbag fit`."),
    store: str = typer.Argument(..., help="Feature store holding the model's encoder."),
    out: Path = typer.Option(
        Path("submission.csv"), "--out", "-o", help="Submission CSV (Id,Predicted)."
    ),
    threshold: float = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Override the model's decision threshold."
    ),
    split: str = typer.Option("test", "--split", help="Patients to predict: test | train | all."),
) -> None:
    """Write `Id,Predicted` (0/1) for a split, and `<out>_proba.csv` with probabilities,
    the threshold and each patient's triage call.

    \b
    Examples:
      cellbag predict models/meanpool demo_out/store.zarr --out submission.csv
      cellbag predict models/abmil store.zarr --split train --threshold 0.4 \\
          -o train_pred.csv
    """
    from cellbag.evaluate.model import load_model, write_submission

    model = load_model(model_dir)
    pred = model.predict_store(store, split=split, threshold=threshold)
    sub, proba = write_submission(pred, out)
    _write_cells(model, store, split, sub)
    n_pos = int(pred["predicted"].sum())
    if "triage" in pred:
        spared = int((pred["triage"] == "spared").sum())
        triage = f", triage: {spared} spared of cytometry at threshold {model.triage_threshold:.3f}"
    else:
        triage = "; no triage calls: fit with --threshold triage[:SENS] for them"
    console.print(
        f"wrote [bold]{sub}[/] ({len(pred)} patients, {n_pos} predicted tumoral at threshold "
        f"{pred['threshold'].iloc[0]:.3f}{triage}) and {proba}"
    )
    # the cohort's images, or None for imported features (the report shows the predictions)
    data = _store_hint(
        store, lambda s: None if s.imported else shell_path(s.attrs["cohort"]["root"]), "DATA"
    )
    report = (
        f"cellbag report {_cv_run_of(model_dir)} --store {shell_path(store)} "
        f"--predictions {shell_path(sub)}"
    )
    if data is None:
        next_step(report)
        return
    next_step(
        report,
        f"cellbag distill {shell_path(store)} {data} --teacher {shell_path(model_dir)} "
        "--out student",
    )


def _cv_run_of(model_dir: Path) -> str:
    """The cv run a model took its threshold from (its config.yaml), for a ``next:`` line."""
    try:
        import yaml

        run = yaml.safe_load((Path(model_dir) / "config.yaml").read_text()).get("cv_run")
    except Exception:  # noqa: BLE001 - only a hint
        run = None
    return shell_path(run) if run else "RUN"


def _write_cells(model, store: str, split: str, sub: Path) -> None:  # noqa: ANN001
    """``<out stem>_cells.csv``: the model's per-cell contributions (the report's galleries of
    predicted patients, `cellbag report RUN --predictions OUT`)."""

    from cellbag.aggregate.errors import AggregateError
    from cellbag.report.explain import cells_path, predicted_cells

    try:
        cells = predicted_cells(model, store, split)
    except AggregateError as e:  # a head without per-cell scores: the submission stands
        console.print(f"[yellow]note:[/] no per-cell table ({e})", highlight=False)
        return
    dest = cells_path(sub)
    with atomic_path(dest) as tmp:
        cells.to_csv(tmp, index=False)


def _store_hint(store: str, read, default):  # noqa: ANN001, ANN202
    """``read(store)`` for a ``next:`` line, or ``default`` when the store cannot be read."""
    try:
        from cellbag.store import Store

        return read(Store.open(store, mode="r"))
    except Exception:  # noqa: BLE001 - only a hint
        return default
