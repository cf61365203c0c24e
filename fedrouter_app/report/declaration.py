"""A comparison's declaration: the proposed method, its comparators and its claims, fixed before the runs.

Picking the "best baseline" after the runs, per column, and reading dozens of
intervals without correction lets chance pick the story. A sweep preset
therefore declares up front what it tests (``report:`` in the preset, a
section of every run's config, see :class:`fedrouter_app.schema.settings.ReportSettings`)::

    report:
      proposed: fedrouter
      comparators: [fedit, local, ifca, fltac]
      label_free_baseline: ifca
      claims: ["dual:all", "cross_task:other_clients", "unseen:held_out"]

Every run records it (``results.json``'s ``config.report``), so the report
reads it from the runs; ``--preset`` reads it from a preset file instead, for
runs from before the declaration was recorded. Runs that declare must agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from fedrouter_app.report.runs import Run
from fedrouter_app.schema.outputs import CLAIM_COLUMNS


@dataclass(frozen=True)
class Declaration:
    """What a comparison set out to show (see the module docstring).

    ``comparators`` holds the label-free baseline too (last, unless listed),
    so the family of tests is every comparator x every claim.
    """

    proposed: str
    comparators: tuple[str, ...]
    label_free_baseline: str | None
    claims: tuple[tuple[str, str], ...]
    source: str
    views: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, block: Mapping[str, Any] | None, source: str) -> Declaration | None:
        """A declaration from a ``report:`` block; None when it declares nothing.

        Raises
        ------
        ValueError
            On a block that declares part of what is needed, or a malformed claim.
        """
        block = block or {}
        proposed = block.get("proposed")
        comparators = [str(c) for c in block.get("comparators") or []]
        label_free = block.get("label_free_baseline")
        claims = [str(c) for c in block.get("claims") or []]
        if not (proposed or comparators or label_free or claims):
            return None
        if not proposed or not (comparators or label_free) or not claims:
            raise ValueError(f"{source}: a report declaration needs proposed, comparators and claims")
        parsed = []
        for claim in claims:
            scenario, _, column = claim.partition(":")
            if not scenario or column not in CLAIM_COLUMNS:
                raise ValueError(
                    f"{source}: claim {claim!r} must be 'scenario:column' with column one of {', '.join(CLAIM_COLUMNS)}"
                )
            parsed.append((scenario, column))
        names = list(dict.fromkeys([*comparators, *([str(label_free)] if label_free else [])]))
        if str(proposed) in names:
            raise ValueError(f"{source}: the proposed method {proposed!r} is also a comparator")
        views = tuple(str(v) for v in block.get("views") or [])
        for view in views:
            if not view.partition(":")[2]:
                raise ValueError(f"{source}: view {view!r} must be 'method:view'")
        label = str(label_free) if label_free else None
        return cls(str(proposed), tuple(names), label, tuple(parsed), source, views)

    def to_json(self) -> dict[str, Any]:
        return {
            "proposed": self.proposed,
            "comparators": list(self.comparators),
            "label_free_baseline": self.label_free_baseline,
            "claims": [f"{scenario}:{column}" for scenario, column in self.claims],
            "views": list(self.views),
            "source": self.source,
        }

    def same_as(self, other: Declaration) -> bool:
        """Whether two declarations declare the same thing (wherever they come from)."""
        return {**self.to_json(), "source": ""} == {**other.to_json(), "source": ""}


def runs_declaration(runs: Sequence[Run]) -> Declaration | None:
    """The declaration the runs recorded (None if none did).

    Raises
    ------
    ValueError
        When runs declare different things: the report would not know which was made first.
    """
    found: dict[str, Declaration] = {}
    for run in runs:
        declared = Declaration.from_mapping(run.config.get("report"), f"run {run.path.name}")
        if declared is not None:
            found.setdefault(repr({**declared.to_json(), "source": ""}), declared)
    if len(found) > 1:
        first, second = list(found.values())[:2]
        raise ValueError(f"runs declare different comparisons ({first.source} and {second.source}); report them apart")
    if not found:
        return None
    only = next(iter(found.values()))
    return replace(only, source="the runs' config")


def preset_declaration(path: Path) -> Declaration | None:
    """The ``report:`` block of a sweep preset file (None if it has none).

    Raises
    ------
    ValueError
        If the file is not YAML or its block is malformed.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read preset {path}: {str(err).splitlines()[0]}") from None
    return Declaration.from_mapping((data or {}).get("report"), str(path))


def choose(runs: Sequence[Run], preset: Path | None) -> Declaration | None:
    """The declaration to judge ``runs`` by: the runs', or the preset's (they must agree where both exist)."""
    recorded = runs_declaration(runs)
    if preset is None:
        return recorded
    given = preset_declaration(preset)
    if given is None:
        raise ValueError(f"preset {preset} has no report: block to declare comparators and claims")
    if recorded is not None and not recorded.same_as(given):
        raise ValueError(f"preset {preset} declares another comparison than the runs recorded")
    return given
