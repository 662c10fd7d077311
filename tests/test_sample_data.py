"""make_traces on a tiny model: raw replies and strict outcomes, the problem split and its
sidecar, the three step labellers, both prefix conventions, and resuming from the journal."""

from __future__ import annotations

import json

import pytest

import core.data.sample_data as sd
from core.data.answers import AnswerFormat
from core.data.judge import StepVerdict
from core.data.problems import Problem, arith_problem_set
from core.data.sample_data import MakeTracesConfig, make_traces
from core.data.traces import read_traces
from core.runtime.generate import SamplingConfig
from core.runtime.models import wrap_model
from tests.tiny_models import tiny_model, tiny_tokenizer

CHAT = "{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}w5 "
SMALL = MakeTracesConfig(n=2, sampling=SamplingConfig(max_new_tokens=8), batch_size=3)


@pytest.fixture()
def loaded(one_torch_thread):
    return wrap_model(tiny_model("llama"), tiny_tokenizer(CHAT), name="tiny")


def test_split_by_problem_and_meta(loaded, tmp_path) -> None:
    config = MakeTracesConfig(n=2, sampling=SamplingConfig(max_new_tokens=8), batch_size=5,
                              test_share=0.34)
    summary = make_traces(loaded, arith_problem_set(6), tmp_path / "a.jsonl", config,
                          command="telltale make-traces ...")
    train = read_traces(tmp_path / "a_train.jsonl").traces
    test = read_traces(tmp_path / "a_test.jsonl").traces
    assert {t.problem_id for t in train}.isdisjoint({t.problem_id for t in test})
    assert len(train) + len(test) == summary.n_chains == 12 - summary.n_empty
    meta = json.loads((tmp_path / "a_test.meta.json").read_text())
    assert meta["schema_version"] == 2 and meta["regenerate"] == "telltale make-traces ..."
    assert meta["settings"]["prefix_labels"] == "paper" and meta["settings"]["n"] == 2
    assert meta["settings"]["answers"]["numeric"] is True  # arithmetic golds are numbers
    assert meta["outcome"]["n"] == len(test)
    assert (tmp_path / "a.replies.jsonl").exists()  # kept: a rerun reuses it


def test_chains_keep_the_raw_reply_and_strict_outcomes(loaded, tmp_path, monkeypatch) -> None:
    problems = [Problem("p0", "What is 2 + 2?", "4"), Problem("p1", "What is 3 + 3?", "6")]
    replies = iter(["  2 + 2 = 4\n\nAnswer: 4\n", "2 + 2 = 4\nso 4", "\n \n",
                    "3 + 3 = 7\nThe answer is 7.\n"])

    def canned(loaded, prompts, sampling, **kwargs):
        out = [next(replies) for _ in prompts]
        kwargs["on_batch"](0, out)
        return out

    monkeypatch.setattr(sd, "sample_replies", canned)
    summary = make_traces(loaded, problems, tmp_path / "c.jsonl", SMALL)
    traces = read_traces(tmp_path / "c.jsonl").traces
    assert summary.n_empty == 1 and [t.id for t in traces] == ["p0-c0", "p0-c1", "p1-c1"]
    first, unanswered, wrong = traces
    assert first.response == "  2 + 2 = 4\n\nAnswer: 4\n"  # as written, blank line and all
    assert [s.text for s in first.steps] == ["2 + 2 = 4", "Answer: 4"]
    assert first.steps[0].start == 2
    assert (first.answer, first.answered, first.is_correct) == ("4", True, True)
    assert (unanswered.answer, unanswered.answered, unanswered.is_correct) == (None, False,
                                                                              False)
    assert (wrong.answer, wrong.is_correct) == ("7", False)
    assert first.step_labels == [0, 0] and wrong.step_labels == [1, 0]
    # the paper's prefix labels: right answer -> 0 at the end; wrong or missing -> 1
    assert first.prefix_labels == [0, 0] and unanswered.prefix_labels == [0, 1]
    assert wrong.prefix_labels == [1, 1]
    assert wrong.extra["label_reasons"][0] == "false calculation: 3 + 3 = 7 (is 6)"
    assert first.extra["step_labeller"] == "rule"
    assert summary.outcome.n == 3 and summary.outcome.n_answered == 2
    assert summary.outcome.accuracy == pytest.approx(1 / 3)


def test_replies_are_what_the_model_generated(loaded, tmp_path) -> None:
    from core.runtime.generate import sample_replies

    problems = arith_problem_set(2)
    make_traces(loaded, problems, tmp_path / "g.jsonl", SMALL)
    prompts = [SMALL.prompt.render(loaded.tokenizer, p.question) for p in problems
               for _ in range(2)]
    direct = sample_replies(loaded, prompts, SMALL.sampling, batch_size=3,
                            stop=SMALL.reader(problems).reply_end)
    assert [t.response for t in read_traces(tmp_path / "g.jsonl").traces] == \
        [reply for reply in direct if reply.strip()]


