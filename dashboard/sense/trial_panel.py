"""The Introspection page's single trial: the concept injected at one layer and strength (its
size in effective magnitude and residual norms), the replies with and without injection side by
side (marked by the rule grader), every control's rate beside its chance arm's, the rates with
their intervals, and the logit lens."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.runtime.models import LoadedModel
from core.sense.introspection import POSITION_MODES, SCALES, InjectionSpec, TrialRun
from dashboard.common.runs import Bar, Run, attempt, with_model
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

LAYER_KEY = "intro_layer"
STRENGTH_KEY = "intro_strength"
POSITIONS_KEY = "intro_positions"
SCALE_KEY = "intro_scale"
PARTNER_KEY = "intro_partner"
TRIAL_SHOWN_KEY = "intro_trial_shown"
# strength slider per scale: (min, max, default, step); relative strengths count residual norms
STRENGTH_RANGES = {"raw": (0.0, 16.0, 4.0, 0.5), "relative": (0.0, 4.0, 0.5, 0.05)}
TRIAL = Run(istate.TRIAL_KEY, "Run trial", resume=False)
# the replies shown side by side: an arm and the one it is read against
REPLY_PAIRS: tuple[tuple[str, str | None], ...] = (
    ("injected", "none"), ("random", "negated"), ("named", "mismatch"),
    ("yes_no", "yes_no_none"), ("generation_only", None))


def strength_key(scale: str) -> str:
    """Each scale keeps its own strength (a raw 4 is not a relative 4)."""
    return STRENGTH_KEY if scale == "raw" else f"{STRENGTH_KEY}_{scale}"


def trial_inputs(loaded: LoadedModel, model: ModelKey,
                 concept: istate.ConceptChoice | None) -> tuple[int, InjectionSpec]:
    """Layer and strength sliders (the strength's help says what it adds at that layer),
    positions and scale."""
    left, right = st.columns(2)
    layer = int(left.slider(
        "Layer", 0, loaded.n_layers - 1, depth_layers(loaded.n_layers, (2 / 3,))[0], 1,
        key=LAYER_KEY, help="The block whose output gets the vector (the vector is taken at the "
                            "same layer). The paper's best: about two-thirds of the depth."))
    scale = str(st.session_state.get(SCALE_KEY, SCALES[0]))  # drawn below; its value now
    low, high, default, step = STRENGTH_RANGES[scale]
    key = strength_key(scale)
    shown = float(st.session_state.get(key, default))
    mean_norm = attempt(lambda: istate.residual_norms(model).get(layer),
                        "Measuring the residual norm")
    strength = float(right.slider(
        f"Strength ({scale})", low, high, default, step, key=key,
        help=replies.strength_help(shown, scale, layer, istate.known_norm(model, concept, layer),
                                   mean_norm)))
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
        st.markdown(f"**{control_charts.ARM_TITLES[condition]}**")
        if rows.empty:
            st.caption("This control was not run.")
            return
        st.html(replies.trial_card_html({str(k): v for k, v in rows.iloc[0].items()}))


def show_headline(run: TrialRun, request: istate.TrialRequest, summary: dict[str, Any]) -> None:
    """The setting (with the push in effective magnitude and residual norms) and the headline
    rates, the no-injection arm's size and interval beside them."""
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
    st.caption(f"Chance — {replies.false_positive_text(summary)}: the no-injection arm has "
               f"{request.config.n_shared} trials (at least {request.config.min_none_trials}, "
               "the paper's 0/100), paired with the injected trials by seed. Grades are the "
               "rule grader's: a hand check (sample_traces/audits/introspection.jsonl) found "
               "its coherence mark passes word salad, so read the replies.")


def show_controls(controls: pd.DataFrame) -> go.Figure:
    """Every arm's rate beside its chance arm's (figure and table)."""
    st.caption("The concept, random, negated and generation-only arms against no injection; "
               "the unrelated yes/no questions against the same questions without injection; "
               "'asked about the concept, it injected' against 'another concept injected'. "
               "Bars show 95% Wilson intervals; a difference whose interval includes 0 is no "
               "evidence.")
    figure = control_charts.controls_figure(controls)
    st.plotly_chart(figure, key="intro_controls_chart")
    with st.expander(f"Controls table ({len(controls)} arms, the `controls` of "
                     "`telltale inject --json`)"):
        st.dataframe(controls, hide_index=True)
    return figure


def show_replies(run: TrialRun, request: istate.TrialRequest) -> None:
    """Trial i of every arm that ran (arms paired by seed), each beside the arm it is read
    against."""
    st.markdown("**Replies**, marked by the rule grader")
    st.html(replies.mark_legend_html())
    trial = 0
    if request.config.n_trials > 1:
        trial = int(st.columns([1, 3])[0].selectbox(
            "Trial shown", list(range(request.config.n_trials)), key=TRIAL_SHOWN_KEY,
            format_func=lambda t: f"trial {t + 1} of {request.config.n_trials}"))
    ran = set(run.trials["condition"])
    for first, second in REPLY_PAIRS:
        if ran & {first, second}:
            left, right = st.columns(2)
            reply_card(left, run, first, trial)
            if second is not None:
                reply_card(right, run, second, trial)


def show_trial(run: TrialRun, lens: pd.DataFrame | None, request: istate.TrialRequest) -> None:
    """The finished trial: headline rates, every arm beside its chance, the replies side by
    side, rates per condition, the logit lens, the tables and downloads."""
    summary = run.summary()
    stem = f"telltale-trial-{request.concept.name}-L{request.layer}-s{request.spec.strength:g}"
    show_headline(run, request, summary)
    controls = run.controls()
    controls_figure = show_controls(controls)
    show_replies(run, request)
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
    tables = [("Trials (CSV)", run.trials, "trials"), ("Rates (CSV)", rates, "rates"),
              ("Controls (CSV)", controls, "controls")]
    figures = [("Rates figure (HTML)", rates_figure, "rates"),
               ("Controls figure (HTML)", controls_figure, "controls")]
    if lens is not None and lens_figure is not None:
        tables.append(("Logit lens (CSV)", lens, "lens"))
        figures.append(("Logit-lens figure (HTML)", lens_figure, "lens"))
    for col, (label, table, name) in zip(st.columns(4), tables, strict=False):
        with col:
            table_download(label, table, f"{stem}-{name}.csv", f"intro_dl_{name}")
    for col, (label, figure, name) in zip(st.columns(4), figures, strict=False):
        with col:
            figure_download(label, figure, f"{stem}-{name}.html", f"intro_dl_{name}_fig")


def trial_work(request: istate.TrialRequest, bar: Bar) -> TrialRun:
    """The concept's vectors (and the mismatched concept's), then the trials (all cached; each
    stage draws its own bar); the norms are kept for the strength slider's help."""
    library = istate.concept_library(request.model, request.concept, _progress=bar)
    istate.remember_norms(request.model, request.concept, library)
    if request.partner is not None:
        istate.concept_library(request.model, request.partner,
                               _progress=bar.stage("Building the mismatched concept", "prompts"))
    return istate.trial_run(request, _progress=bar.stage("Sampling trials", "replies"))


def tab(loaded: LoadedModel, model: ModelKey, concept: istate.ConceptChoice | None) -> None:
    """Inputs, the "Run trial" button and the last trial's results."""
    st.caption("The paper's trial: the model is told that thoughts may be injected, then asked "
               "\"Do you detect an injected thought? If so, what is the injected thought "
               "about?\" while the concept vector is added to its residual stream. The chosen "
               "controls run beside it.")
    layer, spec = trial_inputs(loaded, model, concept)
    config = choose_sampling("intro_trial", n_trials=10, max_new_tokens=100)
    partner = None
    if config is not None and "mismatch" in config.controls:
        partner = choose_partner(PARTNER_KEY, [concept.name] if concept is not None else [])
    current = None
    if concept is not None and config is not None:
        try:
            current = istate.TrialRequest(model, concept, layer, spec, config, partner)
        except ValueError as error:
            st.warning(str(error))
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
