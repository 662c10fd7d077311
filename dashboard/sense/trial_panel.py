"""The Introspection page's single trial: the concept injected at one layer and strength, the
replies with and without injection side by side (marked by the rule grader), the controls,
rates with their intervals, and the logit lens."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core.runtime.models import LoadedModel
from core.sense.introspection import POSITION_MODES, SCALES, InjectionSpec, TrialRun
from dashboard.common.runs import Bar, Run, attempt, with_model
from dashboard.common.state import ModelKey
from dashboard.common.widgets import figure_download, table_download
from dashboard.sense import charts as charts_sense
from dashboard.sense import replies
from dashboard.sense import state as istate
from dashboard.sense.inputs import (
    POSITION_HELP,
    SCALE_HELP,
    choose_sampling,
    depth_layers,
    stale_note,
)

LAYER_KEY = "intro_layer"
STRENGTH_KEY = "intro_strength"
POSITIONS_KEY = "intro_positions"
SCALE_KEY = "intro_scale"
TRIAL_SHOWN_KEY = "intro_trial_shown"
TRIAL = Run(istate.TRIAL_KEY, "Run trial", resume=False)


def trial_inputs(loaded: LoadedModel) -> tuple[int, InjectionSpec]:
    """Layer and strength sliders, positions and scale."""
    left, right = st.columns(2)
    layer = int(left.slider(
        "Layer", 0, loaded.n_layers - 1, depth_layers(loaded.n_layers, (2 / 3,))[0], 1,
        key=LAYER_KEY, help="The block whose output gets the vector (the vector is taken at the "
                            "same layer). The paper's best: about two-thirds of the depth."))
    strength = float(right.slider("Strength", 0.0, 16.0, 4.0, 0.5, key=STRENGTH_KEY,
                                  help="The paper sweeps 1, 2, 4, 8."))
    left, right = st.columns(2)
    positions = str(left.radio("Positions", list(POSITION_MODES), key=POSITIONS_KEY,
                               horizontal=True, help="\n\n".join(POSITION_HELP.values())))
    left.caption(POSITION_HELP[positions])
    scale = str(right.radio("Scale", list(SCALES), key=SCALE_KEY, horizontal=True,
                            help="\n\n".join(SCALE_HELP.values())))
    right.caption(SCALE_HELP[scale])
    return layer, InjectionSpec(strength, scale, positions)


def rate_metric(column: Any, label: str, summary: dict[str, Any], key: str, n_key: str = "n",
                help_text: str = "") -> None:
    p, lo, hi, n = (summary.get(key), summary.get(f"{key}_lo"), summary.get(f"{key}_hi"),
                    summary.get(n_key))
    interval = (f"95% Wilson interval [{replies.fraction_text(lo)}, "
                f"{replies.fraction_text(hi)}] over {n} trial(s). ") if lo is not None else ""
    column.metric(label, replies.fraction_text(p), help=interval + help_text)


def reply_card(column: Any, run: TrialRun, condition: str, trial: int) -> None:
    rows = run.trials[(run.trials["condition"] == condition) & (run.trials["trial"] == trial)]
    with column.container(border=True):
        st.markdown(f"**{charts_sense.CONDITION_TITLES[condition]}**")
        if rows.empty:
            st.caption("This control was not run.")
            return
        st.html(replies.trial_card_html({str(k): v for k, v in rows.iloc[0].items()}))


def show_trial(run: TrialRun, lens: pd.DataFrame | None, request: istate.TrialRequest) -> None:
    """The finished trial: headline rates, the replies side by side, rates per condition, the
    logit lens, the tables and downloads."""
    summary = run.summary()
    stem = f"telltale-trial-{request.concept.name}-L{request.layer}-s{request.spec.strength:g}"
    st.caption(f"{request.concept.label} at layer **{request.layer}**, strength "
               f"**{request.spec.strength:g}** ({request.spec.scale}), positions "
               f"**{request.spec.positions}**; {request.config.n_trials} trial(s) per condition, "
               f"up to {request.config.max_new_tokens} new tokens, temperature "
               f"{request.config.temperature:g}, seed {request.config.seed}.")
    st.caption(replies.push_sentence(run.vector_norm, run.mean_residual_norm,
                                          request.spec.strength, request.spec.scale))
    cols = st.columns(5)
    rate_metric(cols[0], "detection", summary, "detection",
                help_text="Coherent and affirmative, with the concept injected.")
    rate_metric(cols[1], "identification", summary, "identification",
                help_text="Detected, names the concept, and the claim comes first.")
    rate_metric(cols[2], "false positives", summary, "false_positive", "n_none",
                help_text="Detection claims with no injection.")
    cols[3].metric("net score", replies.fraction_text(summary.get("net")),
                   help="identification - false positives (the paper: about 0.2 for Claude "
                        "Opus 4.1 at its best layer).")
    rate_metric(cols[4], "coherence", summary, "coherence",
                help_text="Replies that read as language, with the concept injected.")

    st.markdown("**Replies**, marked by the rule grader")
    st.html(replies.mark_legend_html())
    trial = 0
    if request.config.n_trials > 1:
        trial = int(st.columns([1, 3])[0].selectbox(
            "Trial shown", list(range(request.config.n_trials)), key=TRIAL_SHOWN_KEY,
            format_func=lambda t: f"trial {t + 1} of {request.config.n_trials}"))
    left, right = st.columns(2)
    reply_card(left, run, "injected", trial)
    reply_card(right, run, "none", trial)
    if {"random", "negated"} & set(request.config.controls):
        left, right = st.columns(2)
        reply_card(left, run, "random", trial)
        reply_card(right, run, "negated", trial)

    rates = run.rates()
    rates_figure = charts_sense.condition_rates_figure(
        rates, f"Rates per condition ({request.config.n_trials} trial(s) each)")
    lens_figure = None
    chart_col, lens_col = st.columns(2)
    chart_col.plotly_chart(rates_figure, key="intro_rates_chart")
    if lens is not None and not lens.empty:
        lens_figure = charts_sense.logit_lens_figure(lens, request.layer, request.spec.strength)
        lens_col.plotly_chart(lens_figure, key="intro_lens_chart")
    with st.expander(f"All {len(run.trials)} trials"):
        st.dataframe(run.trials, hide_index=True)
    with st.expander("Rates per condition (table)"):
        st.dataframe(rates, hide_index=True)
    cols = st.columns(5)
    with cols[0]:
        table_download("Trials (CSV)", run.trials, f"{stem}-trials.csv", "intro_dl_trials")
    with cols[1]:
        table_download("Rates (CSV)", rates, f"{stem}-rates.csv", "intro_dl_rates")
    with cols[2]:
        figure_download("Rates figure (HTML)", rates_figure, f"{stem}-rates.html",
                        "intro_dl_rates_fig")
    if lens is not None and lens_figure is not None:
        with cols[3]:
            table_download("Logit lens (CSV)", lens, f"{stem}-lens.csv", "intro_dl_lens")
        with cols[4]:
            figure_download("Logit-lens figure (HTML)", lens_figure, f"{stem}-lens.html",
                            "intro_dl_lens_fig")


def trial_work(request: istate.TrialRequest, bar: Bar) -> TrialRun:
    """The concept's vectors, then the trials (both cached; each stage draws its own bar)."""
    istate.concept_library(request.model, request.concept, _progress=bar)
    return istate.trial_run(request, _progress=bar.stage("Sampling trials", "replies"))


