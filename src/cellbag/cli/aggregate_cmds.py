"""Commands of stage 2: `cv`, `fit`, `predict` (aggregators over cached bags)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cellbag.cli.app import app, console
from cellbag.core.registry import declared_names

HEADS = ", ".join(declared_names("cellbag.aggregate.heads", "register_head"))
HEAD_HELP = f"Head(s), comma-separated: {HEADS}."
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


@app.command("cv")
def cv_cmd(
    store: str = typer.Argument(..., help="Feature store (folder or fsspec URL)."),
    encoder: str = typer.Option(
        None, "--encoder", "-e", help="Encoder id in the store (default: its only encoder)."
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
) -> None:
    """Patient-level, stratified, repeated k-fold cross-validation of heads on the training split."""
    from cellbag.aggregate.cv import _parse_heads, run_cv

    names = _parse_heads(head)
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
    )
    if not quiet:
        console.print(f"results in [bold]{out}[/] ({len(table)} head(s), comparison.csv)")


@app.command("fit")
def fit_cmd(
    store: str = typer.Argument(..., help="Feature store (folder or fsspec URL)."),
    encoder: str = typer.Option(
        None, "--encoder", "-e", help="Encoder id in the store (default: its only encoder)."
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
        help="Decision threshold: a probability, or 'youden' (from OOF predictions).",
    ),
    cv_run: Path = typer.Option(
        None,
        "--cv-run",
        help="A `cellbag cv` run folder whose OOF predictions give the Youden threshold.",
    ),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
    threads: int = typer.Option(
        None,
        "--threads",
        min=1,
        help="Torch threads (default 1: reproducible, and fastest for these small tensors).",
    ),
) -> None:
    """Train a head on all training patients (optionally a fold ensemble) and save it."""
    from cellbag.aggregate.cv import _parse_heads
    from cellbag.aggregate.errors import AggregateError
    from cellbag.aggregate.model import fit_model

    names = _parse_heads(head)
    if len(names) != 1:
        raise AggregateError(f"--head: `cellbag fit` trains one head, got {head!r}")
    with console.status(f"fitting {names[0]} ..."):
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
        )
    t = model.doc["threshold"]
    console.print(
        f"saved [bold]{out}[/]: {names[0]} on {model.doc['n_train_patients']} patients, "
        f"{len(model.members)} member(s), threshold {t['value']:.3f} ({t['method']})"
    )


@app.command("predict")
def predict_cmd(
    model_dir: Path = typer.Argument(..., help="Model folder written by `cellbag fit`."),
    store: str = typer.Argument(..., help="Feature store holding the model's encoder."),
    out: Path = typer.Option(..., "--out", "-o", help="Submission CSV (Id,Predicted)."),
    threshold: float = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Override the model's decision threshold."
    ),
    split: str = typer.Option("test", "--split", help="Patients to predict: test | train | all."),
) -> None:
    """Write `Id,Predicted` (0/1) for a split, and `<out>_proba.csv` with probabilities."""
    from cellbag.aggregate.model import load_model, write_submission

    model = load_model(model_dir)
    pred = model.predict_store(store, split=split, threshold=threshold)
    sub, proba = write_submission(pred, out)
    n_pos = int(pred["predicted"].sum())
    console.print(
        f"wrote [bold]{sub}[/] ({len(pred)} patients, {n_pos} predicted tumoral) and {proba}"
    )
