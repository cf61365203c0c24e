"""The comparison report: Markdown tables and PNG figures from run directories.

    python -m fedrouter_app.report outputs/sweeps/<time> --out outputs/reports/<name>

Reads every run directory under the given paths (``results.json`` and
``config.yaml``), groups runs by scenario and method, and writes
``report.md``: the verdicts on the claims a sweep declared before it ran
(Holm-corrected, :mod:`~fedrouter_app.report.verdicts`); per scenario, the test
protocol (seeds, test items per task, clients per task), scores (mean ±
standard deviation over seeds on own, other clients', held-out and all tasks),
paired differences with 95% intervals (a paired bootstrap over seeds and test
items where runs saved ``predictions.jsonl``, :mod:`~fedrouter_app.report.bootstrap`;
Student-t over seeds otherwise) against the reference method and the declared
comparators (:mod:`~fedrouter_app.report.declaration`), or, without a
declaration, the best and best label-free baselines, per-task scores, routing
accuracy and clustering ARI, and cost per client-round (bytes, training steps
and tokens, forward tokens); ``report.json`` (every number, per seed too) and
figures. Methods are whatever the runs contain.
"""

from fedrouter_app.report.build import build_report

__all__ = ["build_report"]
