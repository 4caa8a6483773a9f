"""Stage 2: aggregators over cached bags, clinical fusion and honest cross-validation.

    from cellbag.aggregate import Bags, make_head, run_cv
    head = make_head("abmil", seed=0)              # a scikit-learn classifier over bags
    head.fit(Bags(bags, clinical), y)              # or head.fit(bags, y): image only
    head.predict_proba(Bags(bags, clinical))       # (n, 2); head.cell_weights(X) per cell
    table = run_cv("store.zarr", heads="abmil,lgbm,meanpool", out="runs/cv")

Heads live in ``cellbag.aggregate.heads`` (one file each, ``@register_head``). Importing
this package does not import torch or LightGBM; building a head does.
"""

from cellbag.aggregate.bags import BagSet, load_bags
from cellbag.aggregate.base import Bags, Head
from cellbag.aggregate.cv import cross_validate, fit_fold, run_cv
from cellbag.aggregate.errors import AggregateError, UnknownHeadError
from cellbag.aggregate.metrics import binary_metrics, youden_threshold
from cellbag.aggregate.model import FittedModel, fit_model, load_model, write_submission
from cellbag.aggregate.registry import head_class, list_heads, make_head, register_head

__all__ = [
    "AggregateError",
    "BagSet",
    "Bags",
    "FittedModel",
    "Head",
    "UnknownHeadError",
    "binary_metrics",
    "cross_validate",
    "fit_fold",
    "fit_model",
    "head_class",
    "list_heads",
    "load_bags",
    "load_model",
    "make_head",
    "register_head",
    "run_cv",
    "write_submission",
    "youden_threshold",
]
