"""One experiment, one file: the settings of ``cellbag cv`` and ``cellbag fit`` as
dataclasses shared by the CLI and the Python API, written as ``config.yaml`` into every run
or model folder and read back by ``--config`` (flags given beside it override it).

The YAML reading and writing is :mod:`cellbag.core.config` (featurize uses it too).
Unknown keys are an error (a typo is not a silent default). ``jobs`` and ``cluster`` say
where the fits run, never what they compute: any value gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellbag.core.config import override, read_yaml, to_dict, write_yaml  # noqa: F401 - API
from cellbag.evaluate.errors import EvaluateError
from cellbag.evaluate.stats import RESAMPLES, TRIAGE_SENSITIVITY

CONFIG_YAML = "config.yaml"
#: inner folds of the nested threshold / calibration choice (cost: 1 + this many fits per fold)
INNER_FOLDS = 3
DEFAULT_HEADS = ("meanpool", "abmil", "transformer", "lgbm")


@dataclass
class CVConfig:
    """Settings of a cross-validation run (``cellbag cv``, :func:`cellbag.evaluate.run_cv`)."""

    store: str | None = None  # path or fsspec URL of the feature store
    out: str | None = None  # the run folder
    encoder: str | None = None  # encoder id or name (None: the store's only one)
    heads: list[str] = field(default_factory=lambda: list(DEFAULT_HEADS))
    clinical: bool = True
    folds: int = 5
    repeats: int = 3
    seed: int = 0
    inner_folds: int = INNER_FOLDS
    triage_sensitivity: float = TRIAGE_SENSITIVITY
    calibrate: str | None = None
    resamples: int = RESAMPLES
    head_params: dict[str, dict] = field(default_factory=dict)
    holdout_finetuned: bool = False
    cell_truth: str | None = None
    threads: int | None = None  # torch threads per fit (None: 1)
    jobs: int | None = None  # worker processes (None: every core)
    cluster: str | None = None  # tcp://HOST:PORT or local:N (Dask)
    allow_stale: bool = False  # use embeddings of images changed since featurize

    def __post_init__(self) -> None:
        if isinstance(self.heads, str):
            self.heads = [h.strip() for h in self.heads.split(",") if h.strip()]
        else:
            self.heads = list(self.heads)
        for name in ("store", "out", "cell_truth"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, str(value))
        self.head_params = {k: dict(v) for k, v in (self.head_params or {}).items()}


@dataclass
class FitConfig:
    """Settings of a deployable model (``cellbag fit``, :func:`cellbag.evaluate.fit_model`)."""

    store: str | None = None
    out: str | None = None  # the model folder
    head: str | None = None
    encoder: str | None = None
    clinical: bool = True
    seed: int = 0
    ensemble: int = 0  # K >= 2: a K-fold ensemble
    threshold: str = "0.5"  # a probability, youden or triage[:SENS]
    cv_run: str | None = None
    calibrate: str | None = None
    params: dict = field(default_factory=dict)
    holdout_finetuned: bool = False
    threads: int | None = None
    jobs: int | None = None

    def __post_init__(self) -> None:
        self.threshold = str(self.threshold)
        for name in ("store", "out", "cv_run"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, str(value))
        self.params = dict(self.params or {})


def write_config(cfg: Any, folder: str | Path) -> Path:
    """``folder/config.yaml``: every setting of ``cfg``, with the kind of run it is."""
    path = Path(folder) / CONFIG_YAML
    write_yaml(cfg, path)
    return path


def read_config(path: str | Path, kind: type) -> Any:
    """The ``kind`` (CVConfig or FitConfig) held in a config.yaml (or a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_YAML
    return read_yaml(path, kind, EvaluateError)
