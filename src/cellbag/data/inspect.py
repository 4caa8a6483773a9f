"""A cohort summary: counts per split and label, bag sizes, clinical ranges, problems."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellbag.data.cohort import Cohort, Problem


@dataclass(frozen=True)
class Summary:
    counts: pd.DataFrame  # split × label (reactive, tumoral, unknown) patient counts
    bag_sizes: dict[str, tuple[int, float, int]]  # split -> (min, median, max) cells per patient
    clinical: pd.DataFrame  # variable -> min, median, max, missing
    problems: tuple[Problem, ...]


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


def summarize(cohort: Cohort, extra_problems: list[Problem] | None = None) -> Summary:
    """Summary of a cohort (what ``cellbag inspect`` prints)."""
    p = cohort.patients
    lab = (
        p["label"]
        .map({1: "tumoral", 0: "reactive"})
        .astype(object)
        .where(p["label"].notna(), "unknown")
    )
    counts = pd.crosstab(p["split"], lab).reindex(
        columns=["reactive", "tumoral", "unknown"], fill_value=0
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
    return Summary(
        counts=counts,
        bag_sizes=bag_sizes,
        clinical=pd.DataFrame(rows),
        problems=tuple(cohort.problems) + tuple(extra_problems or ()),
    )
