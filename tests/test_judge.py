"""The judge: strict parsing of verdicts, the prompt file, an OpenAI-compatible endpoint (a stub
server on 127.0.0.1 with canned and malformed replies), a tiny random local model, retries,
the cache and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data.judge import (
    DEFAULT_PROMPT_FILE,
    EndpointJudge,
    JudgeItem,
    JudgePrompt,
    JudgeUnavailable,
    LocalJudge,
    StepVerdict,
    VerdictError,
    api_key,
    judge_items,
    parse_verdicts,
)
from core.runtime.models import wrap_model
from tests.judge_stub import JudgeStub, n_steps, verdicts_for_every_step
from tests.tiny_models import tiny_model, tiny_tokenizer

ITEMS = [JudgeItem("What is 2 + 2?", ("2 + 2 = 4", "Answer: 4"), "4", "4"),
         JudgeItem("What is 3 + 3?", ("3 + 3 = 7", "so 7", "Answer: 7"), "6", "7"),
         JudgeItem("What is 1 + 1?", ("1 + 1 = 2",), "2", None)]


def verdicts(*pairs: tuple[bool, bool]) -> str:
    return json.dumps({"steps": [{"step": k, "wrong": w, "wrong_path": p}
                                 for k, (w, p) in enumerate(pairs, start=1)]})


# ---------------------------------------------------------------------------- parsing


def test_parse_valid_replies() -> None:
    expected = (StepVerdict(False, False), StepVerdict(True, True))
    assert parse_verdicts(verdicts((False, False), (True, True)), 2) == expected
    fenced = "```json\n" + verdicts((False, False), (True, True)) + "\n```"
    assert parse_verdicts(fenced, 2) == expected
    thought = "<think>step 2 is off</think>\n" + verdicts((False, False), (True, True))
    assert parse_verdicts(thought, 2) == expected
    with_reason = json.dumps({"steps": [{"step": 1, "wrong": True, "wrong_path": True,
                                         "reason": "7 is not 6"}]})
    assert parse_verdicts(with_reason, 1) == (StepVerdict(True, True),)


@pytest.mark.parametrize(("reply", "message"), [
    ("Step 1 is fine.", "not one JSON object"),
    ("Sure! " + verdicts((False, False)), "not one JSON object"),
    (json.dumps([{"step": 1}]), 'no "steps" list'),
    (verdicts((False, False)), "has 1 entries; the chain has 2 steps"),
    (json.dumps({"steps": [{"step": 2, "wrong": False, "wrong_path": False},
                           {"step": 1, "wrong": False, "wrong_path": False}]}), '"step": 2'),
    (json.dumps({"steps": [{"step": 1, "wrong": "no", "wrong_path": False},
                           {"step": 2, "wrong": False, "wrong_path": False}]}), '"wrong": "no"'),
    (json.dumps({"steps": [{"step": 1, "wrong": 0, "wrong_path": False},
                           {"step": 2, "wrong": False, "wrong_path": False}]}), '"wrong": 0'),
])
def test_parse_is_strict(reply: str, message: str) -> None:
    with pytest.raises(VerdictError, match=message):
        parse_verdicts(reply, 2)


def test_prompt_file_and_placeholders(tmp_path: Path) -> None:
    default = JudgePrompt.load()
    assert default.source == str(DEFAULT_PROMPT_FILE) and len(default.sha256) == 64
    text = default.render(ITEMS[1])
    assert "Step 1: 3 + 3 = 7\nStep 2: so 7\nStep 3: Answer: 7" in text
    assert "Correct final answer: 6" in text and "k = 1 .. 3" in text
    assert '{"steps": [{"step": 1' in text  # JSON braces are left alone
    assert "(none stated)" in default.render(ITEMS[2])
    mine = tmp_path / "judge.txt"
    mine.write_text("Q {question} S {steps} {unknown}")
    assert JudgePrompt.load(mine).render(ITEMS[2]) == \
        "Q What is 1 + 1? S Step 1: 1 + 1 = 2 {unknown}"
    mine.write_text("no steps here")
    with pytest.raises(ValueError, match="{steps}"):
        JudgePrompt.load(mine)
    with pytest.raises(ValueError, match="Cannot read"):
        JudgePrompt.load(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------- endpoint


def test_endpoint_labels_every_chain_and_sends_the_key(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TELLTALE_JUDGE_API_KEY", "sk-test")
    with JudgeStub() as stub:
        judge = EndpointJudge(stub.url, "stub", api_key())
        run = judge_items(judge, JudgePrompt.load(), ITEMS, tmp_path / "cache.jsonl")
    assert run.n_requests == 3 and run.n_cached == 0 and run.n_failed == 0
    assert [len(r.verdicts or ()) for r in run.results] == [2, 3, 1]
    assert stub.headers[0]["authorization"] == "Bearer sk-test"
    assert stub.requests[0]["model"] == "stub" and stub.requests[0]["temperature"] == 0
    expected = [verdicts_for_every_step(body) for body in stub.requests]
    got = [json.dumps({"steps": [{"step": k, "wrong": v.wrong, "wrong_path": v.wrong_path}
                                 for k, v in enumerate(r.verdicts or (), start=1)]})
           for r in run.results]
    assert got == expected


def test_malformed_replies_are_retried_then_left_null_and_cached(tmp_path) -> None:
    asked: dict[str, int] = {}

    def flaky(body):
        question = body["messages"][0]["content"].split("Problem:\n")[1].split("\n")[0]
        asked[question] = asked.get(question, 0) + 1
        if "2 + 2" in question:  # malformed once, then right
            return "I think it is fine." if asked[question] == 1 else verdicts_for_every_step(body)
        if "3 + 3" in question:  # always malformed: too few entries, then not JSON
            return verdicts((True, True)) if asked[question] % 2 else "{oops"
        return verdicts_for_every_step(body)

    cache = tmp_path / "cache.jsonl"
    with JudgeStub(flaky) as stub:
        judge = EndpointJudge(stub.url, "stub")
        run = judge_items(judge, JudgePrompt.load(), ITEMS, cache, max_attempts=3)
        first = len(stub.requests)
        again = judge_items(judge, JudgePrompt.load(), ITEMS, cache, max_attempts=3)
    assert first == 2 + 3 + 1 and run.n_requests == first
    retry = next(body for body in stub.requests if len(body["messages"]) == 3)
    assert retry["messages"][1] == {"role": "assistant", "content": "I think it is fine."}
    assert "could not be read: the reply is not one JSON object" in \
        retry["messages"][2]["content"]
    right, broken, _ = run.results
    assert right.verdicts is not None and right.attempts == 2
    assert broken.verdicts is None and broken.attempts == 3 and run.n_failed == 1
    assert "has 1 entries" in (broken.error or "")  # the last attempt's error
    # a rerun asks nothing: verdicts and failures come from the cache
    assert again.n_requests == 0 and again.n_cached == 3 and len(stub.requests) == first
    assert [r.verdicts for r in again.results] == [r.verdicts for r in run.results]
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert lines[0]["kind"] == "telltale-judge-cache" and len(lines) == 4
    # another prompt is another key: asked again
    other = JudgePrompt("Check these:\n{steps}", "mine")
    with JudgeStub() as stub:
        third = judge_items(EndpointJudge(stub.url, "stub"), other, ITEMS[:1], cache)
    assert third.n_requests == 1


def test_unreachable_judge_raises_and_the_run_resumes(tmp_path) -> None:
    count = {"n": 0}

    def fails_on_the_second(body):
        count["n"] += 1
        return 400 if count["n"] == 2 else verdicts_for_every_step(body)

    cache = tmp_path / "cache.jsonl"
    with JudgeStub(fails_on_the_second) as stub:
        with pytest.raises(JudgeUnavailable, match="did not answer"):
            judge_items(EndpointJudge(stub.url, "stub"), JudgePrompt.load(), ITEMS, cache)
    with JudgeStub() as stub:
        run = judge_items(EndpointJudge(stub.url, "stub"), JudgePrompt.load(), ITEMS, cache)
    assert run.n_cached == 1 and run.n_requests == 2 and len(stub.requests) == 2
    assert run.n_failed == 0


def test_parallel_workers_and_duplicate_chains(tmp_path) -> None:
    items = [ITEMS[0], ITEMS[1], ITEMS[0]]  # the same chain twice: asked once
    with JudgeStub() as stub:
        run = judge_items(EndpointJudge(stub.url, "stub"), JudgePrompt.load(), items,
                          tmp_path / "c.jsonl", workers=3)
    assert len(stub.requests) == 2 and run.results[0] == run.results[2]
    assert sorted(n_steps(body) for body in stub.requests) == [2, 3]


# ---------------------------------------------------------------------------- local


def test_local_judge_on_a_tiny_random_model(tmp_path, one_torch_thread) -> None:
    chat = "{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}w5 "
    loaded = wrap_model(tiny_model("llama"), tiny_tokenizer(chat), name="tiny")
    judge = LocalJudge(loaded)
    assert judge.name == "local:tiny"
    run = judge_items(judge, JudgePrompt.load(), ITEMS[:2], tmp_path / "c.jsonl",
                      max_attempts=2)
    # random words are never the verdicts asked for: null labels, counted, never guessed
    assert run.n_failed == 2 and run.n_requests == 4
    assert all(r.verdicts is None and r.attempts == 2 for r in run.results)
    again = judge_items(judge, JudgePrompt.load(), ITEMS[:2], tmp_path / "c.jsonl",
                        max_attempts=2)
    assert again.n_requests == 0
