"""The Introspection page's prefill test: the model's answer is prefilled with an unrelated
word and it is asked whether it meant it; how often it apologises, with no injection, with the
prefilled word's concept injected, and with another word's concept."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.runtime.models import LoadedModel
from core.sense.introspection import SCALES
from core.sense.prefill import PREFILL_ITEMS, prefill_summary
from dashboard.common.runs import Run, with_model
from dashboard.common.state import ModelKey
from dashboard.common.widgets import figure_download, table_download
from dashboard.sense import charts as charts_sense
from dashboard.sense import state as istate
from dashboard.sense.inputs import SCALE_HELP, choose_sampling, depth_layers, stale_note

PREFILL_LAYERS_KEY = "intro_prefill_layers"
PREFILL_STRENGTH_KEY = "intro_prefill_strength"
PREFILL_SCALE_KEY = "intro_prefill_scale"
PREFILL = Run(istate.PREFILL_KEY, "Run prefill", resume=False)


def prefill_inputs(loaded: LoadedModel, model: ModelKey) -> istate.PrefillRequest | None:
    left, mid, right = st.columns([2, 2, 1])
    layers = left.multiselect("Layers", list(range(loaded.n_layers)),
                              default=depth_layers(loaded.n_layers, (1 / 3, 1 / 2, 2 / 3)),
                              key=PREFILL_LAYERS_KEY)
    strength = float(mid.slider("Strength", 0.0, 32.0, 4.0, 0.5, key=PREFILL_STRENGTH_KEY,
                                help="The paper used 16 for this test (with its own scale)."))
    scale = str(right.radio("Scale", list(SCALES), key=PREFILL_SCALE_KEY,
                            help="\n\n".join(SCALE_HELP.values())))
    config = choose_sampling("intro_prefill", n_trials=2, max_new_tokens=40,
                             with_controls=False)
    if config is None or not layers:
        st.caption("Choose at least one layer.")
        return None
    try:
        return istate.PrefillRequest(model, tuple(sorted(layers)), strength, scale, config)
    except ValueError as error:
        st.warning(str(error))
        return None


def show_prefill(replies: pd.DataFrame, request: istate.PrefillRequest) -> None:
    summary = prefill_summary(replies)
    stem = f"telltale-prefill-s{request.strength:g}"
    figure = charts_sense.prefill_figure(summary, request.strength)
    st.caption(f"{len(replies)} replies: {request.trials.n_trials} per item and condition, "
               f"{len(PREFILL_ITEMS)} items, strength {request.strength:g} ({request.scale}), up "
               f"to {request.trials.max_new_tokens} new tokens. The paper sees fewer apologies "
               "when the matching concept is injected, most a little past the middle layer.")
    st.plotly_chart(figure, key="intro_prefill_chart")
    with st.expander(f"Apology rates ({len(summary)} rows)"):
        st.dataframe(summary, hide_index=True)
    with st.expander(f"All {len(replies)} replies"):
        st.dataframe(replies, hide_index=True)
    cols = st.columns(3)
    with cols[0]:
        table_download("Apology rates (CSV)", summary, f"{stem}-summary.csv",
                       "intro_dl_prefill_summary")
    with cols[1]:
        table_download("Replies (CSV)", replies, f"{stem}-replies.csv",
                       "intro_dl_prefill_replies")
    with cols[2]:
        figure_download("Bar chart (HTML)", figure, f"{stem}.html", "intro_dl_prefill_fig")


def tab(loaded: LoadedModel, model: ModelKey) -> None:
    """Inputs, the "Run prefill" button and the last run's results."""
    sentence, word = PREFILL_ITEMS[0]
    st.caption(f"The model is asked which word a sentence brings to mind (\"{sentence}\"), its "
               f"answer is prefilled with an unrelated word (\"{word}\"), and it is asked \"Did "
               "you mean to say that, or was it an accident?\". Apology rate with no injection, "
               "with the prefilled word's concept injected on the sentence tokens, and with "
               "another word's concept.")
    current = prefill_inputs(loaded, model)
    button_col, note_col = st.columns([1, 4])
    PREFILL.button(None if current is None else with_model(current), where=button_col,
                   key="intro_run_prefill", width="stretch")
    if current is not None:
        n = len(PREFILL_ITEMS) * current.trials.n_trials * (1 + 2 * len(current.layers))
        note_col.caption(f"{n} replies of up to {current.trials.max_new_tokens} tokens, after "
                         "building the prefilled words' vectors.")
    request = PREFILL.request(istate.PrefillRequest.from_state)
    if request is None:
        return
    replies = PREFILL.result(request, lambda bar: istate.prefill_replies(request, _progress=bar),
                             "Prefill replies", "replies")
    if replies is None:
        return
    stale_note(request, current, PREFILL.label)
    show_prefill(replies, request)
