"""The Live page under `streamlit.testing.v1.AppTest`: it renders without a model and without a
probe (a note says how to get one), reads a probe file and starts its threshold at the calibrated
one, reports bad probe files as a sentence, and (e2e, on the default model) runs a backtracking
reply to the end with its summary, struck-through discarded attempts and downloads. Also the
pure bookkeeping of `dashboard.live_state` (events into progress, the job board)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.diagnose.monitor import (
    DoneEvent,
    MonitorConfig,
    MonitorResult,
    StepEvent,
    StepRecord,
    TokenEvent,
)
from core.diagnose.probes import LinearProbe, ProbeBundle, ProbeMeta, save_probe
from dashboard.diagnose import probe_state as dstate
from dashboard.diagnose import live_state
from dashboard.diagnose import live_page as live

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
TIMEOUT = 120
RUN_TIMEOUT = 500  # loads the default model (~15-20 s alone, more on a busy machine) and writes
DEFAULT_HIDDEN = 576  # SmolLM2-135M
DEFAULT_LAYERS = 30


def random_bundle(hidden: int, *, layer: int = 15, bias: float = 0.0, threshold: float = 0.5,
                  seed: int = 0) -> ProbeBundle:
    """A step probe and a prefix tracker with random weights (as in tests/test_monitor.py)."""
    rng = np.random.default_rng(seed)
    meta = ProbeMeta(model="default", model_name="test-probe-model", hidden_size=hidden,
                     layer=layer, step_pooling="exp", tracker_pooling="causal",
                     baseline_pooling="prefix_mean", step_input=True, threshold=threshold,
                     step_threshold=0.5, data_hash="test")
    return ProbeBundle(meta=meta, step=LinearProbe(rng.normal(size=hidden) * 3, 0.0),
                       tracker=LinearProbe(rng.normal(size=hidden + 1) * 3, bias, 1))


def open_live(preset: dict[str, object] | None = None) -> AppTest:
    """The app on its Live page, with `preset` in session state. AppTest.switch_page only knows
    file pages, so the run is pointed at the hash st.navigation registered for "live"."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in (preset or {}).items():
        at.session_state[key] = value
    at.run()
    pages = at._registered_pages  # noqa: SLF001 - no public switch for callable pages
    at._page_hash = next(h for h, info in pages.items() if info.get("url_pathname") == "live")
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Live"]
    return at


def texts(elements: object) -> list[str]:
    return [str(e.value) for e in elements]  # type: ignore[attr-defined]


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def use_probe_path(at: AppTest, path: Path) -> AppTest:
    at.selectbox(key=live.PROBE_KEY).select(live.PATH_OPTION).run()
    at.text_input(key=live.PROBE_PATH_KEY).input(str(path)).run()
    assert not at.exception
    return at


