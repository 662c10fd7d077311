"""`telltale make-problems` and `telltale make-traces` end to end: a GSM8K-shaped file in,
chains labelled by a judge behind a stub OpenAI-compatible server out, a rerun that samples and
judges nothing, and `telltale train` on the result. The unit tests use a tiny random model in
place of the default one; the e2e test runs the default model itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import core.cli.common
from core.cli.main import main
from core.data.problems import read_problems
from core.data.traces import read_traces
from core.runtime.models import wrap_model
from tests.judge_stub import JudgeStub
from tests.tiny_models import tiny_model, tiny_tokenizer

CHAT = ("{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
        "{% if add_generation_prompt %}w5 {% endif %}")


class Counted:
    """A loaded model whose generate calls are counted."""

    def __init__(self, loaded: Any) -> None:
        self.loaded, self.calls = loaded, 0
        original = loaded.model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        loaded.model.generate = generate


def make_problems(tmp_path: Path, n: int, capsys: Any) -> Path:
    out = tmp_path / "problems.jsonl"
    assert main(["make-problems", "--out", str(out), "--n", str(n), "--seed", "2",
                 "--min-ops", "2", "--max-ops", "3", "--max-number", "9"]) == 0
    capsys.readouterr()
    return out


def bar_command(problems: Path, out: Path, url: str) -> list[str]:
    return ["make-traces", "--model", "default", "--problems", str(problems), "--n", "2",
            "--step-labels", "judge", "--judge-url", url, "--judge-model", "stub",
            "--out", str(out), "--max-new-tokens", "10", "--batch-size", "8"]


def test_make_problems_writes_gsm8k_shape_with_a_sidecar(tmp_path, capsys) -> None:
    path = make_problems(tmp_path, 5, capsys)
    problems = read_problems(path)
    assert len(problems) == 5 and all(p.solution and "####" in p.solution for p in problems)
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    assert meta["regenerate"].startswith("telltale make-problems --out")
    assert meta["arguments"]["max_number"] == 9


def test_bar_judge_endpoint_rerun_costs_nothing_then_train(tmp_path, capsys, monkeypatch,
                                                           one_torch_thread) -> None:
    counted = Counted(wrap_model(tiny_model("llama"), tiny_tokenizer(CHAT), name="tiny"))
    monkeypatch.setattr(core.cli.common, "load", lambda args: counted.loaded)
    problems = make_problems(tmp_path, 12, capsys)
    out = tmp_path / "chains.jsonl"
    # the tiny model writes no newlines: steps start at words w1.., w2.., w3..
    command = [*bar_command(problems, out, "URL"), "--segmenter", "regex", "--pattern", "w[1-3]"]
    with JudgeStub() as stub:
        command[command.index("URL")] = stub.url
        assert main(command) == 0, capsys.readouterr().err
        first_calls, first_requests = counted.calls, len(stub.requests)
        assert first_calls == 3 and first_requests > 0  # 24 replies in batches of 8
        traces = read_traces(out).traces
        summary = json.loads(out.with_suffix(".meta.json").read_text())["summary"]
        assert len(traces) + summary["n_empty"] == 24 and len(traces) > 12
        assert summary["n_judged"] == len(traces) and summary["n_judge_failed"] == 0
        replies = [json.loads(line)["reply"] for line in
                   (tmp_path / "chains.replies.jsonl").read_text().splitlines()[1:]]
        assert [t.response for t in traces] == [r for r in replies if r.strip()]  # raw
        for trace in traces:
            assert trace.response and trace.answered is not None
            assert trace.is_correct is not None
            assert all(step.label in (0, 1) for step in trace.steps)
            assert trace.extra["step_labeller"] == "judge:endpoint:stub"
        assert first_requests == len({json.dumps(body["messages"]) for body in stub.requests})
        # the same command again: no generation, no judging, the same file
        before = out.read_text()
        assert main(command) == 0
        assert counted.calls == first_calls and len(stub.requests) == first_requests
        assert out.read_text() == before
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["regenerate"].startswith("telltale make-traces --model default --out")
    assert meta["settings"]["judge"]["name"] == "endpoint:stub"
    assert main(["train", "--model", "default", "--traces", str(out), "--out",
                 str(tmp_path / "probe"), "--layer", "1", "--epochs", "2"]) == 0, \
        capsys.readouterr().err
    assert (tmp_path / "probe.safetensors").exists()


def test_bad_problem_file_is_one_sentence(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(core.cli.common, "load", lambda args: pytest.fail("no model needed"))
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n')
    assert main(["make-traces", "--problems", str(path), "--out", str(tmp_path / "o.jsonl")]) \
        == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"telltale make-traces: {path}, line 2, field 'answer': missing (the "
                   "record's fields: question).")
    assert main(["make-traces", "--problems", "40", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "--problems arith --n-problems 40" in capsys.readouterr().err
    assert main(["make-traces", "--problems", str(path), "--step-labels", "judge",
                 "--out", str(tmp_path / "o.jsonl"), "--n-problems", "1"]) == 2
    assert "needs --judge-model" in capsys.readouterr().err


@pytest.mark.e2e
def test_bar_on_the_default_model(tmp_path, capsys, monkeypatch) -> None:
    import torch

    torch.set_num_threads(2)
    real_load = core.cli.common.load
    models: list[Counted] = []

    def load(args: Any) -> Any:
        models.append(Counted(real_load(args)))
        return models[-1].loaded

    monkeypatch.setattr(core.cli.common, "load", load)
    problems = make_problems(tmp_path, 3, capsys)
    out = tmp_path / "chains.jsonl"
    command = [*bar_command(problems, out, "URL")[:-4], "--max-new-tokens", "96"]
    with JudgeStub() as stub:
        command[command.index("URL")] = stub.url
        assert main(command) == 0, capsys.readouterr().err
        requests = len(stub.requests)
        assert models[0].calls == 1 and requests >= 1
        traces = read_traces(out).traces
        replies = [json.loads(line)["reply"] for line in
                   (tmp_path / "chains.replies.jsonl").read_text().splitlines()[1:]]
        assert [t.response for t in traces] == [r for r in replies if r.strip()]
        assert all(t.answered is not None and t.is_correct is not None for t in traces)
        assert all(s.label in (0, 1) for t in traces for s in t.steps)
        assert main(command) == 0
        assert models[1].calls == 0 and len(stub.requests) == requests