def tab(loaded: LoadedModel, model: ModelKey, concept: istate.ConceptChoice | None) -> None:
    """Inputs, the "Run trial" button and the last trial's results."""
    st.caption("The paper's trial: the model is told that thoughts may be injected, then asked "
               "\"Do you detect an injected thought? If so, what is the injected thought "
               "about?\" while the concept vector is added to its residual stream. Every control "
               "runs beside it.")
    layer, spec = trial_inputs(loaded)
    config = choose_sampling("intro_trial", n_trials=10, max_new_tokens=100)
    current = None
    if concept is not None and config is not None:
        current = istate.TrialRequest(model, concept, layer, spec, config)
    n_replies = sum(istate.reply_counts(config)) if config is not None else 0
    button_col, note_col = st.columns([1, 4])
    TRIAL.button(None if current is None else with_model(current), where=button_col,
                 key="intro_run_trial", width="stretch")
    note_col.caption(f"{n_replies} replies of up to "
                     f"{config.max_new_tokens if config else 0} tokens, then the logit lens.")
    request = TRIAL.request(istate.TrialRequest.from_state)
    if request is None:
        return
    run = TRIAL.result(request, lambda bar: trial_work(request, bar),
                       f"Building the concept vector {request.concept.label}", "prompts")
    if run is None:
        return
    lens = attempt(lambda: istate.lens_table(request), "Reading the logit lens")
    stale_note(request, current, TRIAL.label)
    show_trial(run, lens, request)
