"""The Traces page's source of chains: a trace file, or chains the model writes here for a
problem set (Start and Stop, with progress), which then feed the rest of the page (browsing,
the probe section's training, scoring, signals) as they are labelled.

A Start press is a `dashboard.common.runs.Run` whose request starts a background job
(`generate_state.start_job` on the `dashboard.common.jobs` board), so the run goes on while
the user is on another page and ends on Stop. While it runs, a fragment redraws the progress
every second and reruns the whole page when new chains have come (at most every few seconds)
and once at the end, so the Traces view below follows the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from core.data.traces import Trace, traces_to_jsonl
from dashboard.common.jobs import Job, board, session_job, stop_session_job
from dashboard.common.runs import Run, with_model
from dashboard.common.widgets import download
from dashboard.diagnose import generate_inputs
from dashboard.diagnose import generate_state as gstate
from dashboard.diagnose.generate_inputs import Plan
from dashboard.diagnose.generate_request import GenerateRequest

CHAIN_SOURCE_KEY = "traces_chain_source"
JOB_KEY = "generate_job"  # session state: the key of this session's latest run on the board
VIEW_KEY = "generate_view"  # session state: [job key, chains drawn, when, drawn while running]
START = Run("generate_start_request", "Start", noun="run")
POLL_S = 1.0
REFRESH_S = 4.0  # the whole page reruns for new chains at most this often
NEWEST = 6  # chains listed in the progress box
CHAIN_SOURCES = {"file": "a trace file",
                 "generate": "make them here: the model answers a problem set"}


def current_job() -> Job[Any] | None:
    return session_job(JOB_KEY)


def stop_current_job() -> None:
    """on_click of Stop."""
    stop_session_job(JOB_KEY)


def start_pressed(plan: Plan | None) -> None:
    """Start the run a press asked for, once its model is loaded; problems are one sentence."""
    taken = START.take(GenerateRequest.from_state)
    if taken is None:
        return
    request, loaded = taken
    if plan is None or request.without_model() != plan.request:
        st.error("The settings changed since **Start** was pressed: press **Start** again.")
        return
    try:
        job = gstate.start_job(loaded, request, plan.problems, plan.judge_prompt)
    except ValueError as error:  # a judge model the server may not load
        st.error(str(error))
        return
    st.session_state[JOB_KEY] = job.key


def chains_jsonl(job: Job[Any]) -> bytes:
    """The chains of a run: its file once written, else the ones labelled so far."""
    run, result = gstate.run_of(job), job.result
    if isinstance(result, gstate.GenerateResult) and not result.stopped \
            and run.chains_file.is_file():
        return run.chains_file.read_bytes()
    return traces_to_jsonl(gstate.progress_of(job).chains).encode()


def newest_table(chains: tuple[Trace, ...]) -> pd.DataFrame:
    rows = [{"id": t.id, "steps": t.n_steps,
             "step labels": " ".join("-" if x is None else str(x) for x in t.step_labels),
             "answer": t.answer or "-", "gold": t.gold or "-", "correct": t.is_correct}
            for t in reversed(chains[-NEWEST:])]
    return pd.DataFrame(rows)


def draw_progress(job: Job[Any]) -> None:
    """The stage's bar, what the run is, and the newest chains."""
    now, run = gstate.progress_of(job), gstate.run_of(job)
    request = run.request
    fraction = min(now.done / now.total, 1.0) if now.total else 0.0
    text = f"{now.stage}: {now.done} of {now.total} {now.unit}" if now.total else \
        f"{now.stage} ..."
    st.progress(fraction, text=text + (" (stopping after this batch)"
                                       if job.stop_requested and job.running else ""))
    answered = sum(bool(t.answered) for t in now.chains)
    correct = sum(t.is_correct is True for t in now.chains)
    source = "Telltale's arithmetic" if request.source == "arith" else request.problems
    st.caption(f"{request.n} chain(s) for each of {request.n_problems} problem(s) of "
               f"**{source}**, {request.step_labels} step labels, on "
               f"**{request.model[0]}**: {len(now.chains)} chain(s) labelled so far, "
               f"{answered} answered, {correct} correct. Folder: `{run.folder}`")
    if now.chains:
        st.dataframe(newest_table(now.chains), hide_index=True,
                     column_config={"correct": st.column_config.CheckboxColumn("correct")})


