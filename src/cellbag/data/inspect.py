"""A cohort summary: counts per split and label, bag sizes, clinical ranges, problems."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cellbag.data.cohort import Cohort, Problem


@dataclass(frozen=True)
class Summary:
    counts: pd.DataFrame  # split × label (reactive, tumoral, unknown) patient counts
    bag_sizes: dict[str, tuple[int, float, int]]  # split -> (min, median, max) cells per patient
    clinical: pd.DataFrame  # variable -> min, median, max, missing
    problems: tuple[Problem, ...]


def check_images(cohort: Cohort) -> list[Problem]:
    """Open every image (header + decode); list the unreadable ones."""
    from PIL import Image

    found = []
    for pid, path in cohort.cells[["patient_id", "path"]].itertuples(index=False):
        try:
            with Image.open(path) as im:
                im.load()
        except Exception as e:  # noqa: BLE001 - any decode failure is a finding
            found.append(Problem("unreadable-image", path, pid, f"{type(e).__name__}: {e}"))
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
