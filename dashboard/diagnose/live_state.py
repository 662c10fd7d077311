"""What the Live page keeps between reruns: its request, monitor runs on the process's job
board (`dashboard.common.jobs`), and the sample problems. (Probe files are read and cached by
`probe_state`, as on the Traces page.)

A monitor run works in a background job: a Stop press reruns the script, which a loop inside
the script could never see. The job consumes `core.diagnose.monitor.monitor_events` (which ends
through `should_stop`) into a frozen `LiveProgress` it publishes after every event; the page
only reads it. Session state holds the request (plain values) and the job's key.

    job = start_job(loaded, bundle, request)
    live_progress(job).text, job.finished   # read at any time; job.stop() ends it
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

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
from dashboard.common.jobs import Job, board
from dashboard.common.state import ModelKey, model_key

SAMPLE_SEED = 1000  # held out: the shipped traces and probes use seed 0
N_SAMPLES = 8
PAGE = "live"  # the url path of the Live page: its run stops when the page is left
# the MonitorConfig fields the page sets (the others keep their defaults)
PAGE_SETTINGS = ("mode", "trigger", "threshold", "rise_margin", "temperature", "top_p",
                 "max_new_tokens", "seed", "retries", "max_backtracks", "retry_temperature_step")


@dataclass(frozen=True)
class LiveRequest:
    """A "Start" press: the model, the prompt, the probe (by its files' hash) and the monitor's
    settings; kept in session state as plain values."""

    model: ModelKey
    prompt: str
    probe_hash: str
    probe_name: str
    config: MonitorConfig

    def to_state(self) -> dict[str, Any]:
        return {"model": list(self.model), "prompt": self.prompt, "probe_hash": self.probe_hash,
                "probe_name": self.probe_name,
                "config": {k: getattr(self.config, k) for k in PAGE_SETTINGS}}

    @classmethod
    def from_state(cls, value: object) -> LiveRequest | None:
        if not isinstance(value, dict):
            return None
        try:
            config = MonitorConfig(**{k: value["config"][k] for k in PAGE_SETTINGS})
            return cls(model_key(value["model"]), str(value["prompt"]), str(value["probe_hash"]),
                       str(value["probe_name"]), config)
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class LiveRun:
    """What a running job shows beside its progress: the question, the settings, the threshold
    on c_step in force (the config's, else the probe's calibrated step threshold; None for the
    prefix-rise trigger) and the probe's name."""

    question: str
    config: MonitorConfig
    threshold: float | None
    probe_name: str


@dataclass(frozen=True)
class LiveProgress:
    """A run so far: the text, the kept and the discarded steps, and the result at the end."""

    text: str = ""
    kept: tuple[StepRecord, ...] = ()
    discarded: tuple[StepRecord, ...] = ()
    tokens: int = 0  # tokens written so far, retries included
    result: MonitorResult | None = None


def apply_event(progress: LiveProgress, event: MonitorEvent) -> LiveProgress:
    """The progress after one monitor event.

    A discarded step (kept=False) joins `discarded`. A kept step takes its place among `kept`
    by index and leaves `discarded` if it was there: when every retry alarmed, the least
    alarming attempt, first reported as discarded, comes again as kept. The final result
    replaces both lists.
    """
    if isinstance(event, TokenEvent):
        return replace(progress, text=event.text, tokens=progress.tokens + 1)
    if isinstance(event, StepEvent):
        step = event.step
        if not step.kept:
            return replace(progress, discarded=(*progress.discarded, step))
        same = (step.index, step.attempt)
        discarded = tuple(d for d in progress.discarded if (d.index, d.attempt) != same)
        kept = tuple(sorted([*(k for k in progress.kept if k.index != step.index), step],
                            key=lambda r: r.index))
        return replace(progress, kept=kept, discarded=discarded)
    if isinstance(event, DoneEvent):
        result = event.result
        return replace(progress, text=result.text, kept=tuple(result.steps),
                       discarded=tuple(result.discarded), result=result)
    raise TypeError(f"Not a monitor event: {type(event).__name__}.")


def live_progress(job: Job[Any]) -> LiveProgress:
    """The latest progress a monitor job published (empty before the first event)."""
    return job.snapshot if isinstance(job.snapshot, LiveProgress) else LiveProgress()


def live_run(job: Job[Any]) -> LiveRun:
    if not isinstance(job.request, LiveRun):
        raise TypeError(f"Job {job.key} is not a monitor run.")
    return job.request


def start_job(loaded: LoadedModel, bundle: ProbeBundle, request: LiveRequest) -> Job[Any]:
    """Start a monitor run as a background job on the board (under a new key). Raises
    ValueError at once when the probe was made for another model or the prompt is empty."""
    bundle.check_model(loaded.spec, loaded.hidden_size)
    if not request.prompt.strip():
        raise ValueError("Type a prompt first.")
    config = request.config
    threshold = None if config.trigger == "prefix-rise" else float(
        bundle.meta.step_threshold if config.threshold is None else config.threshold)
    run = LiveRun(request.prompt, config, threshold, request.probe_name)

    def work(job: Job[MonitorResult | None]) -> MonitorResult | None:
        progress = LiveProgress()
        job.publish(progress)
        for event in monitor_events(loaded, bundle, request.prompt, config,
                                    should_stop=job.should_stop):
            progress = apply_event(progress, event)
            job.publish(progress)
        return progress.result

    return board().start(f"live-{uuid.uuid4().hex[:12]}", work, "The monitor", request=run,
                         page=PAGE)


def sample_prompts(n: int = N_SAMPLES, seed: int = SAMPLE_SEED) -> list[tuple[str, str]]:
    """(short label, full prompt) of `n` held-out arithmetic problems in the traces' format."""
    out = []
    for problem in generate_problems(n, seed=seed):
        label = problem.question if len(problem.question) <= 90 else \
            problem.question[:87].rstrip() + "..."
        out.append((label, cot_prompt(problem)))
    return out
