"""Traces page: load a trace file (any supported format) or have the model make chains for a
problem set (`generate_panel`, a background run), browse the chains and their step labels,
diagnose them with a probe (step scores, prefix trajectory, flagged steps, corpus metrics
against the baselines), and plot the model's per-step baseline signals.

Inputs -> request -> run -> show: reading files, scoring and metrics are `core` calls made
through `trace_state` and `probe_state` (cached) and run with `dashboard.common.runs`; the probe
section and its views are `probe_picker`, `probe_panels` and `corpus_panel`; tables and figures
come from `trace_charts` and `probe_charts`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core.data.answers import AccuracyWithChance
from core.data.importers import FORMATS
from core.data.steps import SEGMENT_MODES
from core.data.traces import Trace
from core.diagnose.metrics import auroc
from dashboard.common import state
from dashboard.common.runs import Run
from dashboard.common.state import ModelKey
from dashboard.common.widgets import FileChoice, choose_file, report_issues, table_download
from dashboard.diagnose import corpus_panel, probe_charts, probe_panels, probe_picker
from dashboard.diagnose import trace_charts as charts
from dashboard.diagnose import trace_state as tstate
from dashboard.diagnose.generate_panel import choose_chains
from dashboard.diagnose.trace_state import SignalsRequest

SAMPLE_KEY = "traces_sample"
UPLOAD_KEY = "traces_upload"
FORMAT_KEY = "traces_format"
MODE_KEY = "traces_segment_mode"
PATTERN_KEY = "traces_segment_pattern"
CHAIN_KEY = "traces_chain"
ALL_CHAINS_KEY = "traces_score_all"
SIGNAL_KEY = "traces_signal"
PLOT_CHAIN_KEY = "traces_plot_chain"
FILE_CHOICE = FileChoice(
    "Sample trace file", SAMPLE_KEY, "Upload a trace file (JSONL or JSON)", UPLOAD_KEY,
    sample_help="Files in sample_traces/, made by `make sample-traces`.",
    upload_help="Telltale's own format (one chain per line: {\"id\", \"prompt\", \"steps\": "
                "[{\"text\", \"label\"}] or \"response\", \"is_correct\", ...}; labels 0, 1 "
                "or null), or CHAINED, PRM800K, ProcessBench or GSM8K-style files.",
    missing="No sample file in sample_traces/ (run `make sample-traces`); upload a file.")
SIGNALS = Run(tstate.SIGNALS_REQUEST_KEY, "Compute signals", noun="scoring")
MODE_HELP = {
    "lines": "one step per non-blank line",
    "sentences": "one step per sentence (and per line)",
    "numbered": "a step starts at '1.', '2)', 'Step 3:' ...",
    "regex": "a step starts where your pattern matches",
}


def choose_reading() -> tuple[str, str, str | None]:
    """The file's format ("auto" tells from its first record) and how responses given as one
    string are cut into steps (files with step lists ignore it)."""
    with st.expander("Reading options: format, and step splitting for chains given as one "
                     "`response` string"):
        fmt = st.selectbox("Format", FORMATS, key=FORMAT_KEY,
                           help="auto: tell from the first record. native: Telltale's JSONL; "
                                "chained, prm800k, processbench, gsm8k: those data sets' files.")
        mode = st.selectbox("Split responses into steps by", SEGMENT_MODES, key=MODE_KEY,
                            format_func=lambda m: f"{m}: {MODE_HELP.get(m, '')}")
        pattern = None
        if mode == "regex":
            pattern = st.text_input("Step-start pattern (Python regex, ^ = line start)",
                                    value=r"^(?:First|Then|Next|Finally)\b", key=PATTERN_KEY)
    return str(fmt), str(mode), pattern


def answers_of(file_hash: str, reading: tuple[str, str, str | None],
               traces: list[Trace]) -> AccuracyWithChance | str:
    """The file's accuracy with its chance rate, or why there is none."""
    try:
        return tstate.file_answers(file_hash, reading, traces)
    except ValueError as error:  # a problem whose chains carry two golds
        return f"No accuracy: {error}"


