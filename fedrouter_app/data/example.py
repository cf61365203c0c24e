"""The one record type every data source maps to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricKind = Literal["exact", "rouge"]


@dataclass(frozen=True)
class Example:
    """One supervised sample.

    Attributes
    ----------
    task : str
        Name of the task the sample belongs to (ground truth, never used by
        methods that are supposed to discover tasks).
    instruction : str
        The model input, before the prompt template is applied.
    response : str
        The expected output.
    """

    task: str
    instruction: str
    response: str
