"""Inspection: a static, offline HTML report of a cross-validation run.

``write_report(run_dir, out, store=None)`` reads ``cellbag cv`` outputs (metrics, out-of-fold
predictions, attention weights) and writes ``out/index.html`` with thumbnails beside it.
"""

from cellbag.core.lazy import lazy_exports

_EXPORTS = {
    "write_report": "cellbag.report.build",
    "ReportError": "cellbag.report.errors",
    "HeadRun": "cellbag.report.cv_run",
    "Run": "cellbag.report.cv_run",
    "load_run": "cellbag.report.cv_run",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
