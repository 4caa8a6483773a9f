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


JOBS_HELP = "Worker processes for the independent fits (default: every core); same numbers."
CONFIG_HELP = "A run's config.yaml to replay; flags given beside it override its settings."


@app.command("cv")
def cv_cmd(
    store: str = typer.Argument(
        None, help="Feature store (folder or fsspec URL); from --config when omitted."
    ),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    encoder: str = typer.Option(
        None, "--encoder", "-e", help="Encoder id or name (default: the store's only encoder)."
    ),
    head: str = typer.Option(None, "--head", help=HEAD_HELP + " [default: abmil]"),
    clinical: bool = typer.Option(
        None,
        "--clinical/--no-clinical",
        help="Fuse clinical features (when the store has them). [default: clinical]",
        show_default=False,
    ),
    folds: int = typer.Option(None, "--folds", min=2, help="Folds per repeat. [default: 5]"),
    repeats: int = typer.Option(
        None, "--repeats", min=1, help="Repeats of the k-fold split. [default: 3]"
    ),
    seed: int = typer.Option(
        None, "--seed", help="Seed of the splits and of every head. [default: 0]"
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (splits.json, <head>/...)."),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
    jobs: int = typer.Option(None, "--jobs", "-j", min=1, help=JOBS_HELP),
    cluster: str = typer.Option(
        None,
        "--cluster",
        help="Run the fits on Dask: tcp://HOST:8786 (a running scheduler) or local:N "
        "(N local worker processes); needs the `cluster` extra.",
    ),
    threads: int = typer.Option(
        None,
        "--threads",
        min=1,
        help="Torch threads per fit (default 1: reproducible, and fastest for these tensors).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
    triage_sensitivity: float = typer.Option(
        None,
        "--triage-sensitivity",
        help="Target sensitivity of the triage operating point (its threshold is chosen "
        "inside each training fold). [default: 0.95]",
    ),
    inner_folds: int = typer.Option(
        None,
        "--inner-folds",
        min=0,
        help="Inner folds for the nested thresholds and calibration (0: none; each adds a "
        "head fit per outer fold). [default: 3]",
    ),
    calibrate: str = typer.Option(
        None,
        "--calibrate",
        help="Calibrate probabilities inside the training fold: sigmoid | isotonic.",
    ),
    holdout_finetuned: bool = typer.Option(
        None,
        "--holdout-finetuned",
        help="Leave out the patients whose labels fine-tuned the encoder (else refused).",
    ),
    cell_truth: Path = typer.Option(
        None,
        "--cell-truth",
        help="CSV cell_id,is_key: write the instance AUC of each head's cell weights "
        "into its metrics.json.",
    ),
    allow_stale: bool = typer.Option(
        None,
        "--allow-stale",
        help="Run on embeddings of images that changed since featurize (else refused).",
    ),
) -> None:
    """Patient-level, stratified, repeated k-fold cross-validation of heads on the training
    split; every figure with its 95% bootstrap interval over patients. The run folder gets
    config.yaml: `cellbag cv --config RUN/config.yaml` reruns it.

    \b
    Examples:
      cellbag cv demo_out/store.zarr --head meanpool,abmil,lgbm --out runs/effnet
      cellbag cv store.zarr -e ENCODER_ID --head abmil --no-clinical \\
          --set abmil.hidden=32 -o runs/a
      cellbag cv --config runs/effnet/config.yaml --out runs/again --jobs 4
    """
    from cellbag.aggregate.registry import parse_heads
    from cellbag.evaluate.config import CVConfig, override, read_config
    from cellbag.evaluate.cv import run_config

    base = read_config(config, CVConfig) if config is not None else CVConfig(heads=["abmil"])
    names = parse_heads(head) if head is not None else parse_heads(base.heads)
    params = base.head_params
    if sets:
        params = {
            h: {**base.head_params.get(h, {}), **v} for h, v in _head_params(sets, names).items()
        }
    cfg = override(
        base,
        store=store,
        out=None if out is None else str(out),
        encoder=encoder,
        heads=names,
        clinical=clinical,
        folds=folds,
        repeats=repeats,
        seed=seed,
        inner_folds=inner_folds,
        triage_sensitivity=triage_sensitivity,
        calibrate=calibrate,
        head_params=params,
        holdout_finetuned=holdout_finetuned,
        cell_truth=None if cell_truth is None else str(cell_truth),
        threads=threads,
        jobs=jobs,
        cluster=cluster,
        allow_stale=allow_stale,
    )
    if cfg.store is None:
        raise typer.BadParameter("give STORE, or --config RUN/config.yaml", param_hint="STORE")
    if cfg.out is None:
        raise typer.BadParameter("give the run folder", param_hint="--out")
    out = Path(cfg.out)
    table = run_config(cfg, console=console, quiet=quiet)
    if not quiet:
        console.print(f"results in [bold]{out}[/] ({len(table)} head(s), comparison.csv)")
        console.print(best_line(table), highlight=False)
        if cfg.cell_truth is not None:
            for h in table["head"]:
                m = json.loads((out / h / "metrics.json").read_text()).get("cell_truth") or {}
                if m.get("instance_auc") is not None:
                    console.print(f"instance AUC of {h}'s cell weights: {m['instance_auc']:.3f}")
    next_step(
        f"cellbag report {shell_path(out)} --store {shell_path(cfg.store)} "
        f"--out {shell_path(out / 'report')}"
    )


@app.command("fit")
def fit_cmd(
    store: str = typer.Argument(
        None, help="Feature store (folder or fsspec URL); from --config when omitted."
    ),
    config: Path = typer.Option(
        None, "--config", help="A model's config.yaml to replay; flags override it."
    ),
    encoder: str = typer.Option(
        None, "--encoder", "-e", help="Encoder id or name (default: the store's only encoder)."
    ),
    head: str = typer.Option(None, "--head", help=f"One head: {HEADS}."),
    out: Path = typer.Option(None, "--out", "-o", help="Model folder to write."),
    clinical: bool = typer.Option(
        None, "--clinical/--no-clinical", help="Fuse clinical features. [default: clinical]"
    ),
    seed: int = typer.Option(None, "--seed", help="Seed. [default: 0]"),
    ensemble: int = typer.Option(
        None, "--ensemble", min=0, help="Train a K-fold ensemble (K >= 2) instead of one model."
    ),
    threshold: str = typer.Option(
        None,
        "--threshold",
        help="Decision threshold: a probability, 'youden', or 'triage[:SENS]' (target "
        "sensitivity, default 0.95); chosen from out-of-fold predictions of the training "
        "patients. [default: 0.5]",
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
        None,
        "--holdout-finetuned",
        help="Leave out the patients whose labels fine-tuned the encoder (else refused).",
    ),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
    jobs: int = typer.Option(None, "--jobs", "-j", min=1, help=JOBS_HELP),
    threads: int = typer.Option(
        None,
        "--threads",
        min=1,
        help="Torch threads per fit (default 1: reproducible, and fastest for these tensors).",
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
    from cellbag.core.progress import progress_bar
    from cellbag.evaluate.config import FitConfig, override, read_config
    from cellbag.evaluate.model import fit_config

    base = read_config(config, FitConfig) if config is not None else FitConfig()
    if head is not None:
        names = parse_heads(head)
        if len(names) != 1:
            raise AggregateError(f"--head: `cellbag fit` trains one head, got {head!r}")
        head = names[0]
    head = head or base.head
    if head is None:
        raise typer.BadParameter("name the head to train", param_hint="--head")
    params = {**base.params, **_head_params(sets, [head])[head]} if sets else base.params
    cfg = override(
        base,
        store=store,
        out=None if out is None else str(out),
        head=head,
        encoder=encoder,
        clinical=clinical,
        seed=seed,
        ensemble=ensemble,
        threshold=threshold,
        cv_run=None if cv_run is None else str(cv_run),
        calibrate=calibrate,
        params=params,
        holdout_finetuned=holdout_finetuned,
        threads=threads,
        jobs=jobs,
    )
    if cfg.store is None:
        raise typer.BadParameter("give STORE, or --config MODEL/config.yaml", param_hint="STORE")
    if cfg.out is None:
        raise typer.BadParameter("give the model folder", param_hint="--out")
    out, store = Path(cfg.out), cfg.store
    with progress_bar("models", enabled=not quiet, console=console) as bar:
        task = bar.add_task(f"fit {head}", total=None)
        model = fit_config(
            cfg, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    t = model.doc["threshold"]
    console.print(
        f"saved [bold]{out}[/]: {head} on {model.doc['n_train_patients']} patients, "
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
