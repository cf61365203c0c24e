"""What the benchmarks share to show their numbers: Markdown between markers, portable commands, mean ± std."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path


def portable_command(command: str) -> str:
    """``command`` with the machine's own path to ``outputs/`` or ``docs/`` left out (and no trailing space)."""
    return re.sub(r"\S*/((?:outputs|docs)/)", r"\1", command).strip()


def mean_std(values: Sequence[float | None]) -> str:
    """``mean ± std`` (population std) of the values recorded (``None``: not recorded); ``-`` when none was."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    mean = sum(present) / len(present)
    std = (sum((v - mean) ** 2 for v in present) / len(present)) ** 0.5
    return f"{mean:.3f} ± {std:.3f}" if len(present) > 1 else f"{mean:.3f}"


def publish(text: str, into: Path | None, marker: str) -> None:
    """Print ``text``; with ``into``, also put it between that Markdown file's ``marker`` markers."""
    print(text)
    if into is not None:
        from fedrouter_app.markers import splice_file

        splice_file(into, marker, text)
