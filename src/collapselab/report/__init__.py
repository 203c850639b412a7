"""Reports of training runs: ``report.html`` (:func:`write_report`) and side-by-side comparisons
(:func:`comparison`, :func:`format_table`, :func:`to_csv`). Read-only over run folders
(:mod:`collapselab.runs`); see docs/report.md."""

from collapselab.report.compare import (
           Comparison,
           comparison,
           config_differences,
           format_table,
           to_csv,
)
from collapselab.report.html import (
           render_report,
           write_report,
           write_run_report,
           write_unfinished_report,
)

__all__ = ["Comparison", "comparison", "config_differences", "format_table", "render_report", "to_csv",
           "write_report", "write_run_report", "write_unfinished_report"]
