"""Reports: Markdown text (``markdown``, pure Python), plots in one style (``plots``), spreadsheet-safe CSV
text (``tables``, pure Python) and the report folders that `evaluate` and `certify` write (``writers``).
Names load on first use (PEP 562): matplotlib is imported only when something is plotted."""

from __future__ import annotations

from ..lazy import lazy_exports

# public name -> module (relative to this package) that defines it
_LAZY = {
    "certify_table": ".markdown",
    "csv_text": ".tables",
    "spreadsheet_safe": ".tables",
    "format_summary": ".markdown",
    "report_markdown": ".markdown",
    "plot_accuracy_vs_eps": ".plots",
    "plot_certified": ".plots",
    "plot_examples": ".plots",
    "plot_training_curves": ".plots",
    "write_certify_report": ".writers",
    "write_evaluate_report": ".writers",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
