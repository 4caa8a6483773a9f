"""Per-cell explanations: what each head's gallery ranks cells by, and the cells of the
patients a fitted model predicts (``cellbag predict`` writes them beside its submission, so
``cellbag report --predictions`` can show test patients' galleries).

Every head explains itself with one method, ``cell_contributions(bags)`` (image-only):
attention heads give their attention (abmil) or CLS attention (transformer), maxpool the
softmax of its cell scores (each cell's share of the smooth maximum), meanpool its linear
head applied to each cell (the bag's image logit is their sum), lgbm the share of the
trees' gain carried by the cell's cluster, svm and ensemble the drop of the bag's log-odds
when the cell is left out (occlusion).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.report.errors import ReportError

#: how a gallery's caption and header read, per kind of cell score
KINDS: dict[str, dict[str, str]] = {
    "attention": {
        "top": "highest attention",
        "bottom": "lowest attention",
        "what": "each patient's cells ordered by their attention weight (abmil; the CLS "
        "token's attention for transformer); the caption is the weight relative to a uniform "
        "weight (×1 = 1/bag size)",
    },
    "logit": {
        "top": "pull most towards tumoral",
        "bottom": "pull most towards reactive",
        "what": "the head's linear classifier applied to each cell (the bag's image logit is "
        "the sum of its cells' terms); the caption is the cell's term, + towards tumoral, "
        "− towards reactive",
    },
    "argmax": {
        "top": "argmax cells, towards tumoral",
        "bottom": "argmax cells, towards reactive",
        "what": "the cells that hold the maximum of the pooled dimensions, scored by those "
        "dimensions' terms in the logit (cells holding no maximum score 0)",
    },
    "occlusion": {
        "top": "pull most towards tumoral when present",
        "bottom": "pull most towards reactive when present",
        "what": "how much the bag's log-odds drops when the cell is left out (svm, ensemble): "
        "+ the cell pushes towards tumoral, − towards reactive",
    },
    "cluster gain": {
        "top": "cells of the highest-gain clusters",
        "bottom": "cells of the lowest-gain clusters",
        "what": "the share of the trees' total gain carried by the fraction of the cell's "
        "cluster (k-means fitted in the training fold): the cell types the trees decide on",
    },
}


def kind_text(kind: str | None, which: str) -> str:
    """Header / explanation text of a kind of cell score (``top``, ``bottom``, ``what``)."""
    return KINDS.get(kind or "", {}).get(which, "per-cell score" if which == "what" else which)


def caption(kind: str | None, weight: float, n_cells: int) -> tuple[str, str]:
    """(short caption, hover title) of one cell's score."""
    if kind == "attention":
        rel = weight * n_cells
        return f"×{rel:.1f}", f"mean attention {weight:.4f} (×{rel:.2f} uniform)"
    if kind == "cluster gain":
        return f"gain {100 * weight:.0f}%", f"its cluster carries {100 * weight:.1f}% of the gain"
    return f"{weight:+.3f}", f"contribution to the logit {weight:+.4f} ({kind})"


def cells_path(submission: str | Path) -> Path:
    """``<stem>_cells.csv`` beside a submission CSV."""
    p = Path(submission)
    return p.with_name(p.stem + "_cells.csv")


def proba_path(submission: str | Path) -> Path:
    p = Path(submission)
    return p.with_name(p.stem + "_proba.csv")


def predicted_cells(model: Any, store: Any, split: str = "test") -> pd.DataFrame:
    """Per-cell contributions of a fitted model (mean over its members) for the patients of
    ``split``: patient_id, cell_id, path, weight, kind."""
    from cellbag.aggregate.bags import load_bags, open_store

    data = load_bags(open_store(store), model.encoder_id, split=split)
    per_member = [m.head.cell_contributions(data.bags) for m in model.members]
    kind = getattr(model.members[0].head, "contribution_kind", "attention")
    rows = []
    for i, pid in enumerate(data.patient_ids):
        w = np.mean([c[i] for c in per_member], axis=0)
        ids = data.cell_ids[i] if data.cell_ids is not None else np.arange(len(w)).astype(str)
        paths = data.cell_paths[i] if data.cell_paths is not None else np.full(len(w), "")
        rows.append(
            pd.DataFrame(
                {"patient_id": pid, "cell_id": ids, "path": paths, "weight": w, "kind": kind}
            )
        )
    cols = ["patient_id", "cell_id", "path", "weight", "kind"]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)


def read_predictions(submission: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A ``cellbag predict`` output: (Id, Probability, Predicted) and its per-cell table."""
    sub = Path(submission)
    proba = proba_path(sub)
    if not proba.is_file():
        raise ReportError(
            f"{proba}: missing (give the submission CSV written by `cellbag predict`)"
        )
    p = pd.read_csv(proba, dtype={"Id": str})
    missing = {"Id", "Probability", "Predicted"} - set(p.columns)
    if missing:
        raise ReportError(f"{proba}: missing column(s) {', '.join(sorted(missing))}")
    cells = cells_path(sub)
    c = pd.read_csv(cells, dtype={"patient_id": str, "cell_id": str}) if cells.is_file() else None
    return p, c
