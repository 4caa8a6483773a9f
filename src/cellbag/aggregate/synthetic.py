"""Synthetic witness cohorts for tests and benchmarks (no images, only embeddings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class WitnessCohort:
    bags: list[np.ndarray]
    y: np.ndarray
    witness: list[np.ndarray]  # bool per cell: True for the cells that carry the signal
    clinical: np.ndarray


def witness_cohort(
    n_patients: int = 120,
    cells: int | tuple[int, int] = 50,
    dim: int = 32,
    witnesses: int = 3,
    shift: float = 4.0,
    nuisance: float = 1.0,
    seed: int = 0,
) -> WitnessCohort:
    """Bags of Gaussian cells; positive bags hold ``witnesses`` cells moved by ``shift`` along
    one direction. Every bag also moves as a whole along that direction (``nuisance`` std),
    so the bag mean is a poor signal while the witness cells stand out."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(dim)
    u /= np.linalg.norm(u)
    y = np.zeros(n_patients, np.int64)
    y[rng.permutation(n_patients)[: n_patients // 2]] = 1
    bags, wit = [], []
    for label in y:
        n = int(rng.integers(cells[0], cells[1] + 1)) if isinstance(cells, tuple) else int(cells)
        x = rng.standard_normal((n, dim)) + rng.normal(0.0, nuisance) * u
        w = np.zeros(n, bool)
        if label:
            w[rng.choice(n, min(witnesses, n), replace=False)] = True
            x[w] += shift * u
        bags.append(x.astype(np.float32))
        wit.append(w)
    clinical = rng.standard_normal((n_patients, 3)).astype(np.float32)
    return WitnessCohort(bags, y, wit, clinical)


def witness_store(
    path: str,
    n_train: int = 60,
    n_test: int = 12,
    cells: int | tuple[int, int] = 30,
    dim: int = 32,
    witnesses: int = 3,
    seed: int = 0,
    encoder_id: str = "synthetic-witness",
    test_labels: bool = False,
):
    """A real feature store over a witness cohort (no images; cell paths are placeholders).

    Returns ``(store, encoder_id, cohort)``; ``cohort.y`` holds every patient's true label
    (train first, then test). Test labels are written to the store only if ``test_labels``.
    Clinical values (gender, date of birth, lymphocyte count) correlate weakly with the label."""
    import pandas as pd

    from cellbag.data.cohort import Cohort
    from cellbag.store import Store

    n = n_train + n_test
    wc = witness_cohort(n, cells, dim, witnesses, seed=seed)
    rng = np.random.default_rng(seed + 1)
    pids = [f"P{i}" for i in range(n)]
    split = ["train"] * n_train + ["test"] * n_test
    label = pd.array(
        [int(v) if (i < n_train or test_labels) else pd.NA for i, v in enumerate(wc.y)],
        dtype="Int64",
    )
    age = 60 + 10 * wc.y + rng.normal(0, 12, n)
    dob = pd.to_datetime("2020-01-01") - pd.to_timedelta(np.round(age * 365.25), unit="D")
    patients = pd.DataFrame(
        {
            "patient_id": pids,
            "split": split,
            "label": label,
            "gender": rng.choice(["M", "F"], n).astype(object),
            "dob": dob,
            "lymph_count": np.exp(rng.normal(1.5 + 1.0 * wc.y, 0.8)),
        }
    )
    rows = [
        {"cell_id": f"{p}/{j:04d}.jpg", "patient_id": p, "path": f"/synthetic/{p}/{j:04d}.jpg"}
        for p, b in zip(pids, wc.bags, strict=True)
        for j in range(len(b))
    ]
    cohort = Cohort(
        root=Path(path).parent, layout="synthetic", patients=patients, cells=pd.DataFrame(rows)
    )
    store = Store.create(path, cohort)
    store.add_embeddings(
        encoder_id, np.concatenate(wc.bags).astype(np.float16), {"name": "synthetic", "dim": dim}
    )
    return store, encoder_id, wc
