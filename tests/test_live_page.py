"""The Live page under `streamlit.testing.v1.AppTest`: it renders without a model and without a
probe (a note says how to get one), reads a probe file and starts its threshold at the calibrated
one, reports bad probe files as a sentence, and (e2e, on the default model) runs a backtracking
reply to the end with its summary, struck-through discarded attempts and downloads. Also the
pure bookkeeping of `dashboard.diagnose.live_state` (events into progress, requests)."""

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
from dashboard.common.jobs import board
from dashboard.diagnose import live_page as live
from dashboard.diagnose import live_state
from dashboard.diagnose import probe_state as dstate

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
TIMEOUT = 120
RUN_TIMEOUT = 500  # loads the default model (~15-20 s alone, more on a busy machine) and writes
DEFAULT_HIDDEN = 576  # SmolLM2-135M
DEFAULT_LAYERS = 30


def random_bundle(hidden: int, *, layer: int = 15, bias: float = 0.0, threshold: float = 0.5,
                  seed: int = 0, step_threshold: float = 0.5,
                  step_bias: float = 0.0) -> ProbeBundle:
    """A step probe and a prefix tracker with random weights (as in tests/test_monitor.py)."""
    rng = np.random.default_rng(seed)
    meta = ProbeMeta(model="default", model_name="test-probe-model", hidden_size=hidden,
                     layer=layer, step_pooling="exp", tracker_pooling="causal",
                     baseline_pooling="prefix_mean", step_input=True, threshold=threshold,
                     step_threshold=step_threshold, data_hash="test")
    return ProbeBundle(meta=meta, step=LinearProbe(rng.normal(size=hidden) * 3, step_bias),
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
    save_probe(tmp_path / "one", random_bundle(DEFAULT_HIDDEN, threshold=0.375,
                                               step_threshold=0.4375))
    save_probe(tmp_path / "two", random_bundle(DEFAULT_HIDDEN, threshold=0.8, seed=1,
                                               step_threshold=0.875))
    at = use_probe_path(open_live(), tmp_path / "one")
    assert not at.error and not at.info
    assert at.slider(key=live.THRESHOLD_KEY).value == pytest.approx(0.438)  # c_step's
    assert any(c.startswith("**one**") and "alarm threshold **0.375**" in c
               and "layer **15**" in c for c in texts(at.caption))
    assert not button(at, "Start").disabled
    at.slider(key=live.THRESHOLD_KEY).set_value(0.6).run()
    assert at.slider(key=live.THRESHOLD_KEY).value == pytest.approx(0.6)  # the user's stays
    at.text_input(key=live.PROBE_PATH_KEY).input(str(tmp_path / "two.json")).run()
    assert at.slider(key=live.THRESHOLD_KEY).value == pytest.approx(0.875)  # a new probe resets
    at.radio(key=live.TRIGGER_KEY).set_value("prefix-rise").run()  # a margin instead
    assert live.THRESHOLD_KEY not in [slider.key for slider in at.slider]
    assert at.slider(key=live.MARGIN_KEY).value == pytest.approx(0.2)
    at.radio(key=live.TRIGGER_KEY).set_value("step").run()
    at.selectbox(key=live.PROBE_KEY).select(live.UPLOAD_OPTION).run()  # no probe: no slider
    use_probe_path(at, tmp_path / "two")  # the same probe again
    assert at.slider(key=live.THRESHOLD_KEY).value == pytest.approx(0.875)  # never 0


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
    weights, sidecar = save_probe(tmp_path / "up",
                                  random_bundle(DEFAULT_HIDDEN, step_threshold=0.25))
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
    probe = dstate.ProbeFile.of(random_bundle(DEFAULT_HIDDEN, step_threshold=0.125), "traced")
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
    assert progress.text == "ab" and progress.tokens == 2
    assert [(r.index, r.attempt) for r in progress.kept] == [(0, 0), (1, 0)]
    assert [(r.index, r.attempt) for r in progress.discarded] == [(1, 1)]
    result = MonitorResult(prompt="q", text="final", steps=[rec(0, 0.1)], discarded=[],
                           tokens_generated=4, tokens_processed=9, stopped_by_alarm=False,
                           threshold=0.5, mode="backtrack")
    done = live_state.apply_event(progress, DoneEvent(result))
    assert done.result is result and done.text == "final"
    assert done.kept == (rec(0, 0.1),) and done.discarded == ()
    with pytest.raises(TypeError):
        live_state.apply_event(progress, "token")  # type: ignore[arg-type]


def test_live_request_round_trips_through_plain_values() -> None:
    config = MonitorConfig(mode="backtrack", threshold=0.3, max_new_tokens=24, retries=1)
    request = live_state.LiveRequest(("default", "cpu", "auto"), "What is 2 + 2?", "abc", "p",
                                     config)
    plain = json.loads(json.dumps(request.to_state()))
    assert live_state.LiveRequest.from_state(plain) == request
    assert live_state.LiveRequest.from_state({**plain, "config": {"mode": "nap"}}) is None
    assert live_state.LiveRequest.from_state(None) is None


def test_a_monitor_job_publishes_its_progress_and_ends_with_the_result(
        monkeypatch: pytest.MonkeyPatch) -> None:
    result = MonitorResult(prompt="q", text="ab", steps=[rec(0, 0.1)], discarded=[],
                           tokens_generated=2, tokens_processed=5, stopped_by_alarm=False,
                           threshold=0.5, mode="watch")
    events = [TokenEvent("a"), TokenEvent("ab"), StepEvent(rec(0, 0.1)), DoneEvent(result)]
    monkeypatch.setattr(live_state, "monitor_events", lambda *a, **k: iter(events))
    request = live_state.LiveRequest(("m", "cpu", "auto"), "q", "h", "probe", MonitorConfig())
    loaded = type("Loaded", (), {"spec": "m", "hidden_size": DEFAULT_HIDDEN})()
    job = live_state.start_job(loaded, random_bundle(DEFAULT_HIDDEN, step_threshold=0.375),
                               request)  # type: ignore[arg-type]
    assert job.wait(5) and job.error is None and job.result is result
    assert live_state.live_progress(job).text == "ab"
    assert live_state.live_run(job).threshold == pytest.approx(0.375)  # the probe's
    with pytest.raises(ValueError, match="prompt"):
        live_state.start_job(loaded, random_bundle(DEFAULT_HIDDEN),  # type: ignore[arg-type]
                             live_state.LiveRequest(("m", "cpu", "auto"), " ", "h", "p",
                                                    MonitorConfig()))


@pytest.mark.e2e
def test_backtracking_run_on_default_model_ends_with_summary(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setattr(dstate, "shipped_probes", lambda *_: [])
    # large biases: every step's c_step is over its threshold, so every step alarms, is retried
    # once, then the least alarming attempt is kept
    save_probe(tmp_path / "alarming", random_bundle(DEFAULT_HIDDEN, bias=8.0, threshold=0.5,
                                                    step_bias=20.0))
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
    job = board().get(at.session_state[live.JOB_KEY])
    assert job is not None and live_state.live_progress(job).result is not None
    config = live_state.live_run(job).config
    assert config.mode == "backtrack" and config.max_new_tokens == 24
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
