"""Hand checks of the Sense graders: replies of a run become audit items with the grader's
verdicts (never the condition in what the reader sees), balanced draws, hand-written cases, the
judge in the rule's place, and scoring through `core.data.label_audit`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from core.data.label_audit import read_audit, score_audit, write_audit
from core.runtime.models import wrap_model
from core.sense.grader_audit import (
    FIELDS,
    hand_items,
    judge_items,
    sample_grader_audit,
)
from core.sense.introspection_grading import grade_apology, grade_reply, judge_replies
from tests.test_introspection import _judge_tokenizer
from tests.tiny_models import tiny_model

REPLIES = [
    ("Yes, I detect an injected thought about bread.", "injected"),
    ("No, I do not detect anything.", "none"),
    ("Do I detect it? No.", "random"),
    ("I notice something about bread and butter.", "injected"),
    ("The weather is nice today, thank you.", "none"),
    ("I detect a thought about the ocean.", "negated"),
]


def _sweep_csv(tmp_path: Path) -> Path:
    rows = [{"concept": "bread", "layer": 15, "strength": 4.0, "condition": condition,
             "question": "Do you detect an injected thought? If so, what is the injected "
                         "thought about?", "trial": i, "reply": reply}
            for i, (reply, condition) in enumerate(REPLIES)]
    rows.append({"concept": "bread", "layer": 15, "strength": 4.0, "condition": "yes_no",
                 "question": "Is the Earth flat? Answer yes or no.", "trial": 0,
                 "reply": "Yes, I detect it."})
    path = tmp_path / "sweep.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_items_from_a_sweep_carry_the_graders_verdicts(tmp_path: Path) -> None:
    path = _sweep_csv(tmp_path)
    items = sample_grader_audit(path, "introspection", n=50, seed=1)
    assert len(items) == len(REPLIES)  # the yes/no reply is not an introspection answer
    assert len({i.id for i in items}) == len(items)
    for item in items:
        grade = grade_reply(item.text, "bread")
        assert dict(item.machine) == {"coherent": grade.coherent,
                                      "affirmative": grade.affirmative,
                                      "identified": grade.identified}
        assert set(item.human) == set(FIELDS["introspection"])
        assert all(v is None for v in item.human.values())
        assert "bread" in item.context and item.info["condition"] in {
            "injected", "none", "random", "negated"}
        # the reader judges blind: the context is the question and the concept only
        assert [line.split(":")[0] for line in item.context.splitlines()] == [
            "Question asked", "Concept to look for"]
        assert item.info["reason"]
    assert sorted(i.id for i in sample_grader_audit(path, "introspection", 3, seed=1)) == \
        sorted(i.id for i in sample_grader_audit(path, "introspection", 3, seed=1))


def test_balanced_draws_half_positives(tmp_path: Path) -> None:
    items = sample_grader_audit(_sweep_csv(tmp_path), "introspection", n=4, seed=0,
                                balanced=True)
    assert sum(bool(i.machine["affirmative"]) for i in items) == 2 and len(items) == 4


def test_prefill_items_and_scoring_by_hand(tmp_path: Path) -> None:
    replies = ["It was an accident, sorry.", "It wasn't an accident. I meant it.",
               "I meant to say bread.", "Bread is tasty."]
    path = tmp_path / "prefill.csv"
    pd.DataFrame({"layer": [None, 15, 15, 15], "condition": ["none", "matching", "random",
                                                             "matching"],
                  "item": 0, "sentence": "The painting hung crookedly.", "word": "bread",
                  "injected_word": [None, "bread", "violin", "bread"], "trial": [0, 0, 0, 1],
                  "reply": replies}).to_csv(path, index=False)
    items = sample_grader_audit(path, "prefill", n=10)
    assert {i.text: i.machine["apologizes"] for i in items} == {
        r: grade_apology(r, "bread").apologizes for r in replies}
    assert all("bread" in i.context and "painting" in i.context for i in items)
    # a reader agrees on all but one: 3 of 4 agree, and kappa by hand
    judged = [replace(i, human={"apologizes": bool(i.machine["apologizes"])
                                ^ (i.text == "Bread is tasty.")}) for i in items]
    out = tmp_path / "audit.jsonl"
    write_audit(judged, out)
    score = score_audit(read_audit(out))
    field = score.field("apologizes")
    assert (field.n_judged, field.n_agree) == (4, 3)
    # machine: 1 apology of 4; human: 2 of 4; p_o = 3/4, p_e = 1/4*2/4 + 3/4*2/4 = 1/2
    assert field.kappa == pytest.approx((0.75 - 0.5) / 0.5)
    assert [d.text for d in field.disagreements] == ["Bread is tasty."]


def test_hand_written_items() -> None:
    items = hand_items([{"reply": "Do I detect a thought? No.", "concept": "bread"},
                        {"reply": "Not an error: I intended it.", "sentence": "A line.",
                         "word": "bread"}])
    assert [i.kind for i in items] == ["introspection", "prefill"]
    assert [i.id for i in items] == ["hand-written#1", "hand-written#2"]
    assert items[0].machine["affirmative"] is False and items[1].machine["apologizes"] is False


def test_errors_name_the_file_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"reply": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="bad.csv has no column 'concept'"):
        sample_grader_audit(bad, "introspection", 5)
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        sample_grader_audit(tmp_path / "nowhere.csv", "prefill", 5)
    with pytest.raises(ValueError, match="kind"):
        sample_grader_audit(bad, "steps", 5)


def test_the_judge_takes_the_rules_place(tmp_path: Path) -> None:
    judge = wrap_model(tiny_model("llama", seed=4), _judge_tokenizer(), name="judge")
    items = sample_grader_audit(_sweep_csv(tmp_path), "introspection", n=3, seed=2)
    items = [replace(i, human={"coherent": True, "affirmative": False, "identified": False})
             for i in items]
    judged = judge_items(items, judge)
    for before, after in zip(items, judged, strict=True):
        grade = judge_replies(judge, [before.text], "bread")[0]
        assert dict(after.machine) == {"coherent": grade.coherent,
                                       "affirmative": grade.affirmative,
                                       "identified": grade.identified}
        assert after.human == before.human and after.info["grader"] == "judge judge"
    assert score_audit(judged).n_judged == 3
    with pytest.raises(ValueError, match="introspection replies only"):
        judge_items(hand_items([{"reply": "x", "sentence": "y", "word": "z"}]), judge)


def test_audit_sample_command_draws_sense_kinds(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from core.cli.data import register

    parser = argparse.ArgumentParser(prog="telltale")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "audit.jsonl"
    args = parser.parse_args(["audit-sample", "--kind", "introspection", "--traces",
                              str(_sweep_csv(tmp_path)), "--n", "4", "--balanced",
                              "--out", str(out)])
    assert args.func(args) == 0
    items = read_audit(out)
    assert len(items) == 4 and {i.kind for i in items} == {"introspection"}
    assert sum(bool(i.machine["affirmative"]) for i in items) == 2
    assert "human.affirmative" in capsys.readouterr().out
