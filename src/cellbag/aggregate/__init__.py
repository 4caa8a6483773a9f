"""Stage 2: aggregators over cached bags (heads, their building blocks, bag loading).

    from cellbag.aggregate import Bags, make_head
    head = make_head("abmil", seed=0)              # a scikit-learn classifier over bags
    head.fit(Bags(bags, clinical), y)              # or head.fit(bags, y): image only
    head.predict_proba(Bags(bags, clinical))       # (n, 2); head.cell_weights(X) per cell

Heads live in ``cellbag.aggregate.heads`` (one file each, ``@register_head``). Their
evaluation (cross-validation, statistics, the run folder, fitted models) is
:mod:`cellbag.evaluate`. Importing this package does not import torch or LightGBM;
building a head does.
"""

from cellbag.core.lazy import lazy_exports

_EXPORTS = {
    "BagSet": "cellbag.aggregate.bags",
    "load_bags": "cellbag.aggregate.bags",
    "Bags": "cellbag.aggregate.base",
    "Head": "cellbag.aggregate.base",
    "AggregateError": "cellbag.aggregate.errors",
    "HeadNotFittedError": "cellbag.aggregate.errors",
    "UnknownHeadError": "cellbag.aggregate.errors",
    "head_class": "cellbag.aggregate.registry",
    "list_heads": "cellbag.aggregate.registry",
    "make_head": "cellbag.aggregate.registry",
    "parse_heads": "cellbag.aggregate.registry",
    "register_head": "cellbag.aggregate.registry",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
