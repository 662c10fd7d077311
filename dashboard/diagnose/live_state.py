"""What the Live page keeps between reruns: monitor runs working in background threads, and the
sample problems. (Probe files are read and cached by `dashboard.diagnose_state`, as on the Traces
page.)

Why a thread: a Stop press makes Streamlit rerun the script, which interrupts the running script
at its next `st.*` call, so a monitor loop inside the script could never see the press. The run
lives instead in a `LiveJob` (a thread that draws nothing and ends through `monitor_events`'
`should_stop`); the page only reads its progress, so any rerun (Stop, a widget change) finds the
same run and follows it on. Session state holds just the job's id (a short string); the jobs sit
in one process-wide `JobBoard` (`st.cache_resource`).

    job = start_job(loaded, bundle, question, config, probe_name="my-probe")
    job.progress.text, job.progress.kept   # read at any time; job.stop() ends it
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import streamlit as st

from core.data.arith import cot_prompt, generate_problems
from core.diagnose.monitor import (
    DoneEvent,
    MonitorConfig,
    MonitorEvent,
    MonitorResult,
    StepEvent,
    StepRecord,
    TokenEvent,
    monitor_events,
)
from core.diagnose.probes import ProbeBundle
from core.runtime.models import LoadedModel

SAMPLE_SEED = 1000  # held out: the shipped traces and probes use seed 0
N_SAMPLES = 8
MAX_JOBS = 16  # finished jobs kept on the board (each holds one small result)


@dataclass(frozen=True)
class LiveProgress:
    """A run so far: the text, the kept and the discarded steps, and how it ended."""

    text: str = ""
    kept: tuple[StepRecord, ...] = ()
    discarded: tuple[StepRecord, ...] = ()
    tokens: int = 0  # tokens written so far, retries included
    version: int = 0  # +1 per event: the page redraws only when it changed
    result: MonitorResult | None = None
    error: str | None = None
    finished: bool = False


def apply_event(progress: LiveProgress, event: MonitorEvent) -> LiveProgress:
    """The progress after one monitor event.

    A discarded step (kept=False) joins `discarded`. A kept step takes its place among `kept`
    by index and leaves `discarded` if it was there: when every retry alarmed, the least
    alarming attempt, first reported as discarded, comes again as kept. The final result
    replaces both lists.
    """
    version = progress.version + 1
    if isinstance(event, TokenEvent):
        return replace(progress, text=event.text, tokens=progress.tokens + 1, version=version)
    if isinstance(event, StepEvent):
        step = event.step
        if not step.kept:
            return replace(progress, discarded=(*progress.discarded, step), version=version)
        same = (step.index, step.attempt)
        discarded = tuple(d for d in progress.discarded if (d.index, d.attempt) != same)
        kept = tuple(sorted([*(k for k in progress.kept if k.index != step.index), step],
                            key=lambda r: r.index))
        return replace(progress, kept=kept, discarded=discarded, version=version)
    if isinstance(event, DoneEvent):
        result = event.result
        return replace(progress, text=result.text, kept=tuple(result.steps),
                       discarded=tuple(result.discarded), result=result, version=version)
    raise TypeError(f"Not a monitor event: {type(event).__name__}.")


@dataclass
class LiveJob:
    """One monitor run in a background thread. Not a frozen record by design: the thread
    replaces `progress` (itself frozen, never mutated) on each event, so a reader always sees a
    consistent snapshot."""

    question: str
    config: MonitorConfig
    threshold: float  # the one in force: the config's, else the probe's calibrated one
    probe_name: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    progress: LiveProgress = field(default_factory=LiveProgress)
    stop_requested: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return not self.progress.finished

    def stop(self) -> None:
        """Ask the run to end after the token being written (through `should_stop`)."""
        self.stop_requested = True
        self._stop.set()

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def run(self, events: Iterator[MonitorEvent]) -> None:
        """Consume the monitor's events into `progress`; failures become one sentence."""
        try:
            for event in events:
                self.progress = apply_event(self.progress, event)
        except Exception as error:  # noqa: BLE001 - shown on the page as a sentence
            first = (str(error).strip().splitlines() or [""])[0][:300]
            self.progress = replace(self.progress,
                                    error=f"The monitor failed: {type(error).__name__}: {first}")
        finally:
            self.progress = replace(self.progress, finished=True,
                                    version=self.progress.version + 1)


class JobBoard:
    """The process's live jobs by id; finished ones beyond `MAX_JOBS` are dropped, oldest
    first."""

    def __init__(self) -> None:
        self._jobs: dict[str, LiveJob] = {}
        self._lock = threading.Lock()

    def add(self, job: LiveJob) -> None:
        with self._lock:
            self._jobs[job.id] = job
            finished = [k for k, j in self._jobs.items() if not j.running and k != job.id]
            for key in finished[: max(0, len(self._jobs) - MAX_JOBS)]:
                del self._jobs[key]

    def get(self, job_id: object) -> LiveJob | None:
        with self._lock:
            return self._jobs.get(job_id) if isinstance(job_id, str) else None


@st.cache_resource(show_spinner=False)
def job_board() -> JobBoard:
    return JobBoard()


def start_job(loaded: LoadedModel, bundle: ProbeBundle, question: str, config: MonitorConfig,
              probe_name: str) -> LiveJob:
    """Start a monitor run in a daemon thread and put it on the board. Raises ValueError at
    once when the probe was made for another model."""
    bundle.check_model(loaded.spec, loaded.hidden_size)
    if not question.strip():
        raise ValueError("Type a prompt first.")
    threshold = bundle.meta.threshold if config.threshold is None else config.threshold
    job = LiveJob(question=question, config=config, threshold=float(threshold),
                  probe_name=probe_name)
    events = monitor_events(loaded, bundle, question, config, should_stop=job.should_stop)
    job._thread = threading.Thread(target=job.run, args=(events,), daemon=True,
                                   name=f"telltale-live-{job.id}")
    job_board().add(job)
    job._thread.start()
    return job


# ---------------------------------------------------------------------------- prompts


def sample_prompts(n: int = N_SAMPLES, seed: int = SAMPLE_SEED) -> list[tuple[str, str]]:
    """(short label, full prompt) of `n` held-out arithmetic problems in the traces' format."""
    out = []
    for problem in generate_problems(n, seed=seed):
        label = problem.question if len(problem.question) <= 90 else \
            problem.question[:87].rstrip() + "..."
        out.append((label, cot_prompt(problem)))
    return out
