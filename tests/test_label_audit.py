"""The hand check of a step labeller: sampling, the audit file, agreement and kappa by hand."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from core.cli.main import main
from core.data.label_audit import (
    audit_agreement,
    question_of,
    read_audit,
    sample_audit,
    write_audit,
)
from core.data.traces import TraceFileError, trace_from_dict

PROMPT = "Example.\nQuestion: Mia has 4 pens.\n4 + 3 = 7\n\nQuestion: Tom has 5 cats.\nSolve it."


def _trace(i: int, labels: list[int | None]) -> object:
    return trace_from_dict({
        "id": f"c{i}", "prompt": PROMPT,
        "steps": [{"text": f"step {i}.{j}", "label": lab} for j, lab in enumerate(labels)],
        "label_reasons": ["" if lab != 1 else f"reason {i}.{j}" for j, lab in enumerate(labels)],
    })


def test_question_is_the_last_question_line() -> None:
    assert question_of(PROMPT) == "Tom has 5 cats."
    assert question_of("no marker here") == "no marker here"


def test_sample_takes_distinct_labelled_steps_with_context() -> None:
    traces = [_trace(0, [0, 1, None]), _trace(1, [1, 0])]
    items = sample_audit(traces, n=10, seed=3)
    assert sorted(item.id for item in items) == ["c0#0", "c0#1", "c1#0", "c1#1"]  # no null
    second = next(item for item in items if item.id == "c0#1")
    assert second.previous_steps == ("step 0.0",)
    assert (second.step, second.rule_label, second.rule_reason) == ("step 0.1", 1, "reason 0.1")
    assert second.question == "Tom has 5 cats." and second.human_label is None
    assert [i.id for i in sample_audit(traces, 2, seed=3)] == \
        [i.id for i in sample_audit(traces, 2, seed=3)]
    with pytest.raises(ValueError, match="No step"):
        sample_audit([_trace(2, [None])], n=1)


def test_agreement_and_kappa_by_hand() -> None:
    base = sample_audit([_trace(0, [1, 1, 1, 0]), _trace(1, [0, 0])], n=6, seed=0)
    human = {"c0#0": 1, "c0#1": 1, "c0#2": 0, "c0#3": 0, "c1#0": 0, "c1#1": None}
    items = [replace(item, human_label=human[item.id]) for item in base]
    result = audit_agreement(items)
    # judged: rule (1,1,1,0,0) vs human (1,1,0,0,0): 4 of 5 agree
    assert (result.n_judged, result.n_unjudged, result.n_agree) == (5, 1, 4)
    assert result.confusion == {"rule0_human0": 2, "rule0_human1": 0, "rule1_human0": 1,
                                "rule1_human1": 2}
    # p_o = 0.8; p_e = 0.6 * 0.4 + 0.4 * 0.6 = 0.48; kappa = 0.32 / 0.52
    assert result.kappa == pytest.approx(0.32 / 0.52)
    assert result.ci_low < 0.8 < result.ci_high
    assert [item.id for item in result.disagreements] == ["c0#2"]
    with pytest.raises(ValueError, match="human_label"):
        audit_agreement(base)


def test_audit_file_round_trip_and_bad_lines(tmp_path: Path) -> None:
    items = sample_audit([_trace(0, [1, 0])], n=2)
    path = tmp_path / "audit.jsonl"
    write_audit(items, path)
    assert read_audit(path) == items
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["human_label"] = "yes"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(TraceFileError, match=r"audit.jsonl.*2.*human_label"):
        read_audit(path)


def test_cli_sample_then_score(tmp_path: Path, capsys) -> None:
    traces = tmp_path / "t.jsonl"
    traces.write_text("".join(json.dumps({
        "id": f"c{i}", "prompt": "Question: q?", "steps": [
            {"text": "a = 1", "label": 0}, {"text": "b = 2", "label": 1}]}) + "\n"
        for i in range(3)))
    audit = tmp_path / "audit.jsonl"
    assert main(["audit-sample", "--traces", str(traces), "--n", "4", "--out", str(audit)]) == 0
    rows = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:  # the reader disagrees with the rule on every label-1 step
        row["human_label"] = 0
    audit.write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(["audit-score", str(audit), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    n_rule_pos = sum(r["rule_label"] for r in rows)
    assert report["n_agree"] == 4 - n_rule_pos
    assert len(report["disagreements"]) == n_rule_pos
