"""Paired two-level bootstrap intervals of the difference between two methods, from per-example predictions.

Why two levels: a comparison's uncertainty has two sources, the seed (data,
partition, initialisation) and the finite test set. A Student-t interval over
three seeds sees only the first, with two degrees of freedom; an interval over
test items only would ignore the second. Each resample therefore

1. draws the seeds with replacement (as many as the two methods share), then
2. within each drawn seed draws the test items again with replacement, task by
   task within the column (a column's task keeps its number of items), and
3. recomputes the column's difference as the report computes a column: the
   mean over its tasks of the per-task mean score, averaged over the drawn
   seeds.

Pairing is kept at the item level: runs of the same seed share their test
items (same data, same partition), so both methods are scored on the very
items a resample draws and the difference is taken item by item. A seed drawn
twice gets two independent item draws. The interval is the percentile
interval of :data:`RESAMPLES` resamples (2.5 % and 97.5 % for 95 %); the
two-sided p-value is twice the share of resampled differences on the other
side of 0 from the observed one (with the usual +1 in numerator and
denominator, so it is never 0), clipped to 1. Draws are seeded from
(:data:`SEED`, scenario, seed, column, the items), so a report is reproducible
and every method of a seed sees the same item draws.

It needs each run's ``predictions.jsonl`` (main scoring, last evaluated round)
reproducing the run's own per-seed scores; where that is missing (runs from
before predictions were saved, ``output.save_predictions=off``, a seed run
twice) the difference falls back to the Student-t interval over seeds, with a
note saying why.

Vectorised: for a (scenario, seed, column) the item draws of every resample
are one matrix of counts, multiplied once with the scores of every run sharing
those items, so a report over a hundred runs of a thousand items takes seconds.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from fedrouter_app.federation.predictions_file import PREDICTIONS_FILE, iter_predictions
from fedrouter_app.report.paired import CONFIDENCE, Difference, paired_difference
from fedrouter_app.report.runs import Run, held_out, last_evaluated
from fedrouter_app.report.table import Row
from fedrouter_app.seeding import derive_seed

RESAMPLES = 2000
SEED = 0
# An item-level column score must reproduce the run's own to this: predictions are written with six decimals.
TOLERANCE = 1e-5
# Resamples per block of the count matrix (memory: CHUNK x items per task).
CHUNK = 512
COLUMNS = ("own", "other_clients", "held_out", "all")


@dataclass(frozen=True)
class Items:
    """One run's scored test items (main scoring, last evaluated round), sorted by (client, position)."""

    keys: np.ndarray  # int64: client << 32 | position in the client's test set
    task: np.ndarray  # int64 codes into ``tasks``
    tasks: tuple[str, ...]
    score: np.ndarray  # float64
    columns: dict[str, np.ndarray]  # column -> bool mask over the items

    def column(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keys, task codes and scores of the items in column ``name``."""
        mask = self.columns[name]
        return self.keys[mask], self.task[mask], self.score[mask]


def read_items(run: Run) -> Items | None:
    """The items of ``run``'s last evaluation, or None without predictions of it."""
    last = last_evaluated(run.results)
    if last is None or not (run.path / PREDICTIONS_FILE).exists():
        return None
    keys, tasks, scores, own = [], [], [], []
    for entry in iter_predictions(run.path, int(last["round"]), view=run.view):
        keys.append((int(entry["client"]) << 32) | int(entry["index"]))
        tasks.append(str(entry["task"]))
        scores.append(float(entry["score"]))
        own.append(bool(entry["own"]))
    if not keys:
        return None
    names = tuple(sorted(set(tasks)))
    code = {t: i for i, t in enumerate(names)}
    order = np.argsort(np.asarray(keys, dtype=np.int64), kind="stable")
    key_array = np.asarray(keys, dtype=np.int64)[order]
    task_array = np.asarray([code[t] for t in tasks], dtype=np.int64)[order]
    own_array = np.asarray(own, dtype=bool)[order]
    held = np.isin(task_array, [code[t] for t in held_out(run.results) if t in code])
    columns = {"own": own_array, "other_clients": ~own_array & ~held, "held_out": held, "all": np.ones_like(held)}
    return Items(key_array, task_array, names, np.asarray(scores, dtype=np.float64)[order], columns)


def column_score(task: np.ndarray, score: np.ndarray) -> float:
    """The report's column score: mean over tasks of the mean item score of each task (NaN without items)."""
    if not len(score):
        return math.nan
    codes, inverse = np.unique(task, return_inverse=True)
    means = np.bincount(inverse, weights=score) / np.bincount(inverse)
    return float(means.mean()) if len(codes) else math.nan


def _signature(keys: np.ndarray, task: np.ndarray, tasks: tuple[str, ...]) -> str:
    """A name for a set of items (their keys and task names): runs with the same one share their draws."""
    digest = hashlib.blake2b(keys.tobytes(), digest_size=12)
    digest.update("\x1f".join(tasks[i] for i in np.unique(task)).encode())
    digest.update(task.tobytes())
    return digest.hexdigest()


def resampled_scores(
    task: np.ndarray, scores: np.ndarray, rows: int, rng: np.random.Generator, chunk: int = CHUNK
) -> np.ndarray:
    """Column scores of ``rows`` item resamples for each column of ``scores`` (items x runs) -> (rows, runs).

    Items are drawn with replacement within each task (each task keeps its
    number of items); the draws depend only on ``task`` and ``rng``, never on
    the scores, so every run gets the same draws: the pairing.
    """
    codes = np.unique(task)
    strata = [np.flatnonzero(task == c) for c in codes]
    out = np.zeros((rows, scores.shape[1]))
    # The products are small (a block of counts by a few runs): BLAS threads cost more than they save, ten times
    # more on a machine busy with other work.
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, rows, chunk):
            n_rows = min(chunk, rows - start)
            for positions in strata:
                n = len(positions)
                draws = rng.integers(0, n, size=(n_rows, n)) + (np.arange(n_rows) * n)[:, None]
                # As floats: an integer matrix product does not go through BLAS.
                counts = np.bincount(draws.ravel(), minlength=n_rows * n).reshape(n_rows, n).astype(np.float64)
                out[start : start + n_rows] += counts @ scores[positions] / n
    return out / len(codes)


