"""The Introspection page's sweep: the trial over layers x strengths x concepts (raw strengths,
or relative ones that count the layer's mean residual norm), as heatmaps of net score,
identification and coherence beside the controls and the confounds, with the tables (each
setting's strength also as effective magnitude and ratio to the residual norm)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.runtime.models import LoadedModel
from core.sense.concepts import ALL_TARGET_WORDS
from core.sense.introspection import POSITION_MODES, SCALES, control_table, sweep_summary
from dashboard.common.runs import Bar, Run, with_model
from dashboard.common.state import ModelKey
from dashboard.common.widgets import figure_download, table_download
from dashboard.sense import charts as charts_sense
from dashboard.sense import control_charts, replies
from dashboard.sense import state as istate
from dashboard.sense.inputs import (
    POSITION_HELP,
    SCALE_HELP,
    choose_partner,
    choose_sampling,
    depth_layers,
    stale_note,
)

SWEEP_CONCEPTS_KEY = "intro_sweep_concepts"
SWEEP_LAYERS_KEY = "intro_sweep_layers"
SWEEP_STRENGTHS_KEY = "intro_sweep_strengths"
SWEEP_POSITIONS_KEY = "intro_sweep_positions"
SWEEP_SCALE_KEY = "intro_sweep_scale"
SWEEP_SHOWN_KEY = "intro_sweep_shown"
SWEEP_FOLLOWS_KEY = "intro_sweep_follows"  # the concept above that the sweep's list follows
SWEEP_PARTNER_KEY = "intro_sweep_partner"
# strengths offered per scale, with the defaults (relative: multiples of the residual norm)
SWEEP_STRENGTHS = {"raw": ((0.5, 1.0, 2.0, 4.0, 8.0, 16.0), (1.0, 2.0, 4.0, 8.0)),
                   "relative": ((0.1, 0.25, 0.5, 1.0, 2.0, 4.0), (0.25, 0.5, 1.0))}
UNIT_COLUMNS = ["layer", "strength", "concept", "effective_magnitude", "relative_magnitude"]
ALL_MEAN = "all concepts (mean)"
DEFAULT_WORD = "bread"
SWEEP = Run(istate.SWEEP_KEY, "Run sweep", resume=False)


def follow_concept(concept: istate.ConceptChoice | None, names: list[str]) -> None:
    """Keep the concept chosen above among the sweep's concepts: when it changes, it replaces
    the one it was (the user's other picks stay); names no longer offered are dropped."""
    was = st.session_state.get(SWEEP_FOLLOWS_KEY)
    now = concept.name if concept is not None else None
    chosen = list(st.session_state.get(SWEEP_CONCEPTS_KEY, [DEFAULT_WORD]))
    if now is not None and now != was:
        chosen = [n for n in chosen if n != was]
        if now not in chosen:
            chosen.insert(0, now)
        st.session_state[SWEEP_FOLLOWS_KEY] = now
    st.session_state[SWEEP_CONCEPTS_KEY] = [n for n in chosen if n in names]


def strengths_key(scale: str) -> str:
    """Each scale keeps its own strengths (a raw 4 is not a relative 4)."""
    return SWEEP_STRENGTHS_KEY if scale == "raw" else f"{SWEEP_STRENGTHS_KEY}_{scale}"


def sweep_inputs(loaded: LoadedModel, model: ModelKey,
                 concept: istate.ConceptChoice | None) -> istate.SweepRequest | None:
    names = list(ALL_TARGET_WORDS)
    if concept is not None and concept.name not in names:
        names.insert(0, concept.name)
    follow_concept(concept, names)
    chosen = st.multiselect("Concepts", names, key=SWEEP_CONCEPTS_KEY,
                            help="The concept chosen above (it follows that choice), and any of "
                                 "the target words.")
    left, right = st.columns(2)
    layers = left.multiselect(
        "Layers", list(range(loaded.n_layers)),
        default=depth_layers(loaded.n_layers, (1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6)),
        key=SWEEP_LAYERS_KEY)
    scale = str(st.session_state.get(SWEEP_SCALE_KEY, SCALES[0]))  # drawn below; its value now
    offered, default = SWEEP_STRENGTHS[scale]
    strengths = right.multiselect(
        f"Strengths ({scale})", list(offered), default=list(default),
        key=strengths_key(scale), format_func=lambda s: f"{s:g}",
        help=("raw: strength × v; its effective magnitude strength × ‖v‖ and its ratio to the "
              "layer's mean residual norm are in the summary table after the run." if scale ==
              "raw" else "relative: strength × the layer's mean residual norm along v, so 1 "
              "adds a vector as long as the residual stream's average."))
    left, right = st.columns(2)
    positions = str(left.radio("Positions", list(POSITION_MODES), key=SWEEP_POSITIONS_KEY,
                               horizontal=True, help="\n\n".join(POSITION_HELP.values())))
    scale = str(right.radio("Scale", list(SCALES), key=SWEEP_SCALE_KEY, horizontal=True,
                            help="\n\n".join(SCALE_HELP.values())))
    config = choose_sampling("intro_sweep", n_trials=4, max_new_tokens=100)
    if config is None or not chosen or not layers or not strengths:
        st.caption("Choose at least one concept, one layer and one strength.")
        return None
    concepts = tuple(concept if concept is not None and name == concept.name
                     else istate.ConceptChoice.word(name) for name in chosen)
    partner = None
    if "mismatch" in config.controls and len(concepts) == 1:
        partner = choose_partner(SWEEP_PARTNER_KEY, [c.name for c in concepts])
    try:
        return istate.SweepRequest(model, concepts, tuple(sorted(layers)),
                                   tuple(sorted(strengths)), scale, positions, config, partner)
    except ValueError as error:
        st.warning(str(error))
        return None


def sweep_size(request: istate.SweepRequest) -> int:
    """How many replies the sweep samples (as `run_sweep` counts them)."""
    shared, per_setting = istate.reply_counts(request.trials)
    return shared + len(request.sweep_config().settings()) * per_setting


def show_sweep(trials: pd.DataFrame, request: istate.SweepRequest) -> None:
    summary = sweep_summary(trials)
    arms = control_table(trials)
    names = [c.name for c in request.concepts]
    stem = f"telltale-sweep-{'-'.join(names)[:60]}"
    st.caption(f"{len(trials)} replies: {request.trials.n_trials} per condition, layers "
               f"{', '.join(map(str, request.layers))}, strengths "
               f"{', '.join(f'{s:g}' for s in request.strengths)} ({request.scale}), positions "
               f"**{request.positions}**, up to {request.trials.max_new_tokens} new tokens.")
    concept = None
    if len(names) > 1:
        shown = st.selectbox("Concept shown", [ALL_MEAN, *names], key=SWEEP_SHOWN_KEY)
        concept = None if shown == ALL_MEAN else str(shown)
    main = charts_sense.sweep_heatmaps(summary, concept)
    controls = charts_sense.control_heatmaps(summary, concept)
    confounds = control_charts.confound_heatmaps(summary, concept)
    left, right = st.columns(2)
    left.plotly_chart(main, key="intro_sweep_chart")
    with right:
        st.plotly_chart(controls, key="intro_sweep_controls_chart")
        st.caption(f"The controls: {replies.false_positive_text(summary)}, one arm for the "
                   "whole sweep. A random vector or the negated vector that is 'detected' as "
                   "often as the concept means the model reacts to any push, not to the "
                   "concept.")
    st.plotly_chart(confounds, key="intro_sweep_confounds_chart")
    st.caption("The confounds: detection with the concept added on the generated tokens only "
               "(not over the question); asked about the concept with it injected and with "
               "another concept injected (a model that notices says yes more to the first); "
               "and 'yes' to unrelated yes/no questions with the concept injected, against "
               "the same questions without injection.")
    with st.expander(f"Summary table ({len(summary)} settings; strength as effective "
                     "magnitude and × the mean residual norm)"):
        st.dataframe(summary[UNIT_COLUMNS + [c for c in summary.columns
                                             if c not in UNIT_COLUMNS]], hide_index=True,
                     column_config={"effective_magnitude": "effective magnitude",
                                    "relative_magnitude": "× mean residual norm"})
    with st.expander(f"Every arm beside its chance ({len(arms)} rows, as "
                     "`telltale sweep --json`)"):
        st.dataframe(arms, hide_index=True)
    with st.expander(f"All {len(trials)} replies"):
        st.dataframe(trials, hide_index=True)
    cols = st.columns(6)
    downloads = (("Summary (CSV)", summary, "summary"), ("Trials (CSV)", trials, "trials"),
                 ("Controls table (CSV)", arms, "controls-table"))
    for col, (label, table, name) in zip(cols, downloads, strict=False):
        with col:
            table_download(label, table, f"{stem}-{name}.csv", f"intro_dl_sweep_{name}")
    figures = (("Heatmaps (HTML)", main, "heatmaps"), ("Controls (HTML)", controls, "controls"),
               ("Confounds (HTML)", confounds, "confounds"))
    for col, (label, figure, name) in zip(cols[3:], figures, strict=True):
        with col:
            figure_download(label, figure, f"{stem}-{name}.html", f"intro_dl_sweep_{name}_fig")


def sweep_work(request: istate.SweepRequest, bar: Bar) -> pd.DataFrame:
    """Every concept's vectors, then the sweep's trials (cached; each stage its own bar)."""
    istate.sweep_library(request, progress=bar)
    return istate.sweep_trials(request, _progress=bar.stage("Sweeping", "replies"))


def tab(loaded: LoadedModel, model: ModelKey, concept: istate.ConceptChoice | None) -> None:
    """Inputs, the "Run sweep" button and the last sweep's results."""
    st.caption("The same trial over layers x strengths x concepts. The arms without injection "
               "(no injection; the unrelated questions without it) run once for the whole sweep, "
               "with at least 100 trials; the other controls run at every setting.")
    current = sweep_inputs(loaded, model, concept)
    button_col, note_col = st.columns([1, 4])
    SWEEP.button(None if current is None else with_model(current), where=button_col,
                 key="intro_run_sweep", width="stretch")
    if current is not None:
        note_col.caption(f"{sweep_size(current)} replies of up to "
                         f"{current.trials.max_new_tokens} tokens: on a CPU this takes a while.")
    request = SWEEP.request(istate.SweepRequest.from_state)
    if request is None:
        return
    trials = SWEEP.result(request, lambda bar: sweep_work(request, bar),
                          "Building the concept vectors", "concepts")
    if trials is None:
        return
    stale_note(request, current, SWEEP.label)
    show_sweep(trials, request)
