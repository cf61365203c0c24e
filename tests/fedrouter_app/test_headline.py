"""The headline tables are read from report.json and put between markers, nothing copied by hand."""

import json
import math

import pytest

from fedrouter_app.markers import splice
from fedrouter_app.report.headline import headline, main


def stat(mean: float, std: float = 0.01) -> dict:
    return {"mean": mean, "std": std, "n": 3, "per_seed": {}}


def row(scenario: str, label: str, score: float, told: bool = False, diffs: dict | None = None) -> dict:
    return {
        "scenario": scenario,
        "label": label,
        "uses_task_labels": told,
        "all": stat(score),
        "held_out": stat(score / 2) if scenario == "unseen" else stat(math.nan),
        "train_steps": stat(5.0),
        "up": stat(1000.0),
        "differences": diffs or {},
    }


REPORT = {
    "proposed": "fedrouter",
    "reference": "fedit",
    "rows": [
        row(
            "dual",
            "fedrouter",
            0.30,
            diffs={
                "reference": {"all": {"mean": 0.1, "half_width": 0.05, "excludes_zero": True, "against": "fedit"}},
                "best_baseline": {
                    "all": {"mean": -0.02, "half_width": 0.04, "excludes_zero": False, "against": "fltac"}
                },
            },
        ),
        row("dual", "fedit", 0.20),
        row("dual", "fltac", 0.32, told=True),
        row("unseen", "fedrouter", 0.28),
        row("unseen", "fedit", 0.22),
    ],
}


def test_headline_lists_every_method_with_the_best_in_bold_and_the_paired_differences():
    text = headline(REPORT, [("dual", "all"), ("unseen", "held_out")])
    lines = text.splitlines()
    assert lines[0].startswith("Mean ± std over seeds (seeds per method: `dual` 3, `unseen` 3)")
    lines = lines[2:]
    assert lines[0].startswith("| method | label-free | all tasks (`dual`) | held-out tasks (`unseen`)")
    assert lines[2].startswith("| `fedrouter` | yes | 0.300 ± 0.010 | **0.140 ± 0.010** | 5.0 | 1,000 |")
    assert "| `fltac` | no | **0.320 ± 0.010** | - |" in text
    assert "| vs `fedit` | +0.100 ± 0.050 * | - |" in text
    assert "| vs the best baseline | -0.020 ± 0.040 (`fltac`) | - |" in text


def test_splice_replaces_only_between_the_markers(tmp_path):
    doc = "intro\n<!-- headline:start -->\nold table\n<!-- headline:end -->\nrest\n"
    assert splice(doc, "headline", "new\n") == "intro\n<!-- headline:start -->\nnew\n<!-- headline:end -->\nrest\n"
    with pytest.raises(ValueError, match="no '<!-- other:start -->'"):
        splice(doc, "other", "x")
    (tmp_path / "report.json").write_text(json.dumps(REPORT))
    (tmp_path / "README.md").write_text(doc)
    assert main([str(tmp_path / "report.json"), "--claim", "dual:all", "--into", str(tmp_path / "README.md")]) == 0
    written = (tmp_path / "README.md").read_text()
    assert written.startswith("intro\n<!-- headline:start -->\nMean ± std") and written.endswith("rest\n")
    assert main([str(tmp_path / "report.json"), "--claim", "dual:bogus"]) == 2
