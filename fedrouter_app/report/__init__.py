"""The comparison report: Markdown tables and PNG figures from run directories.

    python -m fedrouter_app.report outputs/sweeps/<time> --out outputs/reports/<name>

Reads every run directory under the given paths (``results.json`` and
``config.yaml``), groups runs by scenario and method, and writes
``report.md``: per scenario, the test protocol, scores (mean ± standard
deviation over seeds on own, other clients', held-out and all tasks), paired
per-seed differences with Student-t intervals against the reference method,
the best baseline and the best label-free baseline, per-task scores, routing
accuracy and clustering ARI, and cost per client-round (bytes, training steps
and tokens, forward tokens); ``report.json`` (every number, per seed too) and
figures. Methods are whatever the runs contain.
"""

from fedrouter_app.report.build import build_report

__all__ = ["build_report"]
