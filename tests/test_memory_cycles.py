"""Abandoned background runs free their memory: ten times a session starts a Live run on a tiny
random Llama, leaves the page while the model writes (the run stops at its next token) and
closes its tab (the board drops the finished job). Afterwards no job, result or partial
result is left alive, and the process's resident memory stays bounded across the cycles."""

from __future__ import annotations

import gc
import os
import time
import weakref
from pathlib import Path

import pytest

from core.diagnose.monitor import MonitorConfig
from dashboard.common import jobs
from dashboard.diagnose import live_state
from tests.test_monitor import QUESTION, bundle, loaded  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STATM = Path("/proc/self/statm")
CYCLES = 10
MAX_GROWTH_MB = 48.0  # resident growth allowed from the third cycle to the last


def resident_mb() -> float:
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not STATM.exists(), reason="reads /proc/self/statm (Linux)")
def test_ten_start_and_abandon_cycles_leave_nothing_behind(
        loaded, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    ended: set[str] = set()
    session = {"id": ""}
    monkeypatch.setattr(jobs, "current_session", lambda: session["id"])
    monkeypatch.setattr(jobs, "session_alive", lambda s: s not in ended)
    board = jobs.board()
    probes = bundle()
    left: list[weakref.ref[object]] = []
    resident = []
    for cycle in range(CYCLES):
        session["id"] = f"session-{cycle}"
        config = MonitorConfig(max_new_tokens=400, seed=cycle, stop_at_answer=False,
                               temperature=1.0)
        request = live_state.LiveRequest(("tiny-char", "cpu", "auto"), QUESTION, "hash",
                                         "probe", config)
        job = live_state.start_job(loaded, probes, request)
        deadline = time.monotonic() + 60
        while live_state.live_progress(job).tokens < 20 and not job.finished:
            assert time.monotonic() < deadline, "the run never started writing"
            time.sleep(0.01)
        assert job.running, "the run ended before it was abandoned: make it longer"
        assert board.leave_others(session["id"], "traces") == [job]  # the page is left
        assert job.wait(30) and job.error is None
        assert live_state.live_progress(job).tokens < config.max_new_tokens  # it stopped
        ended.add(session["id"])  # the tab closes
        board.leave_others(None, "live")  # any later script run drops the ended session's jobs
        assert board.get(job.key) is None
        left += [weakref.ref(job), weakref.ref(live_state.live_progress(job))]
        del job
        gc.collect()
        resident.append(resident_mb())
    assert [ref for ref in left if ref() is not None] == []
    growth = resident[-1] - resident[2]
    print(f"resident memory per cycle (MB): {[round(r, 1) for r in resident]}")
    assert growth < MAX_GROWTH_MB, f"grew {growth:.1f} MB over {CYCLES - 3} cycles"
