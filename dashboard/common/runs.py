"""One way for a page to turn a button press into a cached, progress-reported run.

A `Run` names a kind of request (its session-state key and its button's label). Its button
keeps what was asked for (a small request with `to_state()`, the model filled in) when pressed,
choosing the sidebar's model when none is loaded yet, and reruns the script, so the sidebar
loads the model (and shows its card) before the page asks for the result. `result` then checks
that the request's model is the loaded one, runs `work(progress)` (cached calls, in practice)
under a progress bar, and turns a failure into one sentence on the page.

    SCORE = Run("probe_score_request", "Score with this probe", noun="scoring")
    SCORE.button(lambda model: ScoreRequest(model, file_hash, reading, probe.hash))
    request = SCORE.request(ScoreRequest.from_state)          # what was pressed, or None
    chains = SCORE.result(request, lambda bar: score_file(request, traces, bar),
                          "Scoring chains with the probe", "block(s) of chains")

A background job (the Live page, the fine-tuning comparison) starts from the same button with
`take`, which hands a pressed request over once (see `dashboard.common.jobs`).

`Bar` is the progress adapter: a `core.progress.Progress` callback that draws its bar on the
first report. Streamlit records what a cached function draws and replays it on a hit, so a
cached function that is handed a Bar draws the bar itself, inside the call, and empties it on
the last report: then a replay shows nothing, where a bar made outside the call could not be
replayed at all (Streamlit raises CacheReplayClosureError). `bar.stage(text, unit)` is the next
stage's bar; the sentence of a failure names the stage that failed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from core.runtime.models import LoadedModel
from dashboard.common.sidebar import request_model
from dashboard.common.state import ModelKey, current_model, model_choice

T = TypeVar("T")
R = TypeVar("R", bound="Request")

PRESSED, RUNNING, FINISHED = "pressed", "running", "finished"


class Request(Protocol):
    """What a press asks for: plain values (`to_state()`), the model among them."""

    @property
    def model(self) -> ModelKey: ...

    def to_state(self) -> dict[str, Any]: ...


def with_model(request: R) -> Callable[[ModelKey], R]:
    """A button's `make` for a request that is complete but for its model (a dataclass with a
    `model` field): the same request for the model the press loads."""
    # every request is a dataclass; the Request protocol cannot say so
    return lambda model: replace(request, model=model)  # type: ignore[type-var]


def error_sentence(what: str, error: BaseException) -> str:
    """One sentence for a failure: "{what} failed: ...". A ValueError from `core` already says
    what is wrong; anything else is named by its type. Only the first line, never a traceback."""
    first = (str(error).strip().splitlines() or [""])[0][:300]
    if isinstance(error, ValueError):
        return f"{what} failed: {first}"
    return f"{what} failed: {type(error).__name__}: {first}"


def attempt(work: Callable[[], T], what: str) -> T | None:
    """`work()`, or None with its failure shown as one sentence (the page keeps working)."""
    try:
        return work()
    except Exception as error:  # noqa: BLE001 - one sentence, the page keeps working
        st.error(error_sentence(what, error))
        return None


class Bar:
    """A progress callback `bar(done, total)` that draws an `st.progress` bar on its first report
    and empties it on the last (done >= total). A report of (0, 0) draws it at zero before the
    total is known."""

    def __init__(self, text: str, unit: str = "", _stages: list[Bar] | None = None) -> None:
        self.text = text
        self.unit = unit
        self._element: DeltaGenerator | None = None
        self._stages = _stages if _stages is not None else []
        self._stages.append(self)

    @property
    def current(self) -> str:
        """The text of the newest stage: what a failure is named by."""
        return self._stages[-1].text

    def __call__(self, done: int, total: int) -> None:
        if self._element is None:
            self._element = st.progress(0.0, text=f"{self.text} ...")
        if total <= 0:
            return
        if done >= total:
            self._element.empty()
            return
        self._element.progress(done / total, text=f"{self.text}: {done} of {total} {self.unit}")

    def stage(self, text: str, unit: str = "") -> Bar:
        """The bar of the next stage of the same work (its own element, drawn on its first
        report, so each cached call draws its own)."""
        return Bar(text, unit, self._stages)

    def close(self) -> None:
        """Empty every stage's bar (after the work, whatever its outcome)."""
        for bar in self._stages:
            if bar._element is not None:
                bar._element.empty()


