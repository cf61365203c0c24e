"""The comparison report: Markdown tables and PNG figures from run directories.

    python -m fedrouter_app.report outputs/sweeps/<time> --out outputs/reports/<name>

Reads every run directory under the given paths (``results.json`` and
``config.yaml``), groups runs by scenario and method, and writes
``report.md`` (mean ± standard deviation over seeds of the final scores,
loss, routing accuracy and bytes per client-round, plus the relative gain
over a reference method), ``report.json`` (the same numbers) and figures.
Methods are whatever the runs contain.
"""

from fedrouter_app.report.build import build_report

__all__ = ["build_report"]