def test_page_renders_without_model_and_probe(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setattr(dstate, "shipped_probes", lambda *_: [])
    at = open_live()
    assert not at.error
    assert any("No probe yet" in i and "telltale train" in i for i in texts(at.info))
    assert button(at, "Start").disabled and button(at, "Stop").disabled
    assert any("No model loaded" in c for c in texts(at.sidebar.caption))
    prompt = at.text_area(key=live.PROMPT_KEY).value
    assert prompt == live_state.sample_prompts()[0][1] and "Answer:" in prompt
    assert [r.value for r in at.radio] == ["watch"]
    assert not at.get("plotly_chart")  # nothing has run


def test_sample_select_fills_the_prompt_box(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setattr(dstate, "shipped_probes", lambda *_: [])
    at = open_live()
    label, prompt = live_state.sample_prompts()[3]
    at.selectbox(key=live.SAMPLE_KEY).select(label).run()
    assert at.text_area(key=live.PROMPT_KEY).value == prompt
    at.text_area(key=live.PROMPT_KEY).input("What is 2 + 2?").run()  # own text is kept
    assert at.text_area(key=live.PROMPT_KEY).value == "What is 2 + 2?"


def test_probe_file_sets_the_threshold_and_enables_start(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dstate, "shipped_probes", lambda *_: [])
    save_probe(tmp_path / "one", random_bundle(DEFAULT_HIDDEN, threshold=0.375))
    save_probe(tmp_path / "two", random_bundle(DEFAULT_HIDDEN, threshold=0.8, seed=1))
    at = use_probe_path(open_live(), tmp_path / "one")
    assert not at.error and not at.info
    assert at.slider(key=live.THRESHOLD_KEY).value == pytest.approx(0.375)
    assert any(c.startswith("**one**") and "alarm threshold **0.375**" in c
               and "layer **15**" in c for c in texts(at.caption))
    assert not button(at, "Start").disabled
    at.slider(key=live.THRESHOLD_KEY).set_value(0.6).run()
    assert at.slider(key=live.THRESHOLD_KEY).value == pytest.approx(0.6)  # the user's stays
    at.text_input(key=live.PROBE_PATH_KEY).input(str(tmp_path / "two.json")).run()
    assert at.slider(key=live.THRESHOLD_KEY).value == pytest.approx(0.8)  # a new probe resets


def test_bad_probe_files_are_one_sentence(tmp_path: Path) -> None:
    at = use_probe_path(open_live(), tmp_path / "missing")
    assert len(at.error) == 1 and "does not exist" in at.error[0].value
    assert button(at, "Start").disabled
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    (tmp_path / "bad.json").write_text("{\"model\": 3}")
    at.text_input(key=live.PROBE_PATH_KEY).input(str(tmp_path / "bad")).run()
    assert not at.exception
    assert len(at.error) == 1 and "is not valid" in at.error[0].value


def test_uploaded_probe_pair_is_read_and_half_a_pair_is_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dstate, "shipped_probes", lambda *_: [])
    weights, sidecar = save_probe(tmp_path / "up", random_bundle(DEFAULT_HIDDEN, threshold=0.25))
    at = open_live()
    at.selectbox(key=live.PROBE_KEY).select(live.UPLOAD_OPTION).run()
    uploader = at.file_uploader(key=live.PROBE_UPLOAD_KEY)
    uploader.upload("up.safetensors", weights.read_bytes()).run()
    assert not at.exception
    assert any("one .safetensors and one .json (got 1 and 0)" in w for w in texts(at.warning))
    assert button(at, "Start").disabled
    at.file_uploader(key=live.PROBE_UPLOAD_KEY).set_value([
        ("up.safetensors", weights.read_bytes(), "application/octet-stream"),
        ("up.json", sidecar.read_bytes(), "application/json")]).run()
    assert not at.exception and not at.warning and not at.error
    assert at.slider(key=live.THRESHOLD_KEY).value == pytest.approx(0.25)
    assert any(c.startswith("**up**") and "hidden size 576" in c for c in texts(at.caption))
    assert not button(at, "Start").disabled


def test_a_probe_trained_on_the_traces_page_is_offered(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dstate, "shipped_probes", lambda *_: [])
    probe = dstate.bundle_files(random_bundle(DEFAULT_HIDDEN, threshold=0.125), "traced")
    dstate.keep_trained(probe)
    at = open_live({dstate.TRAINED_KEY: {"hash": probe.hash, "name": probe.name}})
    assert at.selectbox(key=live.PROBE_KEY).options[0] == f"{live.TRAINED_OPTION}: traced"
    assert at.slider(key=live.THRESHOLD_KEY).value == pytest.approx(0.125)
    assert not any("No probe yet" in i for i in texts(at.info))


def rec(index: int, prefix: float, *, kept: bool = True, attempt: int = 0) -> StepRecord:
    return StepRecord(index=index, text=f"s{index}.{attempt}", n_tokens=3, step_score=0.5,
                      prefix_score=prefix, alarm=prefix > 0.5, kept=kept, attempt=attempt)


def test_events_build_the_progress_and_a_kept_attempt_leaves_the_discarded() -> None:
    events = [TokenEvent("a"), TokenEvent("ab"), StepEvent(rec(0, 0.1)),
              StepEvent(rec(1, 0.7, kept=False)),  # step 1, attempt 0 discarded
              StepEvent(rec(1, 0.9, kept=False, attempt=1)),  # attempt 1 discarded too
              StepEvent(rec(1, 0.7, attempt=0))]  # every retry alarmed: attempt 0 kept after all
    progress = live_state.LiveProgress()
    for event in events:
        progress = live_state.apply_event(progress, event)
    assert progress.text == "ab" and progress.tokens == 2 and progress.version == 6
    assert [(r.index, r.attempt) for r in progress.kept] == [(0, 0), (1, 0)]
    assert [(r.index, r.attempt) for r in progress.discarded] == [(1, 1)]
    result = MonitorResult(prompt="q", text="final", steps=[rec(0, 0.1)], discarded=[],
                           tokens_generated=4, tokens_processed=9, stopped_by_alarm=False,
                           threshold=0.5, mode="backtrack")
    done = live_state.apply_event(progress, DoneEvent(result))
    assert done.result is result and done.text == "final"
    assert done.kept == (rec(0, 0.1),) and done.discarded == ()
    assert not done.finished  # the job marks the end once its thread is through
    with pytest.raises(TypeError):
        live_state.apply_event(progress, "token")  # type: ignore[arg-type]


def test_job_turns_a_failure_into_a_sentence_and_finishes() -> None:
    def broken():
        yield TokenEvent("x")
        raise RuntimeError("the cache broke\nsecond line")

    job = live_state.LiveJob(question="q", config=MonitorConfig(), threshold=0.5,
                             probe_name="p")
    job.run(broken())
    assert job.progress.finished and job.progress.text == "x"
    assert job.progress.error == "The monitor failed: RuntimeError: the cache broke"
    assert not job.running and not job.should_stop()
    job.stop()
    assert job.should_stop() and job.stop_requested


def test_job_board_keeps_running_jobs_and_drops_old_finished_ones() -> None:
    board = live_state.JobBoard()
    running = live_state.LiveJob(question="q", config=MonitorConfig(), threshold=0.5,
                                 probe_name="p")
    board.add(running)
    finished = []
    for _ in range(live_state.MAX_JOBS + 3):
        job = live_state.LiveJob(question="q", config=MonitorConfig(), threshold=0.5,
                                 probe_name="p")
        job.run(iter(()))
        finished.append(job)
        board.add(job)
    assert board.get(running.id) is running
    assert board.get(finished[-1].id) is finished[-1]
    assert board.get(finished[0].id) is None
    assert board.get(None) is None


@pytest.mark.e2e
def test_backtracking_run_on_default_model_ends_with_summary(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setattr(dstate, "shipped_probes", lambda *_: [])
    # a large tracker bias: every step alarms, so each is retried once, then the least
    # alarming attempt is kept
    save_probe(tmp_path / "alarming", random_bundle(DEFAULT_HIDDEN, bias=8.0, threshold=0.5))
    at = use_probe_path(open_live(), tmp_path / "alarming")
    at.text_area(key=live.PROMPT_KEY).input("Count: 1\n2\n3\n4\n5\n6\n7").run()
    at.radio(key=live.MODE_KEY).set_value("backtrack").run()
    at.number_input(key=live.MAX_TOKENS_KEY).set_value(24).run()
    at.number_input(key=live.RETRIES_KEY).set_value(1).run()
    button(at, "Start").click().run(timeout=RUN_TIMEOUT)  # loads the model, writes, reruns
    assert not at.exception and not at.error
    assert any("SmolLM2" in m for m in texts(at.sidebar.markdown))  # the model card
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"steps", "alarms", "discarded", "tokens generated",
                            "tokens processed", "stopped by alarm"}
    assert 1 <= int(metrics["tokens generated"]) <= 24
    assert int(metrics["tokens processed"]) >= int(metrics["tokens generated"])
    assert int(metrics["alarms"]) == int(metrics["steps"]) >= 1  # every kept step alarmed
    assert int(metrics["discarded"]) >= 1 and metrics["stopped by alarm"] == "no"
    assert not button(at, "Start").disabled and button(at, "Stop").disabled  # run over
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = {trace.get("name") for trace in figure["data"]}
    assert {"c_prefix (prefix tracker)", "alarm", "discarded attempt (c_prefix)"} <= names
    transcript = "".join(str(h.proto.body) for h in at.get("html"))
    assert "<s>" in transcript and "⚠ alarm" in transcript
    assert [b.label for b in at.get("download_button")] == [
        "Download the result (JSON)", "Download the figure (HTML)"]
    job = live_state.job_board().get(at.session_state[live.JOB_KEY])
    assert job is not None and job.progress.result is not None
    assert job.config.mode == "backtrack" and job.config.max_new_tokens == 24
    for key in (live.JOB_KEY, live.THRESHOLD_FOR_KEY):  # small plain values only
        json.dumps(at.session_state[key])

    # stop mode: the first step alarms, and generation ends there (the kill switch)
    at.radio(key=live.MODE_KEY).set_value("stop").run()
    button(at, "Start").click().run(timeout=RUN_TIMEOUT)
    assert not at.exception
    assert any("The alarm stopped generation" in e for e in texts(at.error))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["stopped by alarm"] == "yes"
    assert metrics["steps"] == metrics["alarms"] == "1" and metrics["discarded"] == "0"

    # a probe made for another model: one sentence, no run
    save_probe(tmp_path / "small", random_bundle(32, layer=1))
    at.text_input(key=live.PROBE_PATH_KEY).input(str(tmp_path / "small")).run()
    button(at, "Start").click().run(timeout=RUN_TIMEOUT)
    assert not at.exception
    assert any("hidden size 32" in e and "telltale train" in e for e in texts(at.error))
