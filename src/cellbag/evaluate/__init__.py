"""Evaluation of heads: cross-validation (parallel fits), splits, statistics, metrics, the
run folder, cell truth, leak guards and the deployable fitted model.

    from cellbag.evaluate import CVConfig, run_cv
    table = run_cv("store.zarr", heads="abmil,lgbm,meanpool", out="runs/cv")

It sits above the heads (:mod:`cellbag.aggregate`) and below the pages that show its runs
(:mod:`cellbag.report`). Importing it imports neither torch nor LightGBM.
"""

from cellbag.core.lazy import lazy_exports

_EXPORTS = {
    "CVConfig": "cellbag.evaluate.config",
    "FitConfig": "cellbag.evaluate.config",
    "cross_validate": "cellbag.evaluate.cv",
    "run_cv": "cellbag.evaluate.cv",
    "fit_fold": "cellbag.evaluate.fitting",
    "EvaluateError": "cellbag.evaluate.errors",
    "LabelLeakError": "cellbag.evaluate.errors",
    "RunFolderError": "cellbag.evaluate.errors",
    "binary_metrics": "cellbag.evaluate.metrics",
    "youden_threshold": "cellbag.evaluate.metrics",
    "FittedModel": "cellbag.evaluate.model",
    "fit_model": "cellbag.evaluate.model",
    "load_model": "cellbag.evaluate.model",
    "write_submission": "cellbag.evaluate.model",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
