"""A deployable model: one head (or a fold ensemble) trained on all training patients,
saved to MODEL_DIR with its clinical scaler(s) and an explicit decision threshold.

MODEL_DIR/model.json       head, params, encoder, threshold, calibration, members
MODEL_DIR/member<k>/       head.json + head.safetensors (+ lgbm_model.txt), clinical.json

A threshold chosen from data (``youden``, ``triage[:SENS]``) and a ``--calibrate`` map are
fitted on out-of-fold predictions of the training patients (a cv run's, the ensemble's, or
an inner 5-fold cv's) and applied to the model fitted on all of them: the way ``cv``
chooses them inside each training fold.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.aggregate.bags import BagSet, load_bags, open_store
from cellbag.aggregate.base import Bags, Head
from cellbag.aggregate.errors import AggregateError
from cellbag.core.io import safe_child
from cellbag.core.threads import default_threads, torch_threads
from cellbag.evaluate.run_folder import (
    RunFolderError,
    patient_scores,
    read_head,
    versions,
    write_csv,
    write_json,
)
from cellbag.evaluate.stats import (
    CALIBRATIONS,
    TRIAGE_SENSITIVITY,
    apply_calibrator,
    fit_calibrator,
    select_thresholds,
)

MODEL_FORMAT = "cellbag-model"
MODEL_VERSION = 1


@dataclass
class Member:
    head: Head
    scaler: Any  # ClinicalScaler or None


def _clinical(scaler: Any, patients: pd.DataFrame | None) -> np.ndarray | None:
    if scaler is None:
        return None
    if patients is None:
        raise AggregateError("this model uses clinical features: pass the patients table")
    return scaler.transform(patients)


def _fit_member(
    data: BagSet, idx: np.ndarray, head_name: str, clinical: bool, seed: int, params: dict
):
    from cellbag.aggregate.registry import make_head
    from cellbag.data import ClinicalScaler

    scaler = None
    c = None
    if clinical:
        scaler = ClinicalScaler().fit(data.patients.iloc[idx])
        c = scaler.transform(data.patients.iloc[idx])
    head = make_head(head_name, clinical=clinical, seed=seed, **params)
    head.fit(Bags([data.bags[i] for i in idx], c), data.labels[idx])
    return Member(head, scaler)


def _member_proba(m: Member, bags: list[np.ndarray], patients: pd.DataFrame | None) -> np.ndarray:
    """Probability of class 1 of one member (its own clinical scaler applied)."""
    return m.head.predict_proba(Bags(bags, _clinical(m.scaler, patients)))[:, 1]


class FittedModel:
    """A loaded MODEL_DIR: ``predict_proba``/``cell_weights`` on bags + patients table,
    ``predict_store`` on a store's split. What distillation reads as its teacher."""

    def __init__(self, folder: Path, doc: dict, members: list[Member]) -> None:
        self.folder = folder
        self.doc = doc
        self.members = members

    @property
    def head_name(self) -> str:
        return self.doc["head"]

    @property
    def encoder_id(self) -> str:
        return self.doc["encoder_id"]

    @property
    def threshold(self) -> float:
        return float(self.doc["threshold"]["value"])

    @property
    def triage_threshold(self) -> float | None:
        """The cut at the triage target sensitivity, when the model was fitted with one."""
        t = self.doc["threshold"].get("triage")
        return float(t["value"]) if isinstance(t, dict) else None

    @property
    def clinical(self) -> bool:
        return bool(self.doc["clinical"])

    @property
    def has_cell_weights(self) -> bool:
        return self.members[0].head.has_cell_weights

    def predict_proba(
        self, bags: list[np.ndarray], patients: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Mean probability of class 1 over the members (calibrated when fitted so)."""
        ps = [_member_proba(m, bags, patients) for m in self.members]
        return apply_calibrator(self.doc.get("calibration"), np.mean(ps, axis=0))

    def cell_weights(
        self, bags: list[np.ndarray], patients: pd.DataFrame | None = None
    ) -> list[np.ndarray]:
        """Per-cell attention (mean over members; each bag's weights sum to 1)."""
        ws = [m.head.cell_weights(bags) for m in self.members]  # image-only
        return [np.mean([w[i] for w in ws], axis=0) for i in range(len(bags))]

    def predict_store(
        self, store: Any, split: str = "test", threshold: float | None = None
    ) -> pd.DataFrame:
        """``patient_id, probability, predicted, threshold[, triage]`` for a store's split
        (``triage``: ``cytometry`` at or above the triage threshold, else ``spared``);
        patients without usable cells get probability NaN and the majority class of
        training (and ``cytometry``)."""
        data = load_bags(open_store(store), self.encoder_id, split=split)
        t = self.threshold if threshold is None else float(threshold)
        with torch_threads(default_threads()):
            p = self.predict_proba(data.bags, data.patients if self.clinical else None)
        df = pd.DataFrame({"patient_id": data.patient_ids, "probability": p})
        df["predicted"] = (df["probability"] >= t).astype(int)
        df["threshold"] = t
        triage = self.triage_threshold
        if triage is not None:
            df["triage"] = np.where(df["probability"] >= triage, "cytometry", "spared")
        if data.skipped:
            fallback = int(self.doc.get("train_prevalence", 0.0) >= 0.5)
            extra = pd.DataFrame(
                {"patient_id": data.skipped, "probability": np.nan, "predicted": fallback}
            )
            extra["threshold"] = t
            if triage is not None:
                extra["triage"] = "cytometry"
            df = pd.concat([df, extra], ignore_index=True)
        return df


def load_model(folder: str | Path) -> FittedModel:
    """Read a MODEL_DIR written by :func:`fit_model`."""
    from cellbag.data import ClinicalScaler

    folder = Path(folder)
    path = folder / "model.json"
    if not path.is_file():
        raise AggregateError(
            f"{folder}: not a model folder (no model.json); run `cellbag fit` first"
        )
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != MODEL_FORMAT:
            raise ValueError("not a cellbag model")
        members = []
        for name in doc["members"]:
            # names from the folder's own json: plain sub-folders of it, never a path out
            member = safe_child(folder, name, error=AggregateError, what="member")
            head = Head.load(member)
            cpath = member / "clinical.json"
            scaler = (
                ClinicalScaler.from_dict(json.loads(cpath.read_text())) if cpath.is_file() else None
            )
            members.append(Member(head, scaler))
    except AggregateError:  # a member's own one-line error (a ValueError too)
        raise
    except (OSError, ValueError, KeyError) as e:
        raise AggregateError(f"{path}: unreadable model ({e})") from None
    return FittedModel(folder, doc, members)


def parse_threshold(spec: str | float) -> tuple[str, float]:
    """``("fixed", p)``, ``("youden", nan)`` or ``("triage", target sensitivity)`` from
    ``0.5``, ``youden``, ``triage`` or ``triage:0.9``."""
    text = str(spec).strip().lower()
    if text == "youden":
        return "youden", float("nan")
    if text == "triage" or text.startswith("triage:"):
        raw = text.partition(":")[2] or str(TRIAGE_SENSITIVITY)
        try:
            target = float(raw)
        except ValueError:
            target = -1.0
        if not 0.0 < target <= 1.0:
            raise AggregateError(f"--threshold {spec}: the target sensitivity must be in (0, 1]")
        return "triage", target
    try:
        value = float(text)
    except ValueError:
        raise AggregateError(
            f"--threshold must be a number, 'youden' or 'triage[:SENSITIVITY]', not {spec!r}"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise AggregateError(f"--threshold {value} is not a probability in [0, 1]")
    return "fixed", value


def _oof_from_run(
    cv_run: Path, head_name: str, clinical: bool, data: BagSet
) -> tuple[np.ndarray, str]:
    """The cv run's mean out-of-fold probability of each training patient (data order)."""
    head_dir = Path(cv_run) / head_name
    try:
        res = read_head(head_dir, attention=False)
    except RunFolderError as e:
        raise AggregateError(
            f"{e}; run `cellbag cv ... --head {head_name} --out {cv_run}`"
        ) from None
    key = res.config
    if key and (key.get("clinical") != clinical or key.get("encoder_id") != data.encoder_id):
        raise AggregateError(
            f"{head_dir / 'config.json'}: that cv run used clinical={key.get('clinical')}, "
            f"encoder {key.get('encoder_id')}; this fit uses clinical={clinical}, encoder "
            f"{data.encoder_id}"
        )
    if key.get("calibrate"):
        raise AggregateError(
            f"{head_dir}: that cv run was calibrated; fit with --calibrate and without --cv-run"
        )
    probs = patient_scores(res.oof)
    missing = [p for p in data.patient_ids if p not in probs.index]
    if missing:
        raise AggregateError(
            f"{head_dir / 'oof_predictions.csv'}: training patient {missing[0]} has no "
            f"out-of-fold prediction ({len(missing)} missing; was the run made from this store?)"
        )
    return probs.loc[data.patient_ids].to_numpy(dtype=np.float64), str(
        head_dir / "oof_predictions.csv"
    )


@dataclass(frozen=True)
class MemberFit:
    """One fit of a model: a member on ``train`` rows (kept when ``keep``), predicting the
    ``predict`` rows (out-of-fold probabilities), with its own seed."""

    head: str
    train: np.ndarray
    predict: np.ndarray | None
    clinical: bool
    seed: int
    params: dict
    keep: bool


def _run_member(data: BagSet, task: MemberFit) -> tuple[Member | None, np.ndarray | None]:
    m = _fit_member(data, task.train, task.head, task.clinical, task.seed, task.params)
    proba = None
    if task.predict is not None:
        pat = data.patients.iloc[task.predict] if task.clinical else None
        proba = _member_proba(m, [data.bags[i] for i in task.predict], pat)
    return (m if task.keep else None), proba


def _fold_fits(
    data: BagSet, head: str, clinical: bool, seed: int, params: dict, folds: int, keep: bool
) -> list[MemberFit]:
    """One fit per stratified fold (``random_state=seed``; member seeds ``seed + k``)."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [
        MemberFit(head, tr, te, clinical, seed + k, params, keep)
        for k, (tr, te) in enumerate(skf.split(np.zeros(len(data)), data.labels))
    ]


def _oof(data: BagSet, tasks: list[MemberFit], results: list) -> np.ndarray:
    """Out-of-fold probabilities of every training patient from per-fold fits."""
    oof = np.full(len(data), np.nan)
    for task, (_, proba) in zip(tasks, results, strict=True):
        oof[task.predict] = proba
    return oof


def _choose_threshold(
    spec: str | float,
    calibrate: str | None,
    oof_source: Any,
) -> tuple[dict, dict | None]:
    """The threshold document and the calibrator of a model. ``oof_source()`` returns
    ``(labels, out-of-fold probabilities, where they come from)``, called only when a
    choice is made from data."""
    method, value = parse_threshold(spec)
    if calibrate is not None and calibrate not in CALIBRATIONS:
        raise AggregateError(
            f"--calibrate must be one of {', '.join(CALIBRATIONS)}, not {calibrate!r}"
        )
    if method == "fixed" and calibrate is None:
        return {"value": value, "method": "fixed", "source": "given"}, None
    y, oof, source = oof_source()
    cal = fit_calibrator(calibrate, y, oof) if calibrate else None
    p = apply_calibrator(cal, oof)
    target = value if method == "triage" else TRIAGE_SENSITIVITY
    cut = select_thresholds([str(i) for i in range(len(y))], y, p, target)
    doc: dict[str, Any] = {
        "value": value if method == "fixed" else cut[method],
        "method": method,
        "source": f"out-of-fold predictions of the training patients ({source})",
        "youden": cut["youden"],
        "triage": {"value": cut["triage"], "target_sensitivity": target},
    }
    if method == "triage":
        doc["target_sensitivity"] = target
    return doc, cal


def fit_model(
    store: Any,
    head: str | None = None,
    out: str | Path | None = None,
    encoder_id: str | None = None,
    clinical: bool = True,
    seed: int = 0,
    ensemble: int = 0,
    threshold: str | float = 0.5,
    cv_run: str | Path | None = None,
    params: dict | None = None,
    threads: int | None = None,
    calibrate: str | None = None,
    holdout_finetuned: bool = False,
    progress: Any = None,
    jobs: int | None = None,
) -> FittedModel:
    """Train ``head`` on every training patient (or an ``ensemble``-fold ensemble whose
    members each leave one fold out) and write MODEL_DIR (with its ``config.yaml``).

    ``threshold``: a number, ``youden`` or ``triage[:SENSITIVITY]`` (default target 0.95);
    ``calibrate``: ``sigmoid`` or ``isotonic``. Both are chosen from out-of-fold
    predictions of the training patients: ``cv_run``'s for this head when given, else the
    ensemble's, else an inner 5-fold cv's. An encoder fine-tuned on these patients' labels
    is refused for such a choice (``holdout_finetuned`` leaves those patients out).
    ``jobs``: worker processes for the independent fits (members, inner folds; default:
    every core), the same model for any number. ``store`` may be a :class:`FitConfig`
    holding every setting. ``progress(done, total)`` is called after each model fitted."""
    from cellbag.evaluate.config import FitConfig

    if isinstance(store, FitConfig):
        cfg = store
    else:
        cfg = FitConfig(
            store=store if isinstance(store, str | Path) else str(store.path),
            out=out,
            head=head,
            encoder=encoder_id,
            clinical=clinical,
            seed=seed,
            ensemble=ensemble,
            threshold=threshold,
            cv_run=cv_run,
            calibrate=calibrate,
            params=params or {},
            holdout_finetuned=holdout_finetuned,
            threads=threads,
            jobs=jobs,
        )
    return fit_config(cfg, progress=progress)


def fit_config(cfg: Any, progress: Any = None) -> FittedModel:
    """Fit the model a :class:`~cellbag.evaluate.config.FitConfig` describes."""
    from cellbag.evaluate.config import write_config
    from cellbag.evaluate.leaks import guard
    from cellbag.evaluate.parallel import StoreBags, run_grid

    if cfg.store is None or cfg.out is None or not cfg.head:
        raise AggregateError("a fit needs a store, a head and a model folder (--out)")
    head, seed, params, ensemble = cfg.head, cfg.seed, dict(cfg.params), cfg.ensemble
    method = parse_threshold(cfg.threshold)[0]
    st = open_store(cfg.store)
    data = load_bags(st, cfg.encoder, split="train")
    if method != "fixed" or cfg.calibrate:
        data = guard(data, st.encoder_info(data.encoder_id), cfg.holdout_finetuned, "cellbag fit")
    clinical = cfg.clinical and data.has_clinical
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out)
    t0 = time.perf_counter()
    chosen = method != "fixed" or cfg.calibrate
    is_ensemble = bool(ensemble and ensemble >= 2)
    if is_ensemble:
        model_fits = _fold_fits(data, head, clinical, seed, params, ensemble, keep=True)
    else:
        all_idx = np.arange(len(data))
        model_fits = [MemberFit(head, all_idx, None, clinical, seed, params, keep=True)]
    inner_fits = []
    if chosen and cfg.cv_run is None and not is_ensemble:  # an inner 5-fold cv's predictions
        inner_fits = _fold_fits(data, head, clinical, seed + 1, params, 5, keep=False)
        # member seeds of the inner cv: seed + 100 + k
        inner_fits = [dataclasses.replace(f, seed=seed + 100 + k) for k, f in enumerate(inner_fits)]
    fits = model_fits + inner_fits
    count = iter(range(1, len(fits) + 1))
    source = StoreBags(str(st.path), data.encoder_id, "train", tuple(data.patient_ids), data.digest)
    results = run_grid(
        _run_member,
        data,
        fits,
        jobs=cfg.jobs,
        threads=cfg.threads or default_threads(),
        on_done=(lambda i, r: progress(next(count), len(fits))) if progress else None,
        source=source,
    )
    members = [m for m, _ in results[: len(model_fits)]]

    def oof_source() -> tuple[np.ndarray, np.ndarray, str]:
        if cfg.cv_run is not None:
            p, where = _oof_from_run(Path(cfg.cv_run), head, clinical, data)
            return data.labels, p, f"cv run {where}"
        if is_ensemble:
            return (
                data.labels,
                _oof(data, model_fits, results[: len(model_fits)]),
                f"the {ensemble}-fold ensemble",
            )
        return (
            data.labels,
            _oof(data, inner_fits, results[len(model_fits) :]),
            "inner 5-fold cv on the training patients",
        )

    thr_doc, calibration = _choose_threshold(cfg.threshold, cfg.calibrate, oof_source)
    names = []
    for k, m in enumerate(members):
        name = f"member{k}"
        m.head.save(out / name)
        if m.scaler is not None:
            write_json(out / name / "clinical.json", m.scaler.to_dict())
        names.append(name)
    info = {}
    try:
        info = json.loads(json.dumps(st.encoder_info(data.encoder_id), default=str))
    except Exception:  # pragma: no cover
        pass
    doc = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "head": head,
        "params": members[0].head.get_params(deep=False),
        "clinical": clinical,
        "encoder_id": data.encoder_id,
        "encoder_info": info,
        "store": str(st.path),
        "embeddings_digest": data.digest,
        "members": names,
        "ensemble": int(ensemble or 0),
        "threshold": thr_doc,
        "calibration": calibration,
        "n_train_patients": len(data),
        "train_prevalence": float(np.mean(data.labels)),
        "seconds": time.perf_counter() - t0,
        "versions": versions(),
    }
    write_json(out / "model.json", doc)
    return FittedModel(out, doc, members)


def write_submission(pred: pd.DataFrame, out: str | Path) -> tuple[Path, Path]:
    """``out``: ``Id,Predicted`` (0/1); ``<out stem>_proba.csv``: ``Id,Probability,
    Predicted,Threshold[,Triage]`` (Triage: ``cytometry`` or ``spared``, when the model has
    a triage threshold)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sub = pd.DataFrame(
        {"Id": pred["patient_id"].astype(str), "Predicted": pred["predicted"].astype(int)}
    )
    proba = pd.DataFrame(
        {
            "Id": pred["patient_id"].astype(str),
            "Probability": pred["probability"].astype(float),
            "Predicted": pred["predicted"].astype(int),
        }
    )
    if "threshold" in pred:
        proba["Threshold"] = pred["threshold"].astype(float)
    if "triage" in pred:
        proba["Triage"] = pred["triage"].astype(str)
    proba_path = out.with_name(out.stem + "_proba.csv")
    for df, path in ((sub, out), (proba, proba_path)):
        write_csv(path, df)
    return out, proba_path