@st.fragment(run_every=POLL_S)
def follow(job_key: str) -> None:
    """Redraw the progress of a running job; rerun the page for new chains and at the end."""
    job = board().get(job_key)
    if job is None:
        return
    view = st.session_state.get(VIEW_KEY)
    if isinstance(view, list) and view[0] == job.key and view[3]:
        fresh = len(gstate.progress_of(job).chains) > view[1] and \
            time.time() - view[2] >= REFRESH_S
        if job.finished or fresh:
            st.rerun(scope="app")
    draw_progress(job)


def show_outcome(job: Job[Any]) -> None:
    """How a finished run ended, and where its files are."""
    run, result = gstate.run_of(job), job.result
    n_chains = len(gstate.progress_of(job).chains)
    if job.error:
        st.error(job.error + " The journals keep what was done: **Start** with the same "
                 "settings goes on from there.")
    elif isinstance(result, gstate.GenerateResult) and result.stopped:
        st.warning(f"Stopped by you after {n_chains} labelled chain(s). The replies and "
                   f"verdicts so far are journalled in `{run.folder}`: **Start** with the same "
                   "settings goes on from there.", icon=":material/stop_circle:")
    elif isinstance(result, gstate.GenerateResult) and result.summary is not None:
        st.success(str(result.summary), icon=":material/check_circle:")
        with st.expander("The same file from the command line"):
            st.code(run.command, language="bash", wrap_lines=True)


def generate_section() -> tuple[str, bytes] | None:
    """The inputs, Start and Stop, the run's progress or outcome; the run's chains (name,
    JSONL bytes) for the rest of the page, or None while there are none."""
    with st.container(border=True):
        plan = generate_inputs.plan()
        start_pressed(plan)
        job = current_job()
        running = job is not None and job.running
        start_col, stop_col, note_col = st.columns([1, 1, 5])
        START.button(None if plan is None or running else with_model(plan.request),
                     where=start_col, width="stretch")
        stop_col.button("Stop", width="stretch", disabled=not running, on_click=stop_current_job)
        note_col.caption("The run goes on in the background while you use other pages, and "
                         "**Stop** ends it after the batch (or judge request) in progress. "
                         "Replies and verdicts are journalled: **Start** with the same settings "
                         "resumes a stopped run, and gives a finished one back at once.")
        if job is None:
            return None
        data = chains_jsonl(job)  # read after `running`: a run that ends now reruns the page
        n_chains = data.count(b"\n")
        st.session_state[VIEW_KEY] = [job.key, n_chains, time.time(), running]
        if running:
            follow(job.key)
        else:
            show_outcome(job)
        name = f"chains-{gstate.run_of(job).request.run_id}.jsonl"
        if data:
            download("Download the chains (JSONL)", lambda: chains_jsonl(job), name,
                     "application/jsonl", key="generate_download")
    if not data:
        return None
    if running:
        st.caption(f"Below: the {n_chains} chain(s) labelled so far (the view follows the "
                   "run); train a probe once it has finished.")
    return name, data


def choose_chains(choose_file: Callable[[], tuple[str, bytes] | None]
                  ) -> tuple[str, bytes] | None:
    """The chains the page shows: from `choose_file` (a trace file), or made here."""
    index = 1 if current_job() is not None else 0  # back from another page: the run
    source = st.radio("Chains", list(CHAIN_SOURCES), index=index, key=CHAIN_SOURCE_KEY,
                      horizontal=True, format_func=CHAIN_SOURCES.__getitem__)
    return choose_file() if source == "file" else generate_section()


__all__ = ["CHAIN_SOURCE_KEY", "JOB_KEY", "START", "choose_chains", "current_job"]