def test_prefix_convention_and_outcome_only(loaded, tmp_path, monkeypatch) -> None:
    problems = [Problem("p0", "What is 2 + 2?", "4")]
    monkeypatch.setattr(sd, "sample_replies", lambda *a, **k: ["2 + 3 = 5\n2 + 2 = 4\n#### 4\n"])
    from dataclasses import replace

    make_traces(loaded, problems, tmp_path / "p.jsonl", replace(SMALL, n=1))
    assert read_traces(tmp_path / "p.jsonl").traces[0].prefix_labels == [1, 0, 0]
    make_traces(loaded, problems, tmp_path / "q.jsonl",
                replace(SMALL, n=1, prefix_labels="any-so-far"))
    assert read_traces(tmp_path / "q.jsonl").traces[0].prefix_labels == [1, 1, 1]
    make_traces(loaded, problems, tmp_path / "r.jsonl", replace(SMALL, n=1, step_labels="none"))
    trace = read_traces(tmp_path / "r.jsonl").traces[0]
    assert trace.step_labels == [None] * 3 and trace.prefix_labels == [None, None, 0]


class FakeJudge:
    """Says every step that writes "5" is wrong; the path verdict ends false on purpose."""

    name = "fake"

    def __init__(self) -> None:
        self.asked = 0

    def complete(self, messages, max_tokens):
        self.asked += 1
        steps = [line for line in messages[0]["content"].splitlines()
                 if line.startswith("Step ")]
        verdicts = [{"step": k, "wrong": "5" in line, "wrong_path": "5" in line}
                    for k, line in enumerate(steps, start=1)]
        return json.dumps({"steps": verdicts})


def test_judge_labels_terminal_consistency_and_no_second_asking(loaded, tmp_path,
                                                                monkeypatch) -> None:
    problems = [Problem("p0", "What is 2 + 2?", "4")]
    monkeypatch.setattr(sd, "sample_replies",
                        lambda *a, **k: ["2 + 2 = 4\n4 + 1 = 5\n#### 5\n", "2 + 2 = 4\n#### 4"])
    judge = FakeJudge()
    config = MakeTracesConfig(n=2, step_labels="judge")
    summary = make_traces(loaded, problems, tmp_path / "j.jsonl", config, judge=judge)
    wrong, right = read_traces(tmp_path / "j.jsonl").traces
    assert wrong.step_labels == [0, 1, 1] and wrong.prefix_labels == [0, 1, 1]
    assert right.step_labels == [0, 0] and right.prefix_labels == [0, 0]
    assert wrong.extra["step_labeller"] == "judge:fake"
    assert summary.n_judged == 2 and summary.n_judge_requests == 2 == judge.asked
    again = make_traces(loaded, problems, tmp_path / "j.jsonl", config, judge=judge)
    assert again.n_judge_requests == 0 and judge.asked == 2
    with pytest.raises(ValueError, match="judge"):
        make_traces(loaded, problems, tmp_path / "k.jsonl", config)
    assert StepVerdict(True, False).wrong


def test_unparsable_verdicts_leave_null_labels(loaded, tmp_path, monkeypatch) -> None:
    class Mumbler:
        name = "mumbler"

        def complete(self, messages, max_tokens):
            return "All steps look fine to me."

    monkeypatch.setattr(sd, "sample_replies", lambda *a, **k: ["2 + 2 = 4\n#### 4"])
    summary = make_traces(loaded, [Problem("p0", "What is 2 + 2?", "4")], tmp_path / "m.jsonl",
                          MakeTracesConfig(n=1, step_labels="judge", judge_attempts=2),
                          judge=Mumbler())
    [trace] = read_traces(tmp_path / "m.jsonl").traces
    assert trace.step_labels == [None, None] and trace.prefix_labels == [None, 0]
    assert summary.n_judge_failed == 1 and summary.n_judge_requests == 2
    assert trace.extra["judge"]["verdicts"] == "unparsed"


def test_interrupted_run_resumes_with_the_same_text(loaded, tmp_path, monkeypatch) -> None:
    problems = arith_problem_set(4)
    make_traces(loaded, problems, tmp_path / "full.jsonl", SMALL)
    full = (tmp_path / "full.jsonl").read_text()

    calls = {"n": 0}
    original = sd.sample_replies

    def interrupted(*args, **kwargs):
        on_batch = kwargs["on_batch"]

        def stop_after_two(first, batch):
            on_batch(first, batch)
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt

        return original(*args, **{**kwargs, "on_batch": stop_after_two})

    monkeypatch.setattr(sd, "sample_replies", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_traces(loaded, problems, tmp_path / "part.jsonl", SMALL)
    journal = tmp_path / "part.replies.jsonl"
    assert len(journal.read_text().splitlines()) == 1 + 6  # header + two batches of 3
    monkeypatch.setattr(sd, "sample_replies", original)
    summary = make_traces(loaded, problems, tmp_path / "part.jsonl", SMALL)
    assert summary.n_sampled == 2 and (tmp_path / "part.jsonl").read_text() == full
    assert make_traces(loaded, problems, tmp_path / "part.jsonl", SMALL).n_sampled == 0
    with pytest.raises(ValueError, match="other settings"):
        make_traces(loaded, problems, tmp_path / "part.jsonl",
                    MakeTracesConfig(n=2, sampling=SamplingConfig(max_new_tokens=9),
                                     batch_size=3))


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="step labeller"):
        MakeTracesConfig(step_labels="vibes")
    with pytest.raises(ValueError, match="prefix-label"):
        MakeTracesConfig(prefix_labels="sometimes")
    with pytest.raises(ValueError, match="test share"):
        MakeTracesConfig(test_share=1.0)
    assert MakeTracesConfig(answers=AnswerFormat(("####",))).reader().patterns == ("####",)