@dataclass(frozen=True)
class Run:
    """A kind of request: the session-state `key` it is kept under, the `label` of its button
    (named in notes), the `noun` of "The model changed since the last {noun}", and whether a run
    that a rerun interrupted starts again by itself (`resume`, for work cached in small parts)
    or waits for a new press (long work cached whole)."""

    key: str
    label: str
    noun: str = "run"
    resume: bool = True

    # ---------------------------------------------------------------- the press

    def button(self, make: Callable[[ModelKey], Request] | None, *,
               where: DeltaGenerator | None = None, disabled: bool = False,
               **options: Any) -> None:
        """The primary button (disabled while `make` is None); a press keeps `make(model)`."""
        draw = where.button if where is not None else st.button
        if draw(self.label, type="primary", disabled=disabled or make is None, **options) \
                and make is not None:
            self.press(make)

    def press(self, make: Callable[[ModelKey], Request]) -> None:
        """Keep `make(model)` (the session's model, else the sidebar's inputs) and rerun: the
        sidebar loads that model before the page asks for the result. Built from the inputs of
        this script run, so a value typed just before the press counts."""
        choice = model_choice() or request_model()
        self.keep(make(choice.as_tuple()).to_state(), PRESSED)
        st.rerun()

    def keep(self, values: Mapping[str, Any], status: str) -> None:
        st.session_state[self.key] = {"request": dict(values), "status": status}

    # ---------------------------------------------------------------- what was asked

    def record(self) -> tuple[dict[str, Any], str] | None:
        """(the request's plain values, its status) kept under `key`, or None."""
        value = st.session_state.get(self.key)
        if not isinstance(value, dict) or not isinstance(value.get("request"), dict):
            return None
        return value["request"], str(value.get("status"))

    def request(self, parse: Callable[[Any], R | None]) -> R | None:
        """The request kept under `key` (parsed with `parse`, e.g. `ScoreRequest.from_state`)."""
        kept = self.record()
        return parse(kept[0]) if kept is not None else None

    def status(self) -> str | None:
        kept = self.record()
        return kept[1] if kept is not None else None

    def forget(self) -> None:
        st.session_state.pop(self.key, None)

    def model_for(self, request: Request) -> LoadedModel | None:
        """The loaded model when it is the one `request` names; otherwise None with a note."""
        choice = model_choice()
        loaded = current_model() if choice is not None else None
        if choice is None or loaded is None:
            st.warning(f"No model is loaded (see the sidebar): load one, then press "
                       f"**{self.label}** again.")
            return None
        if choice.as_tuple() != tuple(request.model):
            st.info(f"The model changed since the last {self.noun}: press **{self.label}** "
                    "again.")
            return None
        return loaded

    # ---------------------------------------------------------------- the run

    def result(self, request: Request, work: Callable[[Bar], T], text: str,
               unit: str = "") -> T | None:
        """`work(bar)` for the kept request: None with a note when its model is not the loaded
        one, or (resume=False) when its last run was interrupted; None with one sentence when
        it fails. The status in session state says how far it got."""
        if self.model_for(request) is None:
            return None
        status = self.status()
        if not self.resume and status == RUNNING:
            st.info(f"The last run did not finish (it was interrupted or failed): press "
                    f"**{self.label}** to run it again.")
            return None
        values = request.to_state()
        if status != FINISHED:
            self.keep(values, RUNNING)
        bar = Bar(text, unit)
        try:
            value = work(bar)
        except Exception as error:  # noqa: BLE001 - one sentence, the page keeps working
            st.error(error_sentence(bar.current, error))
            return None
        finally:
            bar.close()
        self.keep(values, FINISHED)
        return value

    def take(self, parse: Callable[[Any], R | None]) -> tuple[R, LoadedModel] | None:
        """A request pressed since the last rerun, handed over once (for work that starts a
        background job), with its model; None when there is none, or with a note when its model
        is not the loaded one."""
        kept = self.record()
        if kept is None or kept[1] != PRESSED:
            return None
        self.forget()
        request = parse(kept[0])
        if request is None:
            return None
        loaded = self.model_for(request)
        return (request, loaded) if loaded is not None else None


__all__ = ["FINISHED", "PRESSED", "RUNNING", "Bar", "Request", "Run", "attempt",
           "error_sentence", "with_model"]
