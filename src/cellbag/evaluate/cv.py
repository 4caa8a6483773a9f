"""Honest cross-validation of heads over cached bags.

Patient-level, stratified, repeated k-fold over the training split only; splits written
once to ``RUN_DIR/splits.json`` and reused; every fitted transform (clinical scaler, input
standardisation/PCA, k-means) is fitted inside the training fold. Per head,
``RUN_DIR/<head>/`` gets ``metrics.json``, ``oof_predictions.csv``, ``attention.csv``
(attention heads), ``roc.png`` and ``config.json``; finished folds are kept in
``RUN_DIR/<head>/folds/`` so an interrupted run resumes where it stopped. The layout and
the names of every figure: :mod:`cellbag.evaluate.run_folder`.

Thresholds are nested: inside each outer training fold an inner ``inner_folds``-fold cv
gives out-of-fold predictions of the training patients only, from which Youden's cut and
the triage cut (target sensitivity) are chosen, and a ``--calibrate`` map is fitted; both
are then applied to the outer test fold. With 3 inner folds a run fits 4 heads per outer
fold instead of 1 (``--inner-folds 0`` skips them, and the Youden/triage figures); a head
whose own training already predicts each training patient from inner models that did not
see it (``train_oof_proba_``) gives those predictions instead, without refitting.

The run is a grid of independent fits (heads x repeats x folds, each with its inner folds):
they run in ``jobs`` worker processes or on a Dask ``cluster``
(:mod:`cellbag.evaluate.parallel`), each with its fold's own seed and one thread, and
every output is computed from the fold records in split order, so the numbers are the same
for any number of workers. Modules: the fold cache (:mod:`~cellbag.evaluate.fold_cache`),
fitting (:mod:`~cellbag.evaluate.fitting`), outputs (:mod:`~cellbag.evaluate.outputs`);
settings: :class:`~cellbag.evaluate.config.CVConfig`, written as ``RUN_DIR/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.aggregate.bags import BagSet, load_bags, open_store
from cellbag.aggregate.registry import make_head, parse_heads
from cellbag.evaluate.config import INNER_FOLDS, CVConfig, write_config
from cellbag.evaluate.errors import EvaluateError
from cellbag.evaluate.fitting import FoldTask, fit_fold, fold_groups, run_folds
from cellbag.evaluate.fold_cache import FoldCache, fold_key
from cellbag.evaluate.outputs import add_earlier_heads, write_head_outputs
from cellbag.evaluate.parallel import StoreBags, run_grid
from cellbag.evaluate.run_folder import write_summary
from cellbag.evaluate.splits import check_splits, load_or_make_splits
from cellbag.evaluate.stats import CALIBRATIONS, RESAMPLES, TRIAGE_SENSITIVITY

__all__ = ["CVConfig", "INNER_FOLDS", "cross_validate", "fit_fold", "run_cv", "run_config"]


def _check_options(inner_folds: int, triage_sensitivity: float, calibrate: str | None) -> None:
    if inner_folds == 1 or inner_folds < 0:
        raise EvaluateError(f"--inner-folds must be 0 (off) or >= 2, got {inner_folds}")
    if not 0.0 < triage_sensitivity <= 1.0:
        raise EvaluateError(f"--triage-sensitivity must be in (0, 1], got {triage_sensitivity}")
    if calibrate is not None and calibrate not in CALIBRATIONS:
        raise EvaluateError(
            f"--calibrate must be one of {', '.join(CALIBRATIONS)}, not {calibrate!r}"
        )
    if calibrate is not None and inner_folds == 0:
        raise EvaluateError("--calibrate needs inner folds (it is fitted inside the training fold)")


def _before_any_fit(data: BagSet, names: list[str], clinical: bool, cfg: CVConfig) -> None:
    """Checks that must pass before the first fit of a run, each raising one line: the
    labelled split here; the store's stale-image check (``cfg.store``) and each head's
    preconditions on these bags (``names``, ``clinical``) belong here too."""
    if data.labels is None:
        raise EvaluateError(f"{data.source}: cross-validation needs the labelled training split")
    from cellbag.data.clinical import check_clinical
    from cellbag.store.sync import require_images_in_sync

    if cfg.store is not None and not cfg.allow_stale:
        require_images_in_sync(open_store(cfg.store))  # the same cheap stat check as featurize
    if clinical:
        check_clinical(data.patients)  # every head's clinical features, before any is fitted


def _plan(data: BagSet, cfg: CVConfig, console: Any) -> tuple[list[str], bool]:
    """The heads to run (the clinical baseline added) and whether clinical features are used."""
    names = parse_heads(cfg.heads)
    clinical = cfg.clinical
    if clinical and not data.has_clinical:
        clinical = False
        console.print(
            "[yellow]note:[/] no clinical data in this store: running image-only (--no-clinical)"
        )
    if clinical and "clinical" not in names:
        names.append("clinical")  # the clinical-only baseline, beside every fused head
    if not clinical and "clinical" in names:
        raise EvaluateError("head 'clinical' needs clinical data; drop it or --no-clinical")
    return names, clinical


def cross_validate(
    data: BagSet,
    heads: str | Sequence[str],
    out: str | Path,
    clinical: bool = True,
    folds: int = 5,
    repeats: int = 3,
    seed: int = 0,
    head_params: dict[str, dict] | None = None,
    threads: int | None = None,
    console: Any = None,
    quiet: bool = False,
    extra_config: dict | None = None,
    inner_folds: int = INNER_FOLDS,
    triage_sensitivity: float = TRIAGE_SENSITIVITY,
    calibrate: str | None = None,
    resamples: int = RESAMPLES,
    cell_truth: str | Path | None = None,
    jobs: int | None = 1,
    cluster: str | None = None,
) -> pd.DataFrame:
    """Cross-validate heads on in-memory bags (the training split); see :func:`run_cv`.
    In-memory bags travel to worker processes with the tasks; ``jobs`` defaults to 1 here."""
    cfg = CVConfig(
        out=str(out),
        heads=heads,
        clinical=clinical,
        folds=folds,
        repeats=repeats,
        seed=seed,
        inner_folds=inner_folds,
        triage_sensitivity=triage_sensitivity,
        calibrate=calibrate,
        resamples=resamples,
        head_params=head_params or {},
        cell_truth=None if cell_truth is None else str(cell_truth),
        threads=threads,
        jobs=jobs,
        cluster=cluster,
    )
    return evaluate_bags(data, cfg, console=console, quiet=quiet, extra_config=extra_config)


def evaluate_bags(
    data: BagSet,
    cfg: CVConfig,
    source: StoreBags | None = None,
    console: Any = None,
    quiet: bool = False,
    extra_config: dict | None = None,
) -> pd.DataFrame:
    """The run of ``cfg`` on ``data`` (``source``: how workers get the same bags)."""
    from rich.console import Console

    from cellbag.core.progress import progress_bar

    console = console or Console(quiet=quiet)
    _check_options(cfg.inner_folds, cfg.triage_sensitivity, cfg.calibrate)
    names, clinical = _plan(data, cfg, console)
    truth = None
    if cfg.cell_truth is not None:
        from cellbag.evaluate.celltruth import read_cell_truth

        truth = read_cell_truth(cfg.cell_truth)  # a bad file stops before any work
    _before_any_fit(data, names, clinical, cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out)
    if data.skipped:
        console.print(
            f"[yellow]note:[/] skipped patients without usable cells: {', '.join(data.skipped)}"
        )
    splits = load_or_make_splits(
        out / "splits.json", data.patient_ids, data.labels, cfg.folds, cfg.repeats, cfg.seed
    )
    check_splits(splits)
    index = {p: i for i, p in enumerate(data.patient_ids)}

    # the fold cache: what is done already, and the grid of fits still to run
    caches: dict[str, FoldCache] = {}
    records: dict[str, list[dict | None]] = {}
    todo: list[tuple[str, int, FoldTask]] = []
    members: dict[str, tuple[str, ...]] = {}
    for name in names:
        params = dict(cfg.head_params.get(name, {}))
        head = make_head(name, clinical=clinical, seed=cfg.seed, **params)
        settings = head.settings()
        members[name] = tuple(getattr(head, "members", ()))
        cache = caches[name] = FoldCache(out / name, fold_key(name, settings, cfg, clinical, data))
        note = cache.open()
        if note:
            console.print(f"[yellow]note:[/] {note}")
        records[name] = []
        for k, s in enumerate(splits):
            r, f = s["repeat"], s["fold"]
            rec = cache.get(r, f)
            records[name].append(rec)
            if rec is None:
                task = FoldTask(
                    head=name,
                    repeat=r,
                    fold=f,
                    train=np.asarray([index[p] for p in s["train"]]),
                    test=np.asarray([index[p] for p in s["test"]]),
                    seed=cfg.seed + 1000 * r + f,
                    clinical=clinical,
                    inner_folds=cfg.inner_folds,
                    params=params,
                )
                todo.append((name, k, task))

    # fitting: every missing fold, on the workers; each kept as soon as it is done
    total = len(names) * len(splits)
    with progress_bar("fits", enabled=not quiet, console=console) as progress:
        bar = progress.add_task(f"cv {','.join(names)}", total=total, completed=total - len(todo))

        def done(g: int, recs: list[dict]) -> None:
            for i, rec in zip(groups[g], recs, strict=True):
                name, k, _ = todo[i]
                caches[name].put(rec)
                records[name][k] = rec
                progress.advance(bar)

        # an ensemble fits in one worker with its members' folds, sharing their models
        tasks = [t for _, _, t in todo]
        groups = fold_groups(tasks, members)
        run_grid(
            run_folds,
            data,
            [[tasks[i] for i in g] for g in groups],
            jobs=cfg.jobs,
            cluster=cfg.cluster,
            threads=cfg.threads,
            on_done=done,
            source=source,
        )

    # outputs: from the records in split order
    results: dict[str, dict] = {}
    extra = dict(extra_config or {}, triage_sensitivity=cfg.triage_sensitivity)
    extra["calibrate"] = cfg.calibrate
    for name in names:
        recs = records[name]
        seconds = float(sum(r.get("seconds", 0.0) + r.get("inner_seconds", 0.0) for r in recs))
        oof = write_head_outputs(
            data,
            out / name,
            name,
            recs,
            caches[name].key,
            seconds,
            extra,
            cfg.triage_sensitivity,
            cfg.calibrate,
        )
        info = {
            "clinical": clinical,
            "folds": cfg.folds,
            "repeats": cfg.repeats,
            "inner_folds": cfg.inner_folds,
            "seed": cfg.seed,
            "triage_sensitivity": cfg.triage_sensitivity if cfg.inner_folds else None,
            "calibrate": cfg.calibrate,
            "threshold_method": "nested: chosen in each training fold from out-of-fold "
            "predictions of its training patients only (inner folds)",
        }
        if truth is not None:
            from cellbag.evaluate.celltruth import head_instance_auc

            labels = dict(zip(data.patient_ids, data.labels.tolist(), strict=True))
            res_truth = head_instance_auc(out / name, truth, labels)
            if res_truth is not None:
                info["cell_truth"] = res_truth  # -> metrics.json
        results[name] = {"oof": oof, "info": info, "seconds": seconds}
    add_earlier_heads(out, results, data)
    table = write_summary(out, results, cfg.seed, cfg.resamples)
    if not quiet:
        from cellbag.evaluate.display import comparison_table, paired_lines

        console.print(comparison_table(table, title=f"cross-validation · {out}"))
        for line in paired_lines(out):
            console.print(line)
    return table


def run_config(cfg: CVConfig, console: Any = None, quiet: bool = False) -> pd.DataFrame:
    """Run a :class:`CVConfig` (what ``cellbag cv`` and ``cellbag cv --config`` call)."""
    from cellbag.evaluate.leaks import guard, transductive

    if cfg.store is None or cfg.out is None:
        raise EvaluateError("a cv run needs a store and a run folder (--out)")
    _check_options(cfg.inner_folds, cfg.triage_sensitivity, cfg.calibrate)  # before any reading
    st = open_store(cfg.store)
    data = load_bags(st, cfg.encoder, split="train")
    info = {}
    try:
        info = st.encoder_info(data.encoder_id)
    except Exception:  # pragma: no cover - informative only
        pass
    data = guard(data, info, cfg.holdout_finetuned, "cellbag cv")
    extra = {"store": str(st.path), "encoder_info": json.loads(json.dumps(info, default=str))}
    marked = transductive(list(data.patient_ids), info)
    if marked is not None:
        extra["transductive"] = marked
        if console is not None:
            console.print(f"[yellow]warning:[/] {marked['note']}", highlight=False)
    source = StoreBags(str(st.path), data.encoder_id, "train", tuple(data.patient_ids), data.digest)
    cfg = dataclasses.replace(cfg, store=str(st.path))
    return evaluate_bags(data, cfg, source, console=console, quiet=quiet, extra_config=extra)


def run_cv(
    store: Any,
    encoder_id: str | None = None,
    heads: str | Sequence[str] = ("meanpool", "abmil", "transformer", "lgbm"),
    out: str | Path = "runs/cv",
    clinical: bool = True,
    folds: int = 5,
    repeats: int = 3,
    seed: int = 0,
    head_params: dict[str, dict] | None = None,
    threads: int | None = None,
    console: Any = None,
    quiet: bool = False,
    inner_folds: int = INNER_FOLDS,
    triage_sensitivity: float = TRIAGE_SENSITIVITY,
    calibrate: str | None = None,
    holdout_finetuned: bool = False,
    cell_truth: str | Path | None = None,
    jobs: int | None = None,
    cluster: str | None = None,
) -> pd.DataFrame:
    """Cross-validate heads on a store's training split; returns the comparison table (one
    row per head: each figure with its 95% bootstrap interval and fold sd, the paired
    difference to the best head, seconds) and prints it (rich) unless ``quiet``.
    ``store`` is a path/URL, an open ``Store`` or a :class:`CVConfig` (then it holds every
    setting); ``encoder_id`` may be omitted when the store holds one encoder. An encoder
    fine-tuned on some of these patients' labels is refused (``holdout_finetuned`` leaves
    those patients out instead). ``jobs``: worker processes (default: every core);
    ``cluster``: ``tcp://HOST:PORT`` or ``local:N`` (Dask); the numbers are the same."""
    if isinstance(store, CVConfig):
        return run_config(store, console=console, quiet=quiet)
    cfg = CVConfig(
        store=None if not isinstance(store, str | Path) else str(store),
        out=str(out),
        encoder=encoder_id,
        heads=heads,
        clinical=clinical,
        folds=folds,
        repeats=repeats,
        seed=seed,
        inner_folds=inner_folds,
        triage_sensitivity=triage_sensitivity,
        calibrate=calibrate,
        head_params=head_params or {},
        holdout_finetuned=holdout_finetuned,
        cell_truth=None if cell_truth is None else str(cell_truth),
        threads=threads,
        jobs=jobs,
        cluster=cluster,
    )
    if cfg.store is None:  # an open Store
        cfg.store = str(store.path)
    return run_config(cfg, console=console, quiet=quiet)
