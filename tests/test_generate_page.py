"""The Traces page's chain maker under `streamlit.testing.v1.AppTest`: the inputs, bad problem
files as one sentence, and on a tiny random model saved to a folder a run that shows its
progress, stops on Stop, resumes on Start and feeds the Traces view; the judge as an
OpenAI-compatible stub server on 127.0.0.1 (a verdict held back shows the chains arriving one
by one; malformed verdicts leave null labels), whose chains then train a probe. Also the pure
parts: requests, the run's command line (which writes the same file)."""

from __future__ import annotations

import json
import re
import shlex
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from core.data.traces import read_traces
from dashboard.common import state
from dashboard.common.jobs import Job, board
from dashboard.diagnose import generate_state as gstate
from dashboard.diagnose.generate_inputs import upload_limit_mb
from dashboard.diagnose.generate_panel import CHAIN_SOURCE_KEY, JOB_KEY
from dashboard.diagnose.generate_request import GenerateRequest, JudgeChoice
from tests.judge_stub import JudgeStub, verdicts_for_every_step
from tests.test_app import button, chain_tables, load_sidebar_model, start, texts
from tests.test_app import tiny_model_dir as tiny_model_dir  # noqa: F401 - a fixture

MALFORMED_QUESTION = "w27 w37"  # the stub never answers this problem's chains parsably


@pytest.fixture(autouse=True)
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(gstate.RUNS_ENV, str(tmp_path / "runs"))
    return tmp_path / "runs"


def open_generate(at: AppTest) -> AppTest:
    at.radio(key=CHAIN_SOURCE_KEY).set_value("generate").run()
    assert not at.exception
    return at


def upload_problems(at: AppTest, name: str, data: bytes) -> AppTest:
    at.radio(key="generate_problem_source").set_value("upload").run()
    at.file_uploader(key="generate_upload").upload(name, data, "application/octet-stream")
    return at.run()


def settings(at: AppTest, **values: Any) -> AppTest:
    for key, value in values.items():
        at.number_input(key=f"generate_{key}").set_value(value)
    return at.run()


def the_job(at: AppTest) -> Job[Any]:
    job = board().get(at.session_state[JOB_KEY])
    assert job is not None
    return job


def progress_texts(at: AppTest) -> list[str]:
    return [element.proto.text for element in at.get("progress")]


def w_problems(n: int) -> bytes:
    """Problems in the tiny tokenizer's words, GSM8K's shape."""
    return "".join(json.dumps({"id": f"p{i}", "question": f"w{20 + i} w{30 + i}",
                               "answer": f"w9 w10\n#### {i}"}) + "\n"
                   for i in range(n)).encode()


# ---------------------------------------------------------------------------- inputs


def test_the_page_offers_a_file_or_a_run_with_its_inputs() -> None:
    at = start()
    assert at.radio(key=CHAIN_SOURCE_KEY).value == "file"
    at = open_generate(at)
    assert at.radio(key="generate_problem_source").options == [
        "a shipped problem file", "upload a problem file", "Telltale's arithmetic"]
    assert at.selectbox(key="generate_shipped").value == "arith_problems.jsonl"
    assert any(c.startswith("arith_problems.jsonl: 200 problem(s)") for c in texts(at.caption))
    assert not button(at, "Start").disabled and button(at, "Stop").disabled
    assert any("goes on in the background" in c for c in texts(at.caption))
    at.radio(key="generate_problem_source").set_value("upload").run()
    uploader = at.file_uploader(key="generate_upload")
    assert f"at most {upload_limit_mb()} MB" in uploader.label
    assert button(at, "Start").disabled
    at.radio(key="generate_step_labels").set_value("judge").run()
    at.radio(key="generate_judge_kind").set_value("endpoint").run()
    at.text_input(key="generate_judge_key_env").input("HOME").run()
    assert any("must be a name ending in _KEY or _TOKEN" in e for e in texts(at.error))


BAD_FILES = [
    ("missing.jsonl", b'{"question": "q1", "answer": "#### 1"}\n{"question": "q2"}\n',
     "missing.jsonl, line 2, field 'answer': missing"),
    ("broken.jsonl", b'{"question": "q1", "answer": "#### 1"}\nnot json\n',
     "broken.jsonl, line 2: not valid JSON"),
    ("empty.csv", b"question,answer\nq1,#### 1\nq2,\n", "empty.csv, line 3, field 'answer': empty"),
    ("object.json", b'{"question": "q"}', "object.json, line 1: expected a JSON array"),
    ("latin.jsonl", b'{"question": "q1", "answer": "#### 1"}\n{"question": "caf\xe9"}\n',
     "latin.jsonl, line 2: not valid UTF-8"),
    ("junk.parquet", b"PAR1 not really", "junk.parquet: not a readable Parquet file"),
    ("shape.jsonl", b'{"q": "x", "a": "1"}\n', "shape.jsonl, line 1: cannot tell the question"),
]


