"""Hand audits of machine labels: sampling each kind, the generic file format (and the first
format), agreement and kappa per field by hand, and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from core.cli.main import main
from core.data.label_audit import (
    AuditItem,
    cohen_kappa,
    question_of,
    read_audit,
    sample_audit,
    score_audit,
    write_audit,
)
from core.data.traces import TraceFileError, trace_from_dict

PROMPT = "Example.\nQuestion: Mia has 4 pens.\n4 + 3 = 7\n\nQuestion: Tom has 5 cats.\nSolve it."


def _trace(i: int, labels: list[int | None], **more: object) -> object:
    return trace_from_dict({
        "id": f"c{i}", "prompt": PROMPT,
        "steps": [{"text": f"step {i}.{j}", "label": lab} for j, lab in enumerate(labels)],
        "label_reasons": ["" if lab != 1 else f"reason {i}.{j}" for j, lab in enumerate(labels)],
        **more})


def test_question_is_the_last_question_line() -> None:
    assert question_of(PROMPT) == "Tom has 5 cats."
    assert question_of("no marker here") == "no marker here"


def test_steps_sample_distinct_labelled_steps_with_context() -> None:
    traces = [_trace(0, [0, 1, None]), _trace(1, [1, 0])]
    items = sample_audit(traces, n=10, seed=3)
    assert sorted(item.id for item in items) == ["c0#0", "c0#1", "c1#0", "c1#1"]  # no null
    second = next(item for item in items if item.id == "c0#1")
    assert second.kind == "steps" and second.source == "c0" and second.text == "step 0.1"
    assert second.context == "Question: Tom has 5 cats.\nSteps before:\n1. step 0.0"
    assert second.machine == {"label": 1} and second.human == {"label": None}
    assert second.info["reason"] == "reason 0.1" and not second.judged
    assert [i.id for i in sample_audit(traces, 2, seed=3)] == \
        [i.id for i in sample_audit(traces, 2, seed=3)]
    with pytest.raises(ValueError, match="No labelled step"):
        sample_audit([_trace(2, [None])], n=1)


def test_judge_and_answer_samples() -> None:
    judged = trace_from_dict({"id": "j", "prompt": PROMPT, "is_correct": False,
                              "step_labeller": "judge:endpoint:stub", "steps": [
                                  {"text": "a", "label": 0, "prefix_label": 0},
                                  {"text": "b", "label": 1, "prefix_label": 1}]})
    items = sample_audit([judged, _trace(0, [1, 0])], n=5, kind="judge")
    assert {item.id for item in items} == {"j#0", "j#1"}  # rule-labelled chains left out
    assert all(set(item.machine) == {"label", "prefix_label"} for item in items)
    reply = trace_from_dict({"id": "r", "prompt": PROMPT, "response": "5 + 2 = 7\nAnswer: 7",
                             "answer": "7", "answered": True, "gold": "7", "is_correct": True})
    [item] = sample_audit([reply, _trace(3, [0])], n=5, kind="answers")  # needs a gold
    assert item.machine == {"answered": True, "answer": "7", "is_correct": True}
    assert item.text == "5 + 2 = 7\nAnswer: 7" and item.info == {"gold": "7"}
    with pytest.raises(ValueError, match="Unknown audit kind"):
        sample_audit([reply], 1, kind="vibes")


def test_agreement_and_kappa_by_hand() -> None:
    base = sample_audit([_trace(0, [1, 1, 1, 0]), _trace(1, [0, 0])], n=6, seed=0)
    human = {"c0#0": 1, "c0#1": 1, "c0#2": 0, "c0#3": 0, "c1#0": 0, "c1#1": None}
    items = [replace(item, human={"label": human[item.id]}) for item in base]
    score = score_audit(items)
    result = score.field("label")
    # judged: machine (1,1,1,0,0) vs human (1,1,0,0,0): 4 of 5 agree
    assert (score.n_judged, score.n_unjudged, result.n_agree) == (5, 1, 4)
    assert result.confusion == {"machine0_human0": 2, "machine0_human1": 0,
                                "machine1_human0": 1, "machine1_human1": 2}
    # p_o = 0.8; p_e = 0.6 * 0.4 + 0.4 * 0.6 = 0.48; kappa = 0.32 / 0.52
    assert result.kappa == pytest.approx(0.32 / 0.52)
    assert result.ci_low < 0.8 < result.ci_high
    assert [item.id for item in result.disagreements] == ["c0#2"]
    with pytest.raises(ValueError, match="No item is judged"):
        score_audit(base)


def test_answer_fields_compare_as_answers() -> None:
    def item(i: int, machine: dict, human: dict) -> AuditItem:
        return AuditItem(str(i), "answers", "s", "q", "reply", machine, human)

    items = [
        item(0, {"answered": True, "answer": "14", "is_correct": True},
             {"answered": True, "answer": "14.0", "is_correct": True}),  # same number
        item(1, {"answered": False, "answer": None, "is_correct": False},
             {"answered": False, "answer": None, "is_correct": False}),  # judged: none stated
        item(2, {"answered": True, "answer": "9", "is_correct": False},
             {"answered": False, "answer": None, "is_correct": False}),  # the reader disagrees
    ]
    score = score_audit(items)
    assert score.n_judged == 3
    assert [(f.field, f.n_agree) for f in score.fields] == [
        ("answered", 2), ("answer", 2), ("is_correct", 3)]
    assert score.field("answer").confusion == {}  # not a 0/1 field
    assert score.field("is_correct").kappa == pytest.approx(1.0)
    # answered: machine (1, 0, 1), human (1, 0, 0): p_o 2/3, p_e 2/3*1/3 + 1/3*2/3 = 4/9
    assert score.field("answered").kappa == pytest.approx((2 / 3 - 4 / 9) / (1 - 4 / 9))
    assert cohen_kappa([(1, 1), (1, 1)]) is None  # one category: undefined


def test_audit_file_round_trip_and_bad_lines(tmp_path: Path) -> None:
    items = sample_audit([_trace(0, [1, 0])], n=2)
    path = tmp_path / "audit.jsonl"
    write_audit(items, path)
    assert read_audit(path) == items
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["human"] = {"label": 0, "extra": 1}
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(TraceFileError, match=r"audit.jsonl.*2.*human"):
        read_audit(path)


def test_first_format_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({
        "id": "t#1", "trace_id": "t", "step_index": 1, "question": "Q?", "previous_steps": ["a"],
        "step": "b", "rule_label": 1, "rule_reason": "why", "human_label": 0, "note": "n"}) + "\n")
    [item] = read_audit(path)
    assert (item.kind, item.source, item.text, item.note) == ("steps", "t", "b", "n")
    assert item.machine == {"label": 1} and item.human == {"label": 0}
    assert item.context == "Question: Q?\nSteps before:\n1. a"
    assert item.info == {"step_index": 1, "reason": "why"}
    assert score_audit([item]).field("label").n_agree == 0


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
        row["human"]["label"] = 0
    audit.write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(["audit-score", str(audit), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    n_rule_pos = sum(r["machine"]["label"] for r in rows)
    assert report["fields"]["label"]["n_agree"] == 4 - n_rule_pos
    assert len(report["fields"]["label"]["disagreements"]) == n_rule_pos
    assert main(["audit-score", str(audit)]) == 0
    assert "label: " in capsys.readouterr().out
