"""A cohort summary: counts per split and label, class balance, bag sizes, clinical ranges,
problems, and what would stop or weaken training (unlabeled patients, missing clinical data,
a class too small for cross-validation)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellbag.data.cohort import Cohort, Problem
from cellbag.data.labels import CLASS_NAMES, UNKNOWN


@dataclass(frozen=True)
class Summary:
    counts: pd.DataFrame  # split × label (reactive, tumoral, unknown) patient counts
    bag_sizes: dict[str, tuple[int, float, int]]  # split -> (min, median, max) cells per patient
    clinical: pd.DataFrame  # variable -> min, median, max, missing
    problems: tuple[Problem, ...]
    balance: str = (
        ""  # e.g. "30 reactive / 10 tumoral (25% tumoral)" over labelled training patients
    )
    findings: tuple[str, ...] = ()  # unlabeled patients, missing clinical data, class balance


#: folds of the default cross-validation: each class needs at least this many patients
DEFAULT_FOLDS = 5


def _ids(ids: pd.Series, n: int = 5) -> str:
    ids = [str(x) for x in ids]
    return ", ".join(ids[:n]) + (f" ... (+{len(ids) - n})" if len(ids) > n else "")


def readiness(p: pd.DataFrame) -> tuple[str, list[str]]:
    """Class balance of the labelled training patients, and what would stop or weaken
    training: unlabeled patients, patients without clinical data, a class too small."""
    findings = []
    train = p[p["split"] == "train"]
    unlabeled = train[train["label"].isna()]
    labelled = train[train["label"].notna()]
    if len(train) and len(unlabeled) == len(train):
        findings.append(
            f"none of the {len(train)} training patients has a label: cv and fit need labels "
            "(a LABEL column, or `label` in the manifest's clinical CSV)"
        )
    elif len(unlabeled):
        findings.append(
            f"{len(unlabeled)} of {len(train)} training patients have no label and are left out "
            f"of cv and fit: {_ids(unlabeled['patient_id'])}"
        )
    clin = p[["dob", "lymph_count", "gender"]]
    none = p[clin.isna().all(axis=1)]
    if len(p) and len(none) == len(p):
        findings.append(
            "no clinical data for any patient (no dob, gender or lymph_count values): cv, fit "
            "and distill will run image-only; a manifest reads them from its clinical CSV "
            "(--clinical-csv, or clinical.csv beside it)"
        )
    elif len(none):
        findings.append(
            f"{len(none)} patient(s) have no clinical data at all (their values are imputed): "
            f"{_ids(none['patient_id'])}"
        )
    n0 = int((labelled["label"] == 0).sum())
    n1 = int((labelled["label"] == 1).sum())
    balance = ""
    if n0 + n1:
        r, t = CLASS_NAMES[0], CLASS_NAMES[1]
        balance = f"{n0} {r} / {n1} {t} ({100 * n1 / (n0 + n1):.0f}% {t})"
        small = min(n0, n1)
        if small < DEFAULT_FOLDS:
            which = CLASS_NAMES[0] if n0 <= n1 else CLASS_NAMES[1]
            findings.append(
                f"only {small} {which} training patient(s): {DEFAULT_FOLDS}-fold cross-validation "
                f"needs at least {DEFAULT_FOLDS} of each class (use --folds {max(2, small)})"
                if small >= 2
                else f"only {small} {which} training patient(s): cross-validation needs at least "
                "2 of each class"
            )
        elif max(n0, n1) > 3 * small:
            findings.append(
                f"classes are imbalanced ({balance}): heads weight the classes, and balanced "
                "accuracy is the metric to read"
            )
    return balance, findings


_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>|\s*'[^']*'(?=$)")


def image_error_text(error: BaseException, path: str | os.PathLike | None = None) -> str:
    """Why an image could not be read, as human text (no object reprs, no paths, one line)."""
    if path is not None and Path(path).is_symlink() and not Path(path).exists():
        return f"broken symbolic link to {os.readlink(path)}"
    if isinstance(error, OSError) and error.strerror and not str(error).startswith("cannot"):
        return f"cannot read file: {error.strerror}"
    text = str(error).splitlines()[0] if str(error) else ""
    if path is not None:
        text = text.replace(str(path), "").replace(repr(str(path)), "")
    text = _REPR.sub("", text).strip().rstrip(":")
    if text.startswith("cannot identify image file"):
        return "not an image PIL can read (unknown format or corrupt header)"
    return text or type(error).__name__


def check_images(cohort: Cohort) -> list[Problem]:
    """Open every image (header + decode); list the unreadable ones."""
    from PIL import Image

    found = []
    for pid, path in cohort.cells[["patient_id", "path"]].itertuples(index=False):
        try:
            with Image.open(path) as im:
                im.load()
        except Exception as e:  # noqa: BLE001 - any decode failure is a finding
            found.append(
                Problem("unreadable-image", path, pid, f"unreadable: {image_error_text(e, path)}")
            )
    return found


def _one_per_file(problems: tuple[Problem, ...]) -> tuple[Problem, ...]:
    """Problems with the image checks' repeat of one already found (same kind and file,
    e.g. a broken symbolic link found when reading the cohort and when opening it) dropped."""
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        key = (p.kind, p.file) if p.kind == "unreadable-image" else (p.kind, str(id(p)))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return tuple(out)


def summarize(cohort: Cohort, extra_problems: list[Problem] | None = None) -> Summary:
    """Summary of a cohort (what ``cellbag inspect`` prints)."""
    p = cohort.patients
    lab = p["label"].map(CLASS_NAMES).astype(object).where(p["label"].notna(), UNKNOWN)
    counts = pd.crosstab(p["split"], lab).reindex(
        columns=[CLASS_NAMES[0], CLASS_NAMES[1], UNKNOWN], fill_value=0
    )
    counts = counts.reindex([x for x in ("train", "test") if x in counts.index])
    counts["total"] = counts.sum(axis=1)
    sizes = cohort.cells.groupby("patient_id").size()
    bag_sizes = {}
    for split in counts.index:
        s = sizes.reindex(p.loc[p["split"] == split, "patient_id"]).dropna()
        if len(s):
            bag_sizes[split] = (int(s.min()), float(s.median()), int(s.max()))
    from cellbag.data.clinical import DEFAULT_REFERENCE_DATE

    age = (pd.Timestamp(DEFAULT_REFERENCE_DATE) - pd.to_datetime(p["dob"])).dt.days / 365.25
    rows = []
    for name, v in (
        (f"age (years at {DEFAULT_REFERENCE_DATE})", age),
        ("lymph_count (x10^9/L)", p["lymph_count"]),
    ):
        v = pd.to_numeric(v, errors="coerce")
        ok = v.dropna()
        rows.append(
            {
                "variable": name,
                "min": float(ok.min()) if len(ok) else np.nan,
                "median": float(ok.median()) if len(ok) else np.nan,
                "max": float(ok.max()) if len(ok) else np.nan,
                "missing": int(v.isna().sum()),
            }
        )
    g = p["gender"].fillna("unknown").value_counts()
    rows.append(
        {
            "variable": "gender M/F/unknown",
            "min": np.nan,
            "median": np.nan,
            "max": np.nan,
            "missing": int(g.get("unknown", 0)),
            "note": f"{g.get('M', 0)}/{g.get('F', 0)}/{g.get('unknown', 0)}",
        }
    )
    balance, findings = readiness(p)
    from cellbag.data.clinical import dob_after

    findings = dob_after(p) + findings
    return Summary(
        counts=counts,
        bag_sizes=bag_sizes,
        clinical=pd.DataFrame(rows),
        problems=_one_per_file(tuple(cohort.problems) + tuple(extra_problems or ())),
        balance=balance,
        findings=tuple(findings),
    )
