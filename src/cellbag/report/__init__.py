"""Inspection: a static, offline HTML report of a cross-validation run.

``write_report(run_dir, out, store=None)`` reads ``cellbag cv`` outputs (metrics, out-of-fold
predictions, attention weights) and writes ``out/index.html`` with thumbnails beside it.
"""

from cellbag.report.build import write_report
from cellbag.report.errors import ReportError
from cellbag.report.run import HeadRun, Run, load_run

__all__ = ["HeadRun", "ReportError", "Run", "load_run", "write_report"]
