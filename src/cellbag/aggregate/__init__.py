"""Stage 2: aggregators over cached bags, clinical fusion and honest cross-validation.

    from cellbag.aggregate import Bags, make_head, run_cv
    head = make_head("abmil", seed=0)              # a scikit-learn classifier over bags
    head.fit(Bags(bags, clinical), y)              # or head.fit(bags, y): image only
    head.predict_proba(Bags(bags, clinical))       # (n, 2); head.cell_weights(X) per cell
    table = run_cv("store.zarr", heads="abmil,lgbm,meanpool", out="runs/cv")

Heads live in ``cellbag.aggregate.heads`` (one file each, ``@register_head``). Importing
this package does not import torch or LightGBM; building a head does.
"""

from cellbag.core.lazy import lazy_exports

_EXPORTS = {
    "BagSet": "cellbag.aggregate.bags",
    "load_bags": "cellbag.aggregate.bags",
    "Bags": "cellbag.aggregate.base",
    "Head": "cellbag.aggregate.base",
    "cross_validate": "cellbag.aggregate.cv",
    "fit_fold": "cellbag.aggregate.cv",
    "run_cv": "cellbag.aggregate.cv",
    "AggregateError": "cellbag.aggregate.errors",
    "UnknownHeadError": "cellbag.aggregate.errors",
    "binary_metrics": "cellbag.aggregate.metrics",
    "youden_threshold": "cellbag.aggregate.metrics",
    "FittedModel": "cellbag.aggregate.model",
    "fit_model": "cellbag.aggregate.model",
    "load_model": "cellbag.aggregate.model",
    "write_submission": "cellbag.aggregate.model",
    "head_class": "cellbag.aggregate.registry",
    "list_heads": "cellbag.aggregate.registry",
    "make_head": "cellbag.aggregate.registry",
    "register_head": "cellbag.aggregate.registry",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
