"""Live page: the model writes a reply while the probes watch. The text streams in, the step
scores (c_step bars, the c_prefix line) grow step by step, an alarm shows where it fires, and in
backtrack mode every discarded attempt stays on the page, struck through, with its scores.

Inputs -> request -> run -> show: a Start press is a `dashboard.common.runs.Run` whose request
starts a background job (`live_state.start_job` on the `dashboard.common.jobs` board); the page
follows it by updating placeholders in place (`live_view`, no full-page rerun per token) and
stops it through `monitor_events`' `should_stop` when Stop is pressed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from core.diagnose.monitor import MonitorConfig
from core.diagnose.probes import ProbeBundle, probe_paths
from dashboard.common import state
from dashboard.common.jobs import Job, session_job, stop_session_job
from dashboard.common.runs import Run, with_model
from dashboard.common.state import NO_MODEL
from dashboard.diagnose import live_state
from dashboard.diagnose import probe_state as dstate
from dashboard.diagnose.live_state import LiveRequest
from dashboard.diagnose.live_view import LiveView, show_result
from dashboard.diagnose.probe_picker import probe_card
from dashboard.diagnose.probe_state import ProbeFile

JOB_KEY = "live_job"  # session state: the key of this session's latest run on the board
START_KEY = "live_start_request"  # session state: what Start asked for
SAMPLE_KEY = "live_sample"
PROMPT_KEY = "live_prompt"
PROBE_KEY = "live_probe"
PROBE_PATH_KEY = "live_probe_path"
PROBE_UPLOAD_KEY = "live_probe_upload"
THRESHOLD_KEY = "live_threshold"
THRESHOLD_FOR_KEY = "live_threshold_for"  # the probe the threshold slider was last reset for
MODE_KEY = "live_mode"
TEMPERATURE_KEY = "live_temperature"
TOP_P_KEY = "live_top_p"
MAX_TOKENS_KEY = "live_max_tokens"
SEED_KEY = "live_seed"
RETRIES_KEY = "live_retries"
MAX_BACKTRACKS_KEY = "live_max_backtracks"
RETRY_STEP_KEY = "live_retry_temperature_step"
TRIGGER_KEY = "live_trigger"
MARGIN_KEY = "live_rise_margin"

TRAINED_OPTION = "trained on the Traces page"
PATH_OPTION = "a probe file on this machine ..."
UPLOAD_OPTION = "upload a probe (.safetensors + .json) ..."
OWN_PROMPT = "(your own prompt)"
MODE_HELP = {
    "watch": "watch: flag alarms, let the model write on",
    "stop": "stop: end generation at the first alarm (the kill switch)",
    "backtrack": "backtrack: drop an alarming step and let the model rewrite it",
}
TRIGGER_HELP = {
    "step": "a step scores high: its own score c_step is over the threshold",
    "prefix-rise": "the chain turns: c_prefix rises by more than a margin",
}
NO_PROBE = (
    "No probe yet. A probe is trained for one model; for the default model:\n\n"
    "```\ntelltale train --model default \\\n  --traces sample_traces/arith_small.jsonl \\\n"
    "  --out my-probe --layer 15\n```\n"
    "then choose **a probe file on this machine** and type `my-probe`, or upload "
    "`my-probe.safetensors` with `my-probe.json`.")
START = Run(START_KEY, "Start")


# ---------------------------------------------------------------------------- inputs


def use_sample() -> None:
    """Copy the chosen sample problem into the prompt box (on_change of the sample select)."""
    chosen = st.session_state.get(SAMPLE_KEY)
    prompts = dict(live_state.sample_prompts())
    if chosen in prompts:
        st.session_state[PROMPT_KEY] = prompts[chosen]


def choose_prompt() -> str:
    samples = live_state.sample_prompts()
    if PROMPT_KEY not in st.session_state:
        st.session_state[SAMPLE_KEY] = samples[0][0]
        st.session_state[PROMPT_KEY] = samples[0][1]
    st.selectbox("Sample problem", [OWN_PROMPT, *(label for label, _ in samples)],
                 key=SAMPLE_KEY, on_change=use_sample,
                 help="Held-out arithmetic word problems (seed 1000) in the format the shipped "
                      "traces use; picking one fills the prompt box.")
    return str(st.text_area("Prompt (the user's message)", key=PROMPT_KEY, height=260))


def probe_from_path(typed: str) -> ProbeFile | None:
    """The probe files at a typed path (NAME, NAME.safetensors or NAME.json)."""
    if not typed.strip():
        st.caption("Type the probe's name as `telltale train --out` wrote it (NAME, "
                   "NAME.safetensors or NAME.json).")
        return None
    weights, sidecar = probe_paths(Path(typed.strip()).expanduser())
    for file in (weights, sidecar):
        if not file.is_file():
            raise ValueError(f"Probe file {file} does not exist (a probe is a .safetensors "
                             "file with a .json sidecar of the same name).")
    return ProbeFile(weights.stem, weights.read_bytes(), sidecar.read_bytes())


def probe_from_upload() -> ProbeFile | None:
    files = st.file_uploader("Probe files", type=["safetensors", "json"],
                             accept_multiple_files=True, key=PROBE_UPLOAD_KEY,
                             help="Both files of one probe: NAME.safetensors and NAME.json.")
    weights = [f for f in files or [] if f.name.endswith(".safetensors")]
    sidecars = [f for f in files or [] if f.name.endswith(".json")]
    if not weights and not sidecars:
        return None
    if len(weights) != 1 or len(sidecars) != 1:
        st.warning(f"Upload both files of one probe: one .safetensors and one .json (got "
                   f"{len(weights)} and {len(sidecars)}).")
        return None
    return ProbeFile(Path(weights[0].name).stem, weights[0].getvalue(), sidecars[0].getvalue())


def trained_on_traces_page() -> ProbeFile | None:
    """The probe this session trained on the Traces page, while the process still holds it."""
    record = st.session_state.get(dstate.TRAINED_KEY)
    if not isinstance(record, dict):
        return None
    return dstate.trained_store().get(str(record.get("hash")))


def choose_probe() -> tuple[ProbeFile, ProbeBundle] | None:
    """The probe to run with (its files and parsed bundle), or None with a note saying how to
    get one. Probe files are parsed and cached by `dashboard.diagnose_state`, as on the Traces
    page."""
    shipped = {path.stem: path for path in dstate.shipped_probes()}
    trained = trained_on_traces_page()
    options = [*shipped, *([TRAINED_OPTION] if trained else []), PATH_OPTION, UPLOAD_OPTION]
    choice = st.selectbox(
        "Probe", options, key=PROBE_KEY,
        format_func=lambda o: f"{o}: {trained.name}" if o == TRAINED_OPTION and trained else o,
        help="Shipped probes are in sample_traces/probes/; `telltale train` or the Traces page "
             "makes new ones.")
    try:
        if choice == PATH_OPTION:
            probe = probe_from_path(st.text_input("Probe file", key=PROBE_PATH_KEY,
                                                  placeholder="/path/to/my-probe"))
        elif choice == UPLOAD_OPTION:
            probe = probe_from_upload()
        elif choice == TRAINED_OPTION:
            probe = trained
        else:
            probe = dstate.read_probe_file(shipped[choice])
        bundle = dstate.load_bundle(probe) if probe is not None else None
    except (OSError, ValueError) as error:
        st.error(str(error))
        return None
    if probe is None or bundle is None:
        if not shipped and not trained:
            st.info(NO_PROBE)
        return None
    probe_card(probe, bundle)
    return probe, bundle


def choose_alarm(probe: ProbeFile, bundle: ProbeBundle) -> tuple[str, float | None, float]:
    """The alarm rule: the trigger, the threshold on c_step (reset to the probe's calibrated
    step threshold whenever the probe changes) or the rise margin on c_prefix."""
    trigger = str(st.radio(
        "Alarm when", list(TRIGGER_HELP), key=TRIGGER_KEY, horizontal=True,
        format_func=lambda t: TRIGGER_HELP[t].split(":")[0],
        help="\n\n".join(TRIGGER_HELP.values())))
    if trigger == "prefix-rise":
        margin = float(st.slider(
            "Rise of c_prefix that alarms", 0.05, 0.95, 0.2, 0.05, key=MARGIN_KEY,
            help="An alarm fires at a step whose c_prefix is this much above the step before's "
                 "(the first step: above the probe's calibrated c_prefix threshold)."))
        return trigger, None, margin
    if st.session_state.get(THRESHOLD_FOR_KEY) != probe.hash \
            or THRESHOLD_KEY not in st.session_state:  # dropped while no slider was drawn
        st.session_state[THRESHOLD_FOR_KEY] = probe.hash
        st.session_state[THRESHOLD_KEY] = round(float(bundle.meta.step_threshold), 3)
    threshold = float(st.slider(
        "Alarm threshold on c_step", 0.0, 1.0, step=0.001, format="%.3f", key=THRESHOLD_KEY,
        help="An alarm fires at a step whose own score c_step is above this. It starts at the "
             "probe's calibrated step threshold."))
    return trigger, threshold, 0.2


def choose_sampling(mode: str) -> dict[str, float | int]:
    with st.expander("Sampling"):
        left, right = st.columns(2)
        values: dict[str, float | int] = {
            "temperature": left.slider("Temperature", 0.0, 1.5, 0.7, 0.05, key=TEMPERATURE_KEY,
                                       help="0 = greedy."),
            "top_p": right.slider("Top-p", 0.05, 1.0, 0.95, 0.05, key=TOP_P_KEY),
            "max_new_tokens": int(left.number_input("Max new tokens", 1, 2048, 200, 8,
                                                    key=MAX_TOKENS_KEY)),
            "seed": int(right.number_input("Seed", 0, 2**31 - 1, 0, 1, key=SEED_KEY)),
        }
        backtrack = mode == "backtrack"
        values["retries"] = int(left.number_input(
            "Retries per step", 0, 10, 3, 1, key=RETRIES_KEY, disabled=not backtrack,
            help="Backtrack mode: how often one alarming step may be rewritten."))
        values["max_backtracks"] = int(right.number_input(
            "Retries per reply", 0, 50, 8, 1, key=MAX_BACKTRACKS_KEY, disabled=not backtrack))
        values["retry_temperature_step"] = float(left.slider(
            "Temperature added per retry", 0.0, 0.5, 0.0, 0.05, key=RETRY_STEP_KEY,
            disabled=not backtrack))
    return values


# ---------------------------------------------------------------------------- run control


def current_job() -> Job[Any] | None:
    return session_job(JOB_KEY)


def stop_current_job() -> None:
    """on_click of Stop."""
    stop_session_job(JOB_KEY)


def monitor_config(mode: str, alarm: tuple[str, float | None, float],
                   sampling: dict[str, float | int]) -> MonitorConfig | None:
    """The monitor's settings, or None with the sentence that says which one is wrong."""
    trigger, threshold, margin = alarm
    try:
        return MonitorConfig(
            mode=mode, trigger=trigger, threshold=threshold, rise_margin=margin,
            temperature=float(sampling["temperature"]),
            top_p=float(sampling["top_p"]), max_new_tokens=int(sampling["max_new_tokens"]),
            seed=int(sampling["seed"]), retries=int(sampling["retries"]),
            max_backtracks=int(sampling["max_backtracks"]),
            retry_temperature_step=float(sampling["retry_temperature_step"]))
    except ValueError as error:
        st.error(str(error))
        return None


