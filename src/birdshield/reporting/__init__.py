"""Reports: Markdown text (``markdown``, pure Python), plots in one style (``plots``), spreadsheet-safe CSV
text (``tables``, pure Python) and the report folders that `evaluate` and `certify` write (``writers``).
Names load on first use (PEP 562): matplotlib is imported only when something is plotted."""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