@pytest.mark.parametrize(("name", "data", "expected"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_problem_file_is_one_sentence(name: str, data: bytes, expected: str) -> None:
    at = upload_problems(open_generate(start()), name, data)
    assert not at.exception
    [error] = texts(at.error)
    assert error.startswith(expected), error
    assert "telltale-problems-" not in error  # the file as uploaded, not the server's copy
    assert button(at, "Start").disabled


def test_field_names_read_a_file_of_another_shape() -> None:
    at = upload_problems(open_generate(start()), "shape.jsonl", b'{"q": "x", "a": "1"}\n')
    at.text_input(key="generate_question_field").input("q")
    at.text_input(key="generate_answer_field").input("a").run()
    assert not at.error and any(c.startswith("shape.jsonl: 1 problem(s)")
                                for c in texts(at.caption))


# ---------------------------------------------------------------------------- runs


def test_start_progress_stop_resume_on_a_tiny_model(tiny_model_dir: Path, runs_dir: Path,  # noqa: F811
                                                    tmp_path: Path, one_torch_thread) -> None:
    spec = str(tiny_model_dir)
    at = open_generate(load_sidebar_model(start(), spec))
    at.radio(key="generate_problem_source").set_value("arith").run()
    at = settings(at, n_problems=10, max_new_tokens=8, batch_size=4)
    loaded = state.get_model(spec, "auto", "auto")
    with loaded.lock:  # the job waits at its first batch: the page shows it running
        button(at, "Start").click().run()
        job = the_job(at)
        assert job.running and not at.exception
        wait_until(lambda: gstate.progress_of(job).stage == "Sampling replies")
        at.run()
        assert progress_texts(at) == ["Sampling replies: 0 of 20 replies"]
        assert button(at, "Start").disabled and not button(at, "Stop").disabled
        button(at, "Stop").click().run()
        assert job.stop_requested
    assert job.wait(60) and job.error is None
    at.run()
    [warning] = texts(at.warning)
    n_kept = int(re.search(r"after (\d+) labelled chain", warning).group(1))  # type: ignore
    assert warning.startswith("Stopped by you") and 0 < n_kept <= 4
    folder = gstate.run_of(job).folder
    assert folder.parent == runs_dir
    journal = (folder / "chains.replies.jsonl").read_text().splitlines()
    assert len(journal) == 1 + 4  # the batch in progress, journalled; nothing after it
    assert not (folder / "chains.jsonl").exists()
    assert len(chain_tables(at)[0]) == n_kept  # the Traces view shows the chains so far

    button(at, "Start").click().run()  # the same settings: resumes from the journal
    again = the_job(at)
    assert again is not job and again.wait(120) and again.error is None
    at.run()
    [success] = texts(at.success)
    assert "sampled now: 16;" in success and "for 10 problems" in success
    written = read_traces(folder / "chains.jsonl").traces
    assert len(chain_tables(at)[0]) == len(written) > n_kept
    assert "Download the chains (JSONL)" in [b.label for b in at.download_button]
    for name, value in at.session_state.items():  # small plain values only
        if not str(name).startswith("traces_upload"):
            json.dumps(value)

    # the sidecar's command writes the same file from the command line
    from core.cli.main import main

    meta = json.loads((folder / "chains.meta.json").read_text())
    argv = shlex.split(meta["regenerate"])[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "cli.jsonl")
    assert main(argv) == 0
    assert (tmp_path / "cli.jsonl").read_bytes() == (folder / "chains.jsonl").read_bytes()


class HeldStub:
    """Stub verdicts, held back at one request until released; malformed for one problem."""

    def __init__(self, hold_at: int) -> None:
        self.hold_at, self.count, self.release = hold_at, 0, threading.Event()

    def __call__(self, body: dict[str, Any]) -> str:
        self.count += 1
        if self.count == self.hold_at:
            self.release.wait(60)
        if MALFORMED_QUESTION in body["messages"][0]["content"]:
            return "All steps look fine."
        return verdicts_for_every_step(body)


def wait_until(check: Any, timeout: float = 60) -> None:
    end = time.time() + timeout
    while not check():
        assert time.time() < end, "timed out"
        time.sleep(0.05)


def canned_replies(loaded: Any, prompts: list[str], sampling: Any, batch_size: int = 8,
                   progress: Any = None, done: Any = None, on_batch: Any = None,
                   stop: Any = None) -> list[str]:
    """Replies of three steps in the tiny tokenizer's words (its random model writes one line
    without an answer), two chains per problem: the first answers right, the second wrong."""
    replies = [f"w{40 + i // 2} w{50 + i % 2}\nw{60 + i // 2} w61 w62\nAnswer: {i // 2 + i % 2}"
               for i in range(len(prompts))]
    for lo in range(0, len(replies), batch_size):
        if on_batch and not all(i in (done or {}) for i in range(lo, lo + batch_size)):
            on_batch(lo, replies[lo:lo + batch_size])
    return replies


def test_endpoint_judge_labels_chains_one_by_one_and_they_train_a_probe(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread) -> None:  # noqa: F811
    import core.data.sample_data as sd

    monkeypatch.setattr(sd, "sample_replies", canned_replies)
    monkeypatch.setenv("TELLTALE_JUDGE_API_KEY", "sk-test-key")
    at = upload_problems(open_generate(load_sidebar_model(start(), str(tiny_model_dir))),
                         "w.jsonl", w_problems(8))
    at = settings(at, n_problems=8, max_new_tokens=8)
    at.radio(key="generate_step_labels").set_value("judge").run()
    at.radio(key="generate_judge_kind").set_value("endpoint").run()
    held = HeldStub(hold_at=3)
    with JudgeStub(reply=held) as stub:
        at.text_input(key="generate_judge_url").input(stub.url)
        at.text_input(key="generate_judge_name").input("stub")
        at.number_input(key="generate_judge_workers").set_value(1).run()
        assert "Key: from **TELLTALE_JUDGE_API_KEY** on the server." in texts(at.caption)
        button(at, "Start").click().run()
        job = the_job(at)
        wait_until(lambda: held.count >= 3)  # two chains judged, the third held back
        at.run()
        assert any("2 chain(s) labelled so far" in c for c in texts(at.caption))
        assert re.fullmatch(r"Judging chains: 2 of \d+ chains", progress_texts(at)[0])
        assert len(chain_tables(at)[0]) == 2
        button(at, "Stop").click().run()
        held.release.set()
        assert job.wait(60)
        at.run()
        assert texts(at.warning)[0].startswith("Stopped by you after 3 labelled chain(s)")
        n_asked = len(stub.requests)
        button(at, "Start").click().run()  # resumes: the three verdicts are not asked again
        again = the_job(at)
        assert again.wait(120) and again.error is None
    at.run()
    [success] = texts(at.success)
    assert "Wrote 16 chains for 8 problems" in success and "Answered 100.0%" in success
    assert "Judge: 16 chains, 2 without parsable verdicts" in success
    assert stub.requests[n_asked - 1]["model"] == "stub"
    assert {h["authorization"] for h in stub.headers} == {"Bearer sk-test-key"}
    traces = read_traces(gstate.run_of(again).chains_file).traces
    assert {t.extra["step_labeller"] for t in traces} == {"judge:endpoint:stub"}
    assert sum(not t.has_step_labels for t in traces) == 2  # never guessed
    assert len(chain_tables(at)[0]) == len(traces)

    at.radio(key="probe_source").set_value("train").run()  # the probe section trains on them
    at.number_input(key="probe_train_layer").set_value(1)
    at.number_input(key="probe_train_epochs").set_value(2)
    button(at, "Train probe").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert texts(at.success)[-1].startswith("Trained ")


def judge_run(at: AppTest, kind: str, **texts_in: str) -> Job[Any]:
    """Start a run of 2 w-word problems, one chain each, judged by `kind`; its job, ended."""
    at = upload_problems(open_generate(at), "w.jsonl", w_problems(2))
    at = settings(at, n_problems=2, n=1, max_new_tokens=8)
    at.radio(key="generate_step_labels").set_value("judge").run()
    at.radio(key="generate_judge_kind").set_value(kind).run()
    for key, value in texts_in.items():
        at.text_input(key=f"generate_judge_{key}").input(value)
    button(at.run(), "Start").click().run()
    job = the_job(at)
    assert job.wait(120)
    at.run()
    return job


def test_an_unreachable_judge_is_one_sentence_and_keeps_the_replies(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread) -> None:  # noqa: F811
    import core.data.sample_data as sd

    monkeypatch.setattr(sd, "sample_replies", canned_replies)
    with JudgeStub() as stub:
        closed = stub.url  # a port nothing listens on once the stub has shut down
    at = load_sidebar_model(start(), str(tiny_model_dir))
    job = judge_run(at, "endpoint", url=closed, name="stub")
    [error] = texts(at.error)
    assert error.startswith("Making chains failed: The judge stub at http://127.0.0.1:")
    assert "did not answer" in error and "Start** with the same settings" in error
    folder = gstate.run_of(job).folder
    assert len((folder / "chains.replies.jsonl").read_text().splitlines()) == 1 + 2
    assert not (folder / "chains.jsonl").exists()


def test_the_sidebar_model_as_the_judge(tiny_model_dir: Path, one_torch_thread) -> None:  # noqa: F811
    at = load_sidebar_model(start(), str(tiny_model_dir))
    job = judge_run(at, "local")  # empty judge model: the one in the sidebar
    assert job.error is None, job.error
    [success] = texts(at.success)
    # a random model never writes the verdicts asked for: null labels, counted, not guessed
    n_chains = int(re.search(r"Wrote (\d+) chains", success).group(1))  # type: ignore
    assert f"Judge: {n_chains} chains, {n_chains} without parsable verdicts" in success
    traces = read_traces(gstate.run_of(job).chains_file).traces
    assert {t.extra["step_labeller"] for t in traces} == {f"judge:local:{tiny_model_dir.name}"}


def test_a_local_judge_outside_the_allowed_folders_is_one_sentence(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.delenv("TELLTALE_ALLOW_ANY_MODEL_PATH", raising=False)
    at = open_generate(load_sidebar_model(start(), str(tiny_model_dir)))
    at.radio(key="generate_step_labels").set_value("judge").run()
    at.text_input(key="generate_judge_model").input("/elsewhere/judge-model").run()
    button(at, "Start").click().run()
    assert not at.exception and JOB_KEY not in at.session_state
    assert texts(at.error)[0].startswith("The app does not load models from /elsewhere")


# ---------------------------------------------------------------------------- pure parts


def request(**changes: Any) -> GenerateRequest:
    values: dict[str, Any] = {"model": ("default", "auto", "auto"), "source": "shipped",
                              "problems": "arith_problems.jsonl", "problems_hash": "abc",
                              "n_problems": 2, **changes}
    return GenerateRequest(**values)


def test_requests_round_trip_and_name_their_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELLTALE_JUDGE_KEY_VARS", "MY_API_KEY")
    judged = request(step_labels="judge", judge=JudgeChoice("stub", "http://127.0.0.1:1/v1",
                                                            "MY_API_KEY", 2))
    for value in (request(), judged):
        assert GenerateRequest.from_state(json.loads(json.dumps(value.to_state()))) == value
    assert request().run_id == request().run_id != request(seed=1).run_id
    assert GenerateRequest.from_state({"model": "x"}) is None
    for bad in ({"n": 0}, {"step_labels": "judge"}, {"source": "web"}, {"temperature": -1}):
        with pytest.raises(ValueError):
            request(**bad)
    for bad_judge in ({"url": "ftp://x"}, {"url": "http://x"}, {"key_env": "HOME"},
                      {"workers": 0}):
        with pytest.raises(ValueError):
            JudgeChoice(**bad_judge)


def test_the_command_line_says_what_the_run_does(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELLTALE_JUDGE_KEY_VARS", "MY_API_KEY")
    from core.cli.main import build_parser

    judged = request(step_labels="judge", source="arith", problems="arith", problems_hash="",
                     judge=JudgeChoice("stub", "http://127.0.0.1:1/v1", "MY_API_KEY", 2,
                                       "mine.md", "f00"))
    args = build_parser().parse_args(shlex.split(gstate.command_line(judged, tmp_path))[1:])
    assert (args.problems, args.n_problems, args.n, args.step_labels) == ("arith", 2, 2, "judge")
    assert (args.judge_url, args.judge_model, args.judge_key_env, args.judge_workers) == (
        "http://127.0.0.1:1/v1", "stub", "MY_API_KEY", 2)
    assert args.judge_prompt == str(tmp_path / "judge_prompt.md")
    assert args.out == str(tmp_path / "chains.jsonl")
    config = gstate.config_of(judged)
    assert (config.judge_workers, config.source, config.sampling.max_new_tokens) == (
        2, "telltale-arith", 200)
    local = request(step_labels="judge", judge=JudgeChoice())
    args = build_parser().parse_args(shlex.split(gstate.command_line(local, tmp_path))[1:])
    assert args.judge_model == "default" and args.judge_url is None
    assert args.problems == str(tmp_path / "problems.jsonl")


def test_problem_files_are_offered_as_problems_not_as_traces() -> None:
    from dashboard.diagnose.generate_request import shipped_problem_files
    from dashboard.diagnose.trace_state import sample_files

    assert "arith_problems.jsonl" in [path.name for path in shipped_problem_files()]
    assert not [path for path in sample_files() if path.name.endswith("_problems.jsonl")]


def test_only_the_allowed_key_variables_leave_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELLTALE_JUDGE_KEY_VARS", raising=False)
    with pytest.raises(ValueError, match="sends only the keys in TELLTALE_JUDGE_API_KEY"):
        JudgeChoice("stub", "http://127.0.0.1:1/v1", "AWS_SECRET_KEY", 2)
    JudgeChoice("stub", "http://127.0.0.1:1/v1", "OPENAI_API_KEY", 2)
    monkeypatch.setenv("TELLTALE_JUDGE_KEY_VARS", "AWS_SECRET_KEY")
    JudgeChoice("stub", "http://127.0.0.1:1/v1", "AWS_SECRET_KEY", 2)