def percentile_interval(stat: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of resampled statistics."""
    tail = (1 - confidence) / 2
    low, high = np.quantile(stat, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_p_value(stat: np.ndarray, observed: float) -> float:
    """Two-sided: twice the share (+1 smoothed) of resamples on the other side of 0 from ``observed``, at most 1."""
    if observed == 0 or not math.isfinite(observed):
        return 1.0
    other = np.count_nonzero(stat <= 0) if observed > 0 else np.count_nonzero(stat >= 0)
    return min(1.0, 2 * (other + 1) / (len(stat) + 1))


def seed_level(diffs: np.ndarray, slots: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Resampled mean differences: seeds drawn with replacement, each slot using its own item resample.

    ``diffs`` is (seeds, resamples x slots): per seed, the item-resampled
    column differences, row ``b * slots + j`` for slot j of resample b.
    """
    n_seeds = diffs.shape[0]
    drawn = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    row = np.arange(resamples)[:, None] * slots + np.arange(n_seeds)[None, :]
    return diffs[drawn, row].mean(axis=1)


def paired_bootstrap(
    tasks: Sequence[np.ndarray],
    x: Sequence[np.ndarray],
    y: Sequence[np.ndarray],
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> np.ndarray:
    """Resampled column differences ``x - y`` from plain arrays: per seed, its items' tasks and both methods' scores.

    The computation :class:`PairedBootstrap` makes from run directories, on
    arrays (``x[s][i]`` and ``y[s][i]``: item i of seed s, of task ``tasks[s][i]``).
    """
    slots = len(tasks)
    diffs = []
    for s, (task, a, b) in enumerate(zip(tasks, x, y, strict=True)):
        rng = np.random.default_rng(derive_seed(seed, "items", s))
        out = resampled_scores(np.asarray(task), np.stack([a, b], axis=1).astype(float), resamples * slots, rng)
        diffs.append(out[:, 0] - out[:, 1])
    return seed_level(np.stack(diffs), slots, resamples, np.random.default_rng(derive_seed(seed, "seeds")))


class PairedBootstrap:
    """Bootstrap differences between report rows; falls back to Student-t where predictions cannot serve.

    Parameters
    ----------
    runs : sequence of Run
        Every run of the report.
    resamples : int
        Resamples of the seed level (each with its item-level draws).
    seed : int
        Seed of every draw.
    """

    def __init__(self, runs: Sequence[Run], resamples: int = RESAMPLES, seed: int = SEED) -> None:
        if resamples < 100:
            raise ValueError(f"the bootstrap needs at least 100 resamples, got {resamples}")
        self.resamples, self.seed = resamples, seed
        self.runs: dict[tuple[str, str, str], dict[int, list[Run]]] = defaultdict(lambda: defaultdict(list))
        for run in runs:
            self.runs[(run.scenario, run.method, run.variant)][run.seed].append(run)
        # Seed slots per resample: the most seeds any comparison of the scenario can pair.
        self.slots = {s: len({r.seed for r in runs if r.scenario == s}) for s in {r.scenario for r in runs}}
        self._items: dict[str, Items | None] = {}
        self._vectors: dict[tuple[str, str, str], np.ndarray] = {}
        self._cache: dict[tuple[str, str, str, str], Difference] = {}

    def items(self, run: Run) -> Items | None:
        key = _run_key(run)
        if key not in self._items:
            self._items[key] = read_items(run)
        return self._items[key]

    def compare(self, row: Row, other: Row, column: str, confidence: float = CONFIDENCE) -> Difference:
        """``row - other`` in ``column``: bootstrap where both have predictions of every paired seed, else Student-t."""
        key = (row.scenario, row.label, other.label, column)
        if key not in self._cache:
            student = paired_difference(row.per_seed[column], other.per_seed[column], other.label, confidence)
            self._cache[key] = self._bootstrap(row, other, column, student, confidence)
        return self._cache[key]

    def _bootstrap(self, row: Row, other: Row, column: str, student: Difference, confidence: float) -> Difference:
        if student.n == 0:
            return student
        seeds = sorted(student.per_seed)
        vectors = []
        for seed in seeds:
            pair = [self._seed_runs(r, seed) for r in (row, other)]
            if isinstance(pair[0], str) or isinstance(pair[1], str):
                return _fallback(student, next(p for p in pair if isinstance(p, str)))
            got = self._pair_vectors(pair[0], pair[1], (row, other), column, seed)
            if isinstance(got, str):
                return _fallback(student, got)
            vectors.append(got)
        diffs = np.stack([a - b for a, b in vectors])
        rng = np.random.default_rng(derive_seed(self.seed, "seeds", row.scenario, column, *seeds))
        stat = seed_level(diffs, self.slots[row.scenario], self.resamples, rng)
        low, high = percentile_interval(stat, confidence)
        return Difference(
            student.against,
            student.mean,
            (high - low) / 2,
            student.n,
            student.per_seed,
            interval=(low, high),
            method="bootstrap",
            p_value=bootstrap_p_value(stat, student.mean),
            resamples=self.resamples,
        )

    def _seed_runs(self, row: Row, seed: int) -> Run | str:
        runs = self.runs[(row.scenario, row.method, row.variant)][seed]
        if len(runs) != 1:
            return f"`{row.label}` ran seed {seed} {len(runs)} times"
        return runs[0]

    def _pair_vectors(
        self, a: Run, b: Run, rows: tuple[Row, Row], column: str, seed: int
    ) -> tuple[np.ndarray, np.ndarray] | str:
        """Both runs' item-resampled scores in ``column`` on the items they share, or why there are none."""
        parts = []
        for run, row in zip((a, b), rows, strict=True):
            items = self.items(run)
            if items is None:
                return f"`{row.label}` seed {seed} has no predictions of its last evaluation ({PREDICTIONS_FILE})"
            keys, task, score = items.column(column)
            mine = column_score(task, score)
            if not math.isfinite(mine) or abs(mine - row.per_seed[column][seed]) > TOLERANCE:
                return f"`{row.label}` seed {seed}: its predictions do not reproduce its {column} score"
            parts.append((run, items, keys, task, score))
        (ra, ia, ka, ta, sa), (rb, ib, kb, tb, sb) = parts
        names_a, names_b = np.asarray(ia.tasks)[ta], np.asarray(ib.tasks)[tb]
        if np.array_equal(ka, kb) and np.array_equal(names_a, names_b):
            return self._vector(ra, ia, column, ka, ta), self._vector(rb, ib, column, kb, tb)
        # Different items (a client missing in one run): pair on the ones both scored, under the same task.
        common, ia_pos, ib_pos = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
        same = names_a[ia_pos] == names_b[ib_pos]
        ia_pos, ib_pos = ia_pos[same], ib_pos[same]
        if not len(ia_pos):
            return f"`{rows[0].label}` and `{rows[1].label}` share no test items at seed {seed}"
        task = ta[ia_pos]
        rng = self._rng(rows[0].scenario, seed, column, _signature(common[same], task, ia.tasks))
        both = np.stack([sa[ia_pos], sb[ib_pos]], axis=1)
        out = resampled_scores(task, both, self.resamples * self.slots[rows[0].scenario], rng)
        return out[:, 0], out[:, 1]

    def _vector(self, run: Run, items: Items, column: str, keys: np.ndarray, task: np.ndarray) -> np.ndarray:
        """``run``'s resampled column scores on its own items, computed with every run of its seed sharing them."""
        signature = _signature(keys, task, items.tasks)
        if (_run_key(run), column, signature) not in self._vectors:
            sharing = [run]
            for (scenario, _, _), by_seed in self.runs.items():
                if scenario == run.scenario:
                    sharing += [r for r in by_seed.get(run.seed, []) if r is not run]
            members, columns = [], []
            for other in sharing:
                other_items = self.items(other)
                if other_items is None:
                    continue
                k, t, s = other_items.column(column)
                if len(k) == len(keys) and _signature(k, t, other_items.tasks) == signature:
                    members.append(other)
                    columns.append(s)
            rng = self._rng(run.scenario, run.seed, column, signature)
            rows = self.resamples * self.slots[run.scenario]
            out = resampled_scores(task, np.stack(columns, axis=1), rows, rng)
            for j, member in enumerate(members):
                self._vectors[(_run_key(member), column, signature)] = out[:, j]
        return self._vectors[(_run_key(run), column, signature)]

    def _rng(self, scenario: str, seed: int, column: str, signature: str) -> np.random.Generator:
        return np.random.default_rng(derive_seed(self.seed, "items", scenario, seed, column, signature))


def _run_key(run: Run) -> str:
    """A run's scoring: its directory, and the view where a report row is another scoring of the same run."""
    return f"{run.path}#{run.view}"


def _fallback(student: Difference, reason: str) -> Difference:
    """The Student-t difference, noting why the bootstrap could not be used."""
    return Difference(
        student.against, student.mean, student.half_width, student.n, student.per_seed,
        p_value=student.p_value, note=reason,
    )  # fmt: skip
