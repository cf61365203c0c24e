"""The one record type every data source maps to."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

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


def instructions_digest(examples: Sequence[Example]) -> np.ndarray:
    """A 16-byte digest of the examples' instructions, in order: tells whether a client's data changed."""
    digest = hashlib.blake2b(digest_size=16)
    for ex in examples:
        digest.update(ex.instruction.encode())
        digest.update(b"\x1f")
    return np.frombuffer(digest.digest(), dtype=np.uint8).copy()
