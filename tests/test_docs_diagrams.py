"""The mermaid diagrams of docs/ avoid what makes mermaid fail to parse them ("Syntax error in text").

A cheap guard, not a parser: in a sequence diagram a ``;`` or ``#`` ends the
text of a note or message (mermaid reads ``;`` as the end of a statement and
``#`` as the start of an entity code), so whatever follows is a syntax error;
an unbalanced double quote opens a label that never closes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MERMAID = re.compile(r"^```mermaid[^\n]*\n(.*?)^```", re.M | re.S)
DIAGRAM_TYPES = ("flowchart", "graph", "sequenceDiagram", "stateDiagram", "classDiagram", "erDiagram", "gantt", "pie")
# A line of a sequence diagram that carries free text after its first colon: a note or a message.
SEQUENCE_TEXT = re.compile(r"^\s*(?:Note\s+(?:over|left of|right of)\s[^:]*|[^:]*?(?:->|-x|-\))[^:]*):")
PARTICIPANT = re.compile(r"^\s*(?:participant|actor)\s")
QUOTED = re.compile(r'"[^"]*"')


def diagrams(text: str) -> list[str]:
    """The body of every ```mermaid fence of a Markdown text."""
    return [match.group(1) for match in MERMAID.finditer(text)]


def hazards(diagram: str) -> list[str]:
    """Lines of one mermaid diagram that mermaid would not parse as meant, each with the reason."""
    lines = diagram.splitlines()
    kind = next((line.split()[0] for line in lines if line.strip()), "")
    problems = []
    if kind not in DIAGRAM_TYPES:
        problems.append(f"unknown diagram type {kind!r}")
    for number, line in enumerate(lines, 1):
        if line.count('"') % 2:
            problems.append(f"line {number}: unbalanced double quote: {line.strip()}")
        if kind == "sequenceDiagram":
            head = SEQUENCE_TEXT.match(line) or PARTICIPANT.match(line)
            text = line[head.end() :] if head else ""
            for char in ";#":
                if char in text:
                    problems.append(f"line {number}: {char!r} ends the text early: {line.strip()}")
        elif kind in ("flowchart", "graph") and ";" in QUOTED.sub("", line).rstrip().rstrip(";"):
            problems.append(f"line {number}: ';' outside a quoted label ends the statement: {line.strip()}")
    return problems


PAGES = sorted(path for path in DOCS.rglob("*.md") if diagrams(path.read_text(encoding="utf-8")))


def test_the_docs_have_diagrams_to_check():
    assert PAGES, "no ```mermaid block found under docs/: has the fence's name changed?"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_mermaid_diagram_is_free_of_syntax_hazards(path):
    for index, diagram in enumerate(diagrams(path.read_text(encoding="utf-8")), 1):
        assert hazards(diagram) == [], f"diagram {index} of {path.relative_to(ROOT)}"


def test_the_guard_catches_what_breaks_a_sequence_diagram():
    bad = (
        "sequenceDiagram\n"
        "    participant S as Server\n"
        "    Note over S: into n_global clusters; each local cluster is assigned one\n"
        "    S->>C: evaluate: adapters #1 and #2\n"
        '    S->>C: "an open quote\n'
    )
    found = hazards(bad)
    assert [problem.split(":")[0] for problem in found] == ["line 3", "line 4", "line 5"], found
    assert hazards("sequenceDiagram\n    Note over S: global k-means, then one cluster each\n") == []


def test_the_guard_catches_a_semicolon_outside_a_flowchart_label():
    assert hazards('flowchart TD\n    a["x; y"] --> b\n') == []
    assert hazards("flowchart TD\n    a --> b; b --> c\n") != []
    assert hazards("flowchart TD\n    a --> b;\n") == []
