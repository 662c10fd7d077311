"""The dashboard's shared machinery: `dashboard.common.runs` (a press keeps a request, the sidebar
model is checked, the work runs under a progress bar, a failure is one sentence) under AppTest
with a stand-in model, and `dashboard.common.jobs` (background jobs that finish, stop or fail,
one per key) in plain threads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.common import runs
from dashboard.common.jobs import Board, Job
from dashboard.common.runs import FINISHED, PRESSED, RUNNING, error_sentence
from dashboard.common.state import MODEL_CHOICE_KEY, ModelKey, model_key

MODEL = ("tiny", "cpu", "float32")
OTHER = ("other", "cpu", "float32")


@dataclass(frozen=True)
class Ask:
    """A request as the pages make them: plain values, the model among them."""

    model: ModelKey
    n: int

    def to_state(self) -> dict[str, Any]:
        return {"model": list(self.model), "n": self.n}

    @classmethod
    def from_state(cls, value: object) -> Ask | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(model_key(value["model"]), int(value["n"]))
        except (KeyError, TypeError, ValueError):
            return None


def page() -> None:
    """A page with one Run: `n` from a number input, work that counts to n (or fails, as the
    session state's "fail" says) with a bar per stage."""
    import streamlit as st

    from dashboard.common.runs import Bar, Run, with_model
    from tests.test_dashboard_common import MODEL, Ask

    run = Run("ask", "Go", noun="count", resume=bool(st.session_state.get("resume", True)))
    n = int(st.number_input("n", value=3, key="n"))
    run.button(with_model(Ask(MODEL, n)))
    request = run.request(Ask.from_state)
    if request is None:
        st.info("Press Go.")
        return

    def work(bar: Bar) -> int:
        for done in range(request.n + 1):
            bar(done, request.n)
        fail = st.session_state.get("fail")
        if fail:
            bar.stage("Adding up", "sums")(0, 1)
            raise (ValueError if fail == "value" else RuntimeError)(f"{fail} broke\nline 2")
        return request.n * 10

    value = run.result(request, work, "Counting", "items")
    if value is not None:
        st.markdown(f"value {value}")


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The page with a stand-in for the loaded model (any object: the work never touches it)."""
    monkeypatch.setattr(runs, "current_model", lambda: object())
    at = AppTest.from_function(page, default_timeout=30)
    at.session_state[MODEL_CHOICE_KEY] = MODEL
    return at


def texts(elements: object) -> list[str]:
    return [str(e.value) for e in elements]  # type: ignore[attr-defined]


def test_a_press_keeps_the_request_and_the_run_finishes(app: AppTest) -> None:
    app.run()
    assert texts(app.info) == ["Press Go."] and "ask" not in app.session_state
    app.number_input(key="n").set_value(4)
    app.button[0].click().run()  # the value typed before the press counts
    assert not app.exception and not app.error
    assert texts(app.markdown) == ["value 40"]
    assert app.session_state["ask"] == {"request": {"model": list(MODEL), "n": 4},
                                        "status": FINISHED}
    assert not app.get("progress")  # every bar ends empty
    app.run()  # a rerun shows the kept request's result again
    assert texts(app.markdown) == ["value 40"]


def test_a_failure_is_one_sentence_naming_the_stage(app: AppTest) -> None:
    app.session_state["fail"] = "runtime"
    app.run()
    app.button[0].click().run()
    assert not app.exception
    assert texts(app.error) == ["Adding up failed: RuntimeError: runtime broke"]
    assert app.session_state["ask"]["status"] == RUNNING  # did not finish
    app.session_state["fail"] = "value"
    app.run()
    assert texts(app.error) == ["Adding up failed: value broke"]  # a ValueError says it all


def test_the_model_is_checked_before_the_work(app: AppTest) -> None:
    app.session_state["ask"] = {"request": {"model": list(OTHER), "n": 2}, "status": FINISHED}
    app.run()
    assert texts(app.info) == ["The model changed since the last count: press **Go** again."]
    assert not app.markdown
    app.session_state[MODEL_CHOICE_KEY] = None  # no model loaded at all
    app.run()
    assert texts(app.warning) == ["No model is loaded (see the sidebar): load one, then press "
                                  "**Go** again."]


def test_an_interrupted_run_waits_for_a_press_unless_it_resumes(app: AppTest) -> None:
    app.session_state["ask"] = {"request": {"model": list(MODEL), "n": 2}, "status": RUNNING}
    app.session_state["resume"] = False
    app.run()
    assert texts(app.info) == ["The last run did not finish (it was interrupted or failed): "
                               "press **Go** to run it again."]
    app.session_state["resume"] = True
    app.run()
    assert texts(app.markdown) == ["value 20"]


def take_page() -> None:
    import streamlit as st

    from dashboard.common.runs import Run
    from tests.test_dashboard_common import Ask

    taken = Run("ask", "Go").take(Ask.from_state)
    st.markdown(f"taken {taken[0].n}" if taken else "nothing")


def test_take_hands_a_pressed_request_over_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "current_model", lambda: "loaded")
    at = AppTest.from_function(take_page, default_timeout=30)
    at.session_state[MODEL_CHOICE_KEY] = MODEL
    at.session_state["ask"] = {"request": {"model": list(MODEL), "n": 5}, "status": PRESSED}
    at.run()
    assert texts(at.markdown) == ["taken 5"] and "ask" not in at.session_state
    at.run()
    assert texts(at.markdown) == ["nothing"]


def test_error_sentence_is_the_first_line_only() -> None:
    assert error_sentence("Scoring", ValueError("bad probe\nmore")) == "Scoring failed: bad probe"
    assert error_sentence("The monitor", KeyError("x")) == "The monitor failed: KeyError: 'x'"
    assert len(error_sentence("X", RuntimeError("y" * 1000))) < 350


# ---------------------------------------------------------------------------- jobs


def counting(n: int, pause: float = 0.0) -> Any:
    def work(job: Job[int]) -> int:
        for done in range(1, n + 1):
            if job.should_stop():
                return -done
            time.sleep(pause)
            job.report(done, n)
            job.publish(f"{done} so far")
        return n

    return work


def test_a_job_that_finishes_reports_and_returns() -> None:
    board = Board()
    job = board.start("a", counting(3), "Counting")
    assert job.wait(5) and job.finished and not job.running
    assert (job.done, job.total, job.result, job.error) == (3, 3, 3, None)
    assert job.snapshot == "3 so far" and job.version >= 7  # 3 reports, 3 publishes, the end
    assert board.get("a") is job and board.get(None) is None and board.get("b") is None


def test_a_stopped_job_ends_and_the_next_start_replaces_it() -> None:
    board = Board()
    job = board.start("a", counting(10_000, pause=0.001), "Counting")
    time.sleep(0.05)
    job.stop()
    assert job.wait(5) and job.stop_requested and job.error is None
    assert job.result is not None and job.result < 0  # it saw the stop partway
    again = board.start("a", counting(2), "Counting")
    assert again is not job and again.wait(5) and again.result == 2
    assert board.get("a") is again


def test_a_job_that_raises_keeps_one_sentence_and_is_retried() -> None:
    def broken(job: Job[int]) -> int:
        job.report(1, 2)
        raise RuntimeError("the cache broke\nsecond line")

    board = Board()
    job = board.start("a", broken, "The monitor")
    assert job.wait(5) and job.result is None
    assert job.error == "The monitor failed: RuntimeError: the cache broke"
    again = board.start("a", counting(1), "The monitor")
    assert again is not job and again.wait(5) and again.result == 1


def test_the_board_keeps_one_job_per_key() -> None:
    release = threading.Event()

    def waiting(job: Job[str]) -> str:
        release.wait(5)
        return "done"

    board = Board()
    first = board.start("k", waiting, "Waiting")
    assert board.start("k", counting(1), "Counting") is first  # still running: the same job
    release.set()
    assert first.wait(5) and first.result == "done"
    assert board.start("k", counting(1), "Counting") is first  # finished well: a cache hit
    assert len(board) == 1


def test_the_board_drops_the_oldest_finished_jobs() -> None:
    board = Board(max_finished=3)
    release = threading.Event()
    running = board.start("running", lambda job: release.wait(5), "Waiting")
    for i in range(5):
        assert board.start(f"done-{i}", counting(1), "Counting").wait(5)
    board.start("last", counting(1), "Counting").wait(5)
    assert board.get("running") is running  # a running job is never dropped
    assert board.get("done-0") is None and board.get("done-1") is None
    assert board.get("last") is not None and len(board) <= 5
    release.set()
    assert running.wait(5)


def _wait_for_stop(job: Job[Any]) -> Any:
    while not job.should_stop():
        time.sleep(0.01)
    return "stopped"


def test_leaving_a_page_stops_its_jobs_unless_they_keep_going(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard.common import jobs

    monkeypatch.setattr(jobs, "current_session", lambda: "s1")
    board = Board()
    live = board.start("live", _wait_for_stop, "Live", page="live")
    compare = board.start("compare", _wait_for_stop, "Compare", page="fine-tuning",
                          keeps_going=True)
    assert board.leave_others("s1", "live") == [] and live.running
    assert board.leave_others("s2", "traces") == []  # another session's page view
    assert board.leave_others("s1", "traces") == [live]
    assert live.wait(5) and live.result == "stopped" and compare.running
    compare.stop()
    assert compare.wait(5)


def test_a_job_stops_when_its_session_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard.common import jobs

    alive = {"s1": True}
    monkeypatch.setattr(jobs, "current_session", lambda: "s1")
    monkeypatch.setattr(jobs, "session_alive", lambda session: alive[session])
    monkeypatch.setattr(jobs, "SESSION_CHECK_S", 0.0)
    board = Board()
    job = board.start("k", _wait_for_stop, "Work", page="live", keeps_going=True)
    time.sleep(0.05)
    assert job.running
    alive["s1"] = False  # the tab closed
    assert job.wait(5) and job.result == "stopped"
    board.leave_others(None, "traces")
    assert board.get("k") is None  # a finished job of an ended session is dropped


def test_report_or_stop_ends_core_work_without_an_error() -> None:
    def work(job: Job[Any]) -> str:
        for step in range(1000):
            job.report_or_stop(step, 1000)
            time.sleep(0.005)
        return "done"

    job = Board().start("k", work, "The comparison")
    time.sleep(0.05)
    job.stop()
    assert job.wait(5)
    assert job.result is None and job.error is None and job.done < 999
