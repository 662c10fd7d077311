"""The judged reply samples shipped under sample_traces/audits/: at least 100 replies per grader,
every item judged, the machine verdicts those of the graders as they are now (a grader change
that moves a verdict must come with the audit scored again), and a note on every disagreement."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.data.label_audit import read_audit, score_audit
from core.sense.grader_audit import FIELDS, rule_verdicts

AUDITS = Path(__file__).resolve().parents[1] / "sample_traces" / "audits"


@pytest.mark.parametrize("kind", ["introspection", "prefill"])
def test_shipped_grader_audit(kind: str) -> None:
    items = read_audit(AUDITS / f"{kind}.jsonl")
    assert {item.kind for item in items} == {kind}
    assert len(items) >= 100
    model = [item for item in items if not item.source.startswith("hand-written")]
    assert len(model) >= 100, "at least 100 of the default model's own replies"
    for item in items:
        assert all(item.human.get(f) is not None for f in FIELDS[kind]), item.id
        machine, _ = rule_verdicts(item)
        assert machine == dict(item.machine), f"{item.id}: the grader changed; score again"
        if machine != {f: bool(item.human[f]) for f in FIELDS[kind]}:
            assert item.note, f"{item.id}: a disagreement needs a note"
    score = score_audit(items)
    assert score.n_judged == len(items)
