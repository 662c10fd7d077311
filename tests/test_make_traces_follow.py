"""Following and ending a make_traces run (what the app's background job does): `on_chains`
gets every chain once, as it is labelled, in the form the written file holds; `should_stop`
ends the run with `Stopped` between batches and between judge requests, and the same call
then resumes from the journals with the same result. Also `judge_items`' own hooks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from core.data.judge import JudgeItem, JudgePrompt, judge_items
from core.data.problems import Problem, arith_problem_set
from core.data.sample_data import MakeTracesConfig, make_traces
from core.data.traces import Trace, read_traces
from core.progress import Stopped, check_stop
from core.runtime.generate import SamplingConfig
from core.runtime.models import wrap_model
from tests.judge_stub import verdicts_for_every_step
from tests.tiny_models import tiny_model, tiny_tokenizer

CHAT = "{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}w5 "
SMALL = MakeTracesConfig(n=2, sampling=SamplingConfig(max_new_tokens=8), batch_size=3)


@pytest.fixture()
def loaded(one_torch_thread):
    return wrap_model(tiny_model("llama"), tiny_tokenizer(CHAT), name="tiny")


class CountingJudge:
    """Valid verdicts (a step is wrong when its text has an odd length), counted."""

    name = "counting"

    def __init__(self) -> None:
        self.asked = 0

    def complete(self, messages, max_tokens):
        self.asked += 1
        return verdicts_for_every_step({"messages": messages})


def by_id(traces: list[Trace]) -> dict[str, Trace]:
    return {trace.id: trace for trace in traces}


def test_check_stop() -> None:
    check_stop(None)
    check_stop(lambda: False)
    with pytest.raises(Stopped, match="Sampling was stopped"):
        check_stop(lambda: True, "Sampling")


def test_rule_chains_arrive_batch_by_batch_as_written(loaded, tmp_path) -> None:
    calls: list[list[Trace]] = []
    summary = make_traces(loaded, arith_problem_set(4), tmp_path / "a.jsonl", SMALL,
                          on_chains=calls.append)
    written = read_traces(tmp_path / "a.jsonl").traces
    streamed = [trace for call in calls for trace in call]
    assert len(streamed) == summary.n_chains == len(written) > 0
    assert by_id(streamed) == by_id(written)  # labels, outcome, extra: all as written
    assert [t.id for t in streamed] == [t.id for t in written]  # reply order
    assert 1 < len(calls) <= 3  # 8 replies in batches of 3, empty replies never sent
    assert all(t.extra["step_labeller"] == "rule" for t in streamed)

    again: list[list[Trace]] = []  # all journalled: one call with every chain
    assert make_traces(loaded, arith_problem_set(4), tmp_path / "a.jsonl", SMALL,
                       on_chains=again.append).n_sampled == 0
    assert len(again) == 1 and by_id(again[0]) == by_id(written)


def test_stop_between_batches_then_resume_gives_the_same_file(loaded, tmp_path) -> None:
    problems = arith_problem_set(4)
    make_traces(loaded, problems, tmp_path / "full.jsonl", SMALL)
    batches = {"n": 0}

    def after_two() -> bool:
        return batches["n"] >= 2

    def count(traces) -> None:
        batches["n"] += 1

    with pytest.raises(Stopped):
        make_traces(loaded, problems, tmp_path / "part.jsonl", SMALL, on_chains=count,
                    should_stop=after_two)
    assert not (tmp_path / "part.jsonl").exists()  # nothing half-written
    lines = (tmp_path / "part.replies.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 6  # header + the two batches of 3 before the stop
    with pytest.raises(Stopped):  # stopped before anything: nothing sampled
        make_traces(loaded, problems, tmp_path / "part.jsonl", SMALL, should_stop=lambda: True)
    assert len((tmp_path / "part.replies.jsonl").read_text().splitlines()) == 7
    summary = make_traces(loaded, problems, tmp_path / "part.jsonl", SMALL)
    assert summary.n_sampled == 2
    assert (tmp_path / "part.jsonl").read_text() == (tmp_path / "full.jsonl").read_text()


def test_judged_chains_arrive_one_by_one_and_a_stop_keeps_the_verdicts(loaded, tmp_path,
                                                                     monkeypatch) -> None:
    import core.data.sample_data as sd

    problems = [Problem(f"p{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(3)]
    replies = [f"{i} + {i} = {2 * i + k}\nAnswer: {2 * i + k}" for i in range(3) for k in (0, 1)]
    monkeypatch.setattr(sd, "sample_replies", lambda *a, **k: list(replies))
    config = replace(SMALL, step_labels="judge")
    judge = CountingJudge()
    calls: list[list[Trace]] = []

    def stop_after_three() -> bool:
        return judge.asked >= 3

    with pytest.raises(Stopped):
        make_traces(loaded, problems, tmp_path / "j.jsonl", config, judge=judge,
                    on_chains=calls.append, should_stop=stop_after_three)
    assert judge.asked == 3 and [len(call) for call in calls] == [1, 1, 1]
    assert all(t.has_step_labels and t.extra["step_labeller"] == "judge:counting"
               for call in calls for t in call)
    assert not (tmp_path / "j.jsonl").exists()

    calls.clear()
    summary = make_traces(loaded, problems, tmp_path / "j.jsonl", config, judge=judge,
                          on_chains=calls.append)
    assert judge.asked == 6 and summary.n_judge_requests == 3  # only the rest asked
    streamed = [t for call in calls for t in call]
    written = read_traces(tmp_path / "j.jsonl").traces
    assert by_id(streamed) == by_id(written) and len(written) == 6  # cached ones too


def test_judge_items_reports_each_item_and_stops_before_a_request(tmp_path) -> None:
    a = JudgeItem("What is 2 + 2?", ("2 + 2 = 4", "Answer: 4"), "4", "4")
    b = JudgeItem("What is 3 + 3?", ("3 + 3 = 7", "Answer: 7"), "6", "7")
    c = JudgeItem("What is 1 + 1?", ("1 + 1 = 2",), "2", None)
    items, cache, prompt = [a, b, a, c], tmp_path / "c.jsonl", JudgePrompt.load()
    judge, seen = CountingJudge(), []
    with pytest.raises(Stopped):
        judge_items(judge, prompt, items, cache, on_result=lambda i, r: seen.append(i),
                    should_stop=lambda: judge.asked >= 2)
    assert sorted(seen) == [0, 1, 2] and judge.asked == 2  # a twice (asked once), b; not c
    seen.clear()
    run = judge_items(judge, prompt, items, cache, on_result=lambda i, r: seen.append(i))
    assert seen == [0, 1, 2, 3]  # the cached ones first, in order, then the one asked now
    assert run.n_cached == 3 and run.n_requests == 1 and judge.asked == 3
    assert len(cache.read_text().splitlines()) == 1 + 3  # header + one verdict per chain
