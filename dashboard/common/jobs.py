"""One board of background jobs for the whole process: work that outlives a script run.

Why a thread: a widget press makes Streamlit rerun the script, which interrupts the running
script at its next `st.*` call, so a loop inside the script could never see a Stop press and
would lose its work on any click. A `Job` runs its work in a daemon thread that draws nothing;
the page only reads the job (`done`/`total`, the latest `snapshot` the work published, then
`result` or `error`), so any rerun finds the same job on the board and follows it on. Session
state holds only the job's key (a short string); the jobs sit on one `Board` per process
(`st.cache_resource`), one job per key.

    job = board().start("compare-3f2a", lambda job: work(job.report, job.should_stop),
                        what="The comparison", request=request)
    job.done, job.total, job.running          # read at any time; job.stop() asks it to end
    board().get("compare-3f2a") is job

The work is `work(job)`: it reports progress with `job.report(done, total)` (a
`core.progress.Progress`), may publish a partial result with `job.publish(value)`, checks
`job.should_stop()` (a `threading.Event`) between units, and returns the result; an exception
becomes one sentence in `job.error`.

Abandoned work stops: a job remembers the session that started it (`owner`) and its page.
`should_stop()` is also true once that session has ended (the browser tab closed), and
`Board.leave_others(session, page)`, called by the app on every script run, stops the
session's jobs of other pages unless they were started with `keeps_going=True` (the page then
says so and offers Stop). A stopped job's thread ends at its next check and the board drops
it with its memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import streamlit as st

from core.progress import Stopped, check_stop
from dashboard.common.runs import error_sentence

T = TypeVar("T")
MAX_FINISHED = 16  # finished jobs kept on the board (each holds one small result)
SESSION_CHECK_S = 1.0  # how often a job asks whether its session still exists


def current_session() -> str | None:
    """The id of the session whose script is running in this thread (None outside one)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    return None if ctx is None else ctx.session_id


def session_alive(session: str) -> bool:
    """False once the session has ended (its browser tab closed and the runtime let it go)."""
    from streamlit import runtime

    if not runtime.exists():
        return True  # no server (tests, bare mode): nothing ends a session
    return bool(runtime.get_instance().is_active_session(session))


@dataclass(eq=False)
class Job(Generic[T]):
    """One piece of work in a background thread. The thread replaces its fields (each value
    itself never mutated), so a reader always sees a consistent one; `version` grows with every
    change, so a page redraws only when something happened."""

    key: str
    what: str  # names the work in the error sentence: "{what} failed: ..."
    request: Any = None  # what the job was started for (a small record the page shows)
    done: int = 0
    total: int = 0
    snapshot: object = None  # the latest partial result the work published
    version: int = 0
    result: T | None = None
    error: str | None = None
    finished: bool = False
    owner: str | None = None  # the session that started it (None: no session, e.g. a test)
    page: str | None = None  # the page it belongs to (None: any)
    keeps_going: bool = False  # True: it goes on when its page is left (the page says so)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _checked_at: float = field(default=0.0, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return not self.finished

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the work to end at its next check of `should_stop`."""
        self._stop.set()

    def should_stop(self) -> bool:
        """True once Stop was asked for, or once the session that started the job ended."""
        if self._stop.is_set():
            return True
        now = time.monotonic()
        if self.owner is not None and now - self._checked_at >= SESSION_CHECK_S:
            self._checked_at = now
            if not session_alive(self.owner):
                self._stop.set()
        return self._stop.is_set()

    def report(self, done: int, total: int) -> None:
        """A `core.progress.Progress` callback for the work."""
        self.done, self.total = done, total
        self.version += 1

    def report_or_stop(self, done: int, total: int) -> None:
        """`report`, then raise `core.progress.Stopped` when the job should stop: the progress
        callback of core work that has no `should_stop` of its own ends at its next unit."""
        self.report(done, total)
        check_stop(self.should_stop, self.what)

    def publish(self, value: object) -> None:
        """Show a partial result (a frozen value: it is read from another thread)."""
        self.snapshot = value
        self.version += 1

    def run(self, work: Callable[[Job[T]], T]) -> None:
        """`work(self)` to its end (in the job's thread); a failure becomes one sentence."""
        try:
            self.result = work(self)
        except Stopped:
            self.result = None  # stopped on request: no result, no error
        except Exception as error:  # noqa: BLE001 - shown on the page as a sentence
            self.error = error_sentence(self.what, error)
        finally:
            self.finished = True
            self.version += 1

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the work ends (tests); True if it did."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.finished


class Board:
    """The process's jobs by key, one per key. A job still running, or finished with a result
    and not stopped, is kept for its key (`start` returns it: the same request later is a cache
    hit); a failed or stopped one is replaced by the next start. Finished jobs beyond
    `max_finished` are dropped, oldest first."""

    def __init__(self, max_finished: int = MAX_FINISHED) -> None:
        self._jobs: dict[str, Job[Any]] = {}
        self._lock = threading.Lock()
        self.max_finished = max_finished

    def get(self, key: object) -> Job[Any] | None:
        with self._lock:
            return self._jobs.get(key) if isinstance(key, str) else None

    def start(self, key: str, work: Callable[[Job[T]], T], what: str, request: Any = None,
              page: str | None = None, keeps_going: bool = False) -> Job[T]:
        """The job for `key`: the one on the board (see the class), or a new one whose thread
        runs `work(job)`, owned by the current session and belonging to `page`."""
        with self._lock:
            old = self._jobs.get(key)
            if old is not None and (old.running or (old.error is None
                                                    and not old.stop_requested)):
                return old
            job: Job[T] = Job(key=key, what=what, request=request, owner=current_session(),
                              page=page, keeps_going=keeps_going)
            self._jobs.pop(key, None)
            self._jobs[key] = job  # newest last: the order drops the oldest first
            finished = [k for k, j in self._jobs.items() if j.finished]
            for old_key in finished[: max(0, len(finished) - self.max_finished)]:
                del self._jobs[old_key]
        job._thread = threading.Thread(target=job.run, args=(work,), daemon=True,
                                       name=f"telltale-job-{key}")
        job._thread.start()
        return job

    def leave_others(self, session: str | None, page: str) -> list[Job[Any]]:
        """Stop this session's running jobs of pages other than `page` (unless they keep going),
        and drop finished jobs whose session has ended; returns the jobs it stopped."""
        stopped = []
        with self._lock:
            for key, job in list(self._jobs.items()):
                if job.finished and job.owner is not None and not session_alive(job.owner):
                    del self._jobs[key]
                elif (job.running and session is not None and job.owner == session
                      and job.page not in (None, page) and not job.keeps_going):
                    job.stop()
                    stopped.append(job)
        return stopped

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)


@st.cache_resource(show_spinner=False)
def board() -> Board:
    """The one board of this process (every session's jobs)."""
    return Board()


__all__ = ["MAX_FINISHED", "Board", "Job", "board"]


def session_job(state_key: str) -> Job[Any] | None:
    """The job whose key this session keeps under `state_key` (None when there is none)."""
    return board().get(st.session_state.get(state_key))


def stop_session_job(state_key: str) -> None:
    """Ask the session's job under `state_key` to stop (an on_click: it runs first thing in the
    rerun the press starts)."""
    job = session_job(state_key)
    if job is not None:
        job.stop()
