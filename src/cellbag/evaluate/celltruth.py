"""Instance-level check of per-cell weights against known key cells (``cv --cell-truth``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cellbag.aggregate.errors import AggregateError


def read_cell_truth(path: str | Path) -> pd.DataFrame:
    """``cell_id, is_key`` (0/1) from a CSV; other columns are ignored."""
    path = Path(path)
    try:
        df = pd.read_csv(path, usecols=["cell_id", "is_key"], dtype={"cell_id": str})
    except FileNotFoundError:
        raise AggregateError(f"{path}: cell truth file not found") from None
    except ValueError as e:
        raise AggregateError(f"{path}: needs columns cell_id,is_key ({e})") from None
    if not df["is_key"].isin([0, 1]).all():
        raise AggregateError(f"{path}: is_key must be 0 or 1")
    return df.drop_duplicates("cell_id")


def instance_auc(attention: pd.DataFrame, truth: pd.DataFrame, labels: dict[str, int]) -> dict:
    """ROC AUC of the cell weights for the key cells, over the cells of positive bags.

    A weight is compared across bags as ``weight x bag size`` (1 = the uniform weight), so
    a cell of a small bag does not look important only because its bag is small."""
    from sklearn.metrics import roc_auc_score

    att = attention.merge(truth, on="cell_id", how="inner")
    att = att[att["patient_id"].astype(str).map(labels) == 1]
    if att.empty or att["is_key"].nunique() < 2:
        return {"instance_auc": None, "n_cells": int(len(att)), "n_key": int(att["is_key"].sum())}
    size = att.groupby(["patient_id", "repeat"])["weight"].transform("size")
    score = att["weight"].to_numpy() * size.to_numpy()
    return {
        "instance_auc": float(roc_auc_score(att["is_key"].to_numpy(), score)),
        "n_cells": int(len(att)),
        "n_key": int(att["is_key"].sum()),
        "rows": "cells of positive bags, every repeat; score = weight x bag size",
    }


def head_instance_auc(head_dir: Path, truth: pd.DataFrame, labels: dict[str, int]) -> dict | None:
    """:func:`instance_auc` of a head's out-of-fold attention (None: the head has none)."""
    from cellbag.evaluate.run_folder import read_attention

    att = read_attention(head_dir)
    return None if att is None else instance_auc(att, truth, labels)
