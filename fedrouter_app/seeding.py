"""Seeds derived from named parts, so that every random choice is reproducible.

Every random draw in the project takes its seed from :func:`derive_seed` applied
to the run seed and the coordinates of the draw (client, round, task, ...). The
same parts give the same seed on every machine and in every process, whatever
order clients happen to run in.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

_SEPARATOR = "\x1f"


def derive_seed(*parts: int | str) -> int:
    """Return a 63-bit seed determined by ``parts`` alone.

    Parameters
    ----------
    *parts : int or str
        Coordinates of the random choice, e.g. ``(seed, "train", client, round)``.

    Returns
    -------
    int
        A non-negative integer below ``2**63``.
    """
    digest = hashlib.blake2b(_SEPARATOR.join(str(part) for part in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def python_rng(*parts: int | str) -> random.Random:
    """A :class:`random.Random` seeded from ``parts``."""
    return random.Random(derive_seed(*parts))


def numpy_rng(*parts: int | str) -> np.random.Generator:
    """A NumPy generator seeded from ``parts``."""
    return np.random.default_rng(derive_seed(*parts))


def torch_generator(*parts: int | str) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded from ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def seed_torch(*parts: int | str) -> None:
    """Seed torch's global RNG (dropout, CUDA kernels) from ``parts``."""
    torch.manual_seed(derive_seed(*parts))