def show_summary(table: pd.DataFrame, answers: AccuracyWithChance | str | None) -> None:
    """Counts of chains and steps, and the answers: the answered share and the accuracy with
    its shuffled-gold chance rate beside it (`answers`; a str says why it is missing)."""
    counts = charts.summary_counts(table)
    cols = st.columns(4)
    cols[0].metric("chains", counts["chains"])
    cols[1].metric("steps", counts["steps"])
    cols[2].metric("labelled steps", counts["labelled_steps"])
    rate = counts["hallucinated_rate"]
    cols[3].metric("hallucinated-step rate", "n/a" if rate is None else f"{rate:.1%}",
                   help="steps labelled 1 / steps with a label")
    cols = st.columns(4)
    if isinstance(answers, AccuracyWithChance) and answers.n:
        cols[0].metric("answer stated", f"{answers.answered_share:.1%}",
                       help="share of chains whose reply states an answer (Answer: N, #### N, "
                            "\\boxed{N}, The answer is N); one without counts as wrong")
        cols[1].metric("final answer right", f"{answers.accuracy:.1%}",
                       help="right answers / chains with a gold answer")
        cols[2].metric("chance", charts.chance_text(answers),
                       help="the same answers scored against golds shuffled across problems "
                            f"(mean ± spread over {answers.n_shuffles} shuffles)")
        st.caption(charts.answers_sentence(answers))
        return
    correct = counts["correct_rate"]
    cols[0].metric("final answer correct", "n/a" if correct is None else f"{correct:.1%}",
                   help="among chains whose is_correct is known")
    st.caption(answers if isinstance(answers, str) else
               "No gold answers in this file, so there is no chance rate to read the accuracy "
               "against (chance: the same answers scored against golds shuffled across "
               "problems).")


def show_chain_table(table: pd.DataFrame, stem: str) -> None:
    st.subheader("Chains")
    st.dataframe(table, hide_index=True, height=min(38 + 35 * len(table), 320), column_config={
        "id": st.column_config.TextColumn("id"),
        "problem_id": st.column_config.TextColumn("problem"),
        "labelled_steps": st.column_config.NumberColumn("labelled steps"),
        "hallucinated_steps": st.column_config.NumberColumn("hallucinated steps"),
        "hallucinated_rate": st.column_config.NumberColumn("hallucinated-step rate",
                                                           format="percent"),
        "answered": st.column_config.CheckboxColumn("answer stated"),
        "is_correct": st.column_config.CheckboxColumn("answer right"),
    })
    table_download("Download the chain table (CSV)", table, f"{stem}-chains.csv")


def highlight_steps(row: pd.Series) -> list[str]:
    """Hallucinated steps red, steps back on track green."""
    colour = ("background-color: rgba(228, 87, 86, 0.18)" if row["label"] == charts.HALLUCINATED
              else "background-color: rgba(46, 139, 87, 0.16)" if row["back on track"] else "")
    return [colour] * len(row)


def show_chain(trace: Trace) -> None:
    """The prompt, the answer (stated or not, gold, right or wrong) and the labelled steps of
    one chain, with the steps back on track marked."""
    left, right = st.columns([2, 3])
    with left:
        st.markdown("**Prompt**")
        with st.container(border=True):
            st.text(trace.prompt or "(empty prompt)")
        st.caption(f"{charts.outcome_text(trace)} · source: {trace.source or '-'}")
    with right:
        steps = charts.steps_table(trace).rename(columns={"prefix_label": "prefix",
                                                          "back_on_track": "back on track"})
        back = int(steps["back on track"].sum())
        st.markdown(f"**Steps** ({trace.n_steps}; hallucinated steps red"
                    + (f", {back} step(s) back on track green" if back else "") + ")")
        # a static table, so long steps wrap instead of being cut off
        styled = steps.style.apply(highlight_steps, axis=1).format(na_rep="-").format(
            lambda b: "yes" if b else "", subset=["back on track"])
        st.table(styled, hide_index=True, border="horizontal")
        if back:
            st.caption("Back on track: the prefix label is 0 again after a broken stretch (the "
                       "chain recovered from its broken steps).")


def ask_for_signals(file_hash: str, segmenter: tuple[str, str | None], ids: list[str],
                    selected: str) -> None:
    """The chains to score and the "Compute signals" button."""
    left, right = st.columns([3, 1])
    score_all = right.checkbox(f"all {len(ids)} chains", key=ALL_CHAINS_KEY)
    chosen = left.multiselect("Chains to score", ids, default=[selected], disabled=score_all)
    wanted = tuple(ids if score_all else chosen)

    def make(model: ModelKey) -> SignalsRequest:
        return SignalsRequest(model, file_hash, segmenter, wanted)

    SIGNALS.button(make if wanted else None)


def current_signals(file_hash: str, segmenter: tuple[str, str | None],
                    traces: list[Trace]) -> pd.DataFrame | None:
    """The requested signals for this file and model (computed with a progress bar, or from the
    cache), or None with a note saying what to do."""
    request = SIGNALS.request(SignalsRequest.from_state)
    if request is None or request.file_hash != file_hash or request.segmenter != segmenter:
        st.info("Pick chains and press **Compute signals** to score each step with the model.")
        return None
    table = SIGNALS.result(request, lambda bar: tstate.compute_signals(request, traces, bar),
                           "Scoring chains", "chain(s)")
    if table is None:
        return None
    known = {trace.id for trace in traces}
    unscored = [t for t in request.trace_ids if t in known and t not in set(table["trace_id"])]
    if table.empty:
        st.warning("No requested chain could be scored (too long for the model, or a step "
                   "without tokens of its own).")
        return None
    if unscored:
        st.caption(f"{len(unscored)} chain(s) could not be scored (too long for the model, or a "
                   f"step without tokens of its own): {', '.join(unscored[:10])}.")
    return table