def start_pressed(probe: tuple[ProbeFile, ProbeBundle] | None) -> None:
    """Start the run a Start press asked for, once its model is loaded; problems are one
    sentence."""
    taken = START.take(LiveRequest.from_state)
    if taken is None or probe is None:
        return
    request, loaded = taken
    if request.probe_hash != probe[0].hash:
        st.error("The probe changed since **Start** was pressed: press **Start** again.")
        return
    try:
        job = live_state.start_job(loaded, probe[1], request)
    except ValueError as error:  # a probe for another model, an empty prompt
        st.error(str(error))
        return
    st.session_state[JOB_KEY] = job.key


def render() -> None:
    """The page (run by `st.navigation` in dashboard/app.py)."""
    st.title("Live")
    st.caption("The model writes while the probes watch each step: watch the scores, stop at "
               "the alarm, or let the model take back an alarming step and rewrite it.")
    prompt_col, settings_col = st.columns([3, 2])
    with prompt_col:
        prompt = choose_prompt()
    with settings_col:
        probe = choose_probe()
        alarm: tuple[str, float | None, float] = ("step", None, 0.2)
        if probe is not None:
            alarm = choose_alarm(*probe)
        mode = str(st.radio("Mode", list(MODE_HELP), key=MODE_KEY, horizontal=True,
                            format_func=str.capitalize,
                            help="\n\n".join(MODE_HELP.values())))
        st.caption(MODE_HELP[mode])
    config = monitor_config(mode, alarm, choose_sampling(mode))
    start_pressed(probe)
    job = current_job()
    running = job is not None and job.running
    asked = None  # what Start would ask for (the model is the one the press loads)
    if probe is not None and config is not None and prompt.strip() and not running:
        asked = LiveRequest(NO_MODEL, prompt, probe[0].hash, probe[0].name, config)
    start_col, stop_col, note_col = st.columns([1, 1, 4])
    START.button(None if asked is None else with_model(asked), where=start_col, width="stretch")
    stop_col.button("Stop", width="stretch", disabled=not running, on_click=stop_current_job)
    loaded = state.current_model()  # drawn on every run, so no stale note stays behind
    note_col.caption("No model loaded yet: **Start** loads the one typed in the sidebar."
                     if loaded is None else f"Model: **{loaded.name}** ({loaded.device}).")
    if job is None:
        return
    view = LiveView()
    if job.running:
        view.follow(job)
        st.rerun()  # once, at the end: the buttons and the summary reflect the finished run
    show_result(job, view)