def show_signals(table: pd.DataFrame, selected: str, stem: str) -> None:
    """The step chart of one chain, the signal by label over all scored steps, downloads."""
    loaded = state.current_model()
    if loaded is not None:
        st.caption(f"Signals from **{loaded.name}** ({loaded.device}, {loaded.dtype}), reading "
                   "each chain teacher-forced; NLL and entropy in nats.")
    left, right = st.columns(2)
    signal = left.selectbox("Signal", list(charts.SIGNAL_TITLES), key=SIGNAL_KEY,
                            format_func=lambda s: charts.SIGNAL_TITLES[s])
    scored = list(dict.fromkeys(table["trace_id"]))
    chain = right.selectbox("Chain to plot", scored, key=PLOT_CHAIN_KEY,
                            index=scored.index(selected) if selected in scored else 0)
    st.plotly_chart(charts.step_signal_figure(table, signal, chain), key="step_signal_chart")
    labels, scores = charts.labelled_scores(table, signal)
    area = auroc(labels, scores) if labels else None
    if area is not None:
        chart_col, note_col = st.columns([3, 1])
        chart_col.plotly_chart(charts.signal_by_label_figure(table, signal),
                               key="signal_by_label_chart")
        note_col.metric("AUROC", f"{area:.3f}",
                        help="How well this signal alone ranks hallucinated steps above "
                             "correct ones (1 = perfectly, 0.5 = chance).")
        note_col.caption(f"hallucinated vs correct steps, over the {len(labels)} labelled "
                         "steps scored so far; 0.5 = chance.")
    table_download("Download the signal table (CSV)", table, f"{stem}-signals.csv")


def render() -> None:
    """The page (run by `st.navigation` in dashboard/app.py)."""
    st.title("Traces")
    st.caption("Chains of thought with step labels: browse them, then see how sure the model "
               "was at every step.")
    chosen = choose_chains(lambda: choose_file(tstate.sample_files(), FILE_CHOICE))
    if chosen is None:
        return
    name, data = chosen
    fmt, mode, pattern = choose_reading()
    try:
        load = tstate.read_trace_file(data, name, mode, pattern, fmt)
    except ValueError as error:  # a shape no format fits, or a bad step-splitting pattern
        st.error(str(error))
        return
    report_issues(name, load.issues, load.n_skipped, len(load.traces), "chain",
                  "'' = the line is not a trace")
    if not load.traces:
        st.info(f"{name} holds no valid chain ({load.n_lines} line(s) read). Each line must be a "
                "JSON object with a 'prompt' and 'steps' or 'response'.")
        return
    stem = Path(name).stem
    table = charts.chain_table(load.traces)
    file_hash = state.content_hash(data)
    show_summary(table, answers_of(file_hash, (fmt, mode, pattern), load.traces))
    show_chain_table(table, stem)
    ids = [trace.id for trace in load.traces]
    by_id = {trace.id: trace for trace in load.traces}

    st.subheader("Probe")
    st.caption("Score every step with a step probe and prefix tracker read from the model's "
               "hidden states: where does the chain go wrong?")
    scored = probe_picker.probe_section(file_hash, (fmt, mode, pattern), load.traces, stem)
    if scored is not None:
        flagged = probe_charts.flagged_steps(scored.steps, scored.step_threshold,
                                             scored.threshold)
        probe_panels.resolve_focus(scored, flagged, CHAIN_KEY, ids)
        probe_panels.headline(scored, flagged)
        probe_panels.show_flagged(scored, flagged)

    st.subheader("Chain")
    selected = st.selectbox("Chain to inspect", ids, key=CHAIN_KEY, format_func=lambda i: (
        f"{i} ({by_id[i].n_steps} steps, "
        f"{sum(label == 1 for label in by_id[i].step_labels)} hallucinated)"))
    if selected not in by_id:  # the file changed under a kept selection
        selected = ids[0]
    if scored is not None:
        probe_panels.show_chain_scores(scored, selected, stem)
    show_chain(by_id[selected])
    if scored is not None:
        corpus_panel.show_corpus(scored, stem)

    st.subheader("Per-step signals")
    segmenter = (mode, pattern)
    signal_hash = state.content_hash(data + fmt.encode())
    ask_for_signals(signal_hash, segmenter, ids, selected)
    signals = current_signals(signal_hash, segmenter, load.traces)
    if signals is not None:
        show_signals(signals, selected, stem)
