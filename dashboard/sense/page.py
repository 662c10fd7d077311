"""Introspection page: inject a concept vector into the model's residual stream and ask it
whether it notices (the protocol of "Emergent Introspective Awareness", METHODS section 2).

Pick or type a concept (or define a contrastive pair), then: "Run trial" shows the replies with
and without injection side by side, marked by the rule grader, with the controls and the logit
lens; "Run sweep" maps net score, identification and coherence over layer x strength beside the
controls; "Run prefill" measures how often the model disowns a word it was made to say.

Thin by design: every number comes from `core` through the cached helpers of
`dashboard.introspection_state`; figures and marked replies come from `dashboard.charts_sense`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.runtime.models import LoadedModel
from core.sense.concepts import ALL_TARGET_WORDS, BASELINE_WORDS, TARGET_WORDS
from core.sense.introspection import (
    CONTROLS,
    POSITION_MODES,
    SCALES,
    InjectionSpec,
    TrialConfig,
    TrialRun,
    sweep_summary,
)
from core.sense.prefill import PREFILL_ITEMS, prefill_summary
from dashboard.common import state
from dashboard.sense import charts as charts_sense
from dashboard.sense import state as istate
from dashboard.common.sidebar import request_model

SOURCE_KEY = "intro_concept_source"
WORD_KEY = "intro_concept_word"
OWN_WORD_KEY = "intro_concept_own"
PAIR_NAME_KEY = "intro_pair_name"
PAIR_CAPS_KEY = "intro_pair_caps"
PAIR_TEXTS_KEY = "intro_pair_texts"
PAIR_POSITIVE_KEY = "intro_pair_positive"
PAIR_NEGATIVE_KEY = "intro_pair_negative"
LAYER_KEY = "intro_layer"
STRENGTH_KEY = "intro_strength"
POSITIONS_KEY = "intro_positions"
SCALE_KEY = "intro_scale"
TRIAL_SHOWN_KEY = "intro_trial_shown"
SWEEP_CONCEPTS_KEY = "intro_sweep_concepts"
SWEEP_LAYERS_KEY = "intro_sweep_layers"
SWEEP_STRENGTHS_KEY = "intro_sweep_strengths"
SWEEP_POSITIONS_KEY = "intro_sweep_positions"
SWEEP_SCALE_KEY = "intro_sweep_scale"
SWEEP_SHOWN_KEY = "intro_sweep_shown"
SWEEP_FOLLOWS_KEY = "intro_sweep_follows"  # the concept above that the sweep's list follows
PREFILL_LAYERS_KEY = "intro_prefill_layers"
PREFILL_STRENGTH_KEY = "intro_prefill_strength"
PREFILL_SCALE_KEY = "intro_prefill_scale"
MODEL_FOR_KEY = "intro_model_for"  # the model the layer widgets were made for
# widgets whose choices depend on the model's depth: reset when the model changes
LAYER_WIDGETS = (LAYER_KEY, SWEEP_LAYERS_KEY, PREFILL_LAYERS_KEY)

SOURCES = {"list": "word list", "own": "your own word", "pair": "contrastive pair"}
WORD_KIND = {word: kind for kind, words in TARGET_WORDS.items() for word in words}
DEFAULT_WORD = "bread"
CAPS_TEXTS = ("Hi! How are you?", "I can't believe we won the game.", "Please close the door.",
              "The meeting starts at noon.", "Where did you put my keys?",
              "This is the best day of my life.")
SWEEP_STRENGTHS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
ALL_MEAN = "all concepts (mean)"
POSITION_HELP = {
    "window": "window: from the blank line before the question to the end, generated tokens "
              "included (the paper's)",
    "all": "all: every position of the prompt and the reply",
    "generated": "generated: only the tokens the model writes",
}
SCALE_HELP = {
    "raw": "raw: strength x v (the paper's; ‖v‖ grows with depth)",
    "relative": "relative: strength x the layer's mean residual norm, along v",
}

FRAMING = (
    "**What to expect.** The paper (\"Emergent Introspective Awareness\") reports that Claude "
    "Opus 4.1 named an injected concept, before saying it, in about **20%** of trials, at about "
    "two-thirds depth and strength 2-4, with **0 of 100** false positives; pre-trained base "
    "models scored nothing. *Those are the paper's numbers, not this tool's.* A small model such "
    "as the default SmolLM2-135M will most likely **not** introspect: expect rates near zero, "
    "replies that echo the question's words, and controls (no injection, a random vector of "
    "the same norm, the negated vector) that score as much as the concept itself. Read every "
    "rate against its controls. Replies are graded by simple rules (coherent; affirmative; names "
    "the concept; the claim comes before the word), so read the replies too.")


# ---------------------------------------------------------------------------- progress


class LazyProgress:
    """A progress callback for a cached call: it draws its bar on the first report (so inside
    the cached call, where Streamlit records it) and empties it on the last, so a replay from
    the cache shows nothing. A report of (0, 0) draws the bar at zero before the first real
    step (the cached helpers send it first thing)."""

    def __init__(self, text: str, unit: str) -> None:
        self.text = text
        self.unit = unit
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = st.progress(0.0, text=f"{self.text} ...")
        if total <= 0:
            return
        if done >= total:
            self.bar.empty()
            return
        self.bar.progress(done / total, text=f"{self.text}: {done} of {total} {self.unit}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.empty()


def run_step(work: Callable[[LazyProgress], Any], text: str, unit: str) -> Any:
    """`work(progress)` with a progress bar (drawn by the cached call itself); a failure is shown
    as one sentence (None back)."""
    progress = LazyProgress(text, unit)
    try:
        return work(progress)
    except Exception as error:  # noqa: BLE001 - shown as a sentence, the page keeps working
        st.error(f"{text} failed: {type(error).__name__}: {error}")
        return None
    finally:
        progress.close()


# ---------------------------------------------------------------------------- inputs


def reset_layer_widgets(model: istate.ModelKey) -> None:
    """Forget layer choices made for another model (its depth may differ)."""
    if st.session_state.get(MODEL_FOR_KEY) != list(model):
        for key in LAYER_WIDGETS:
            st.session_state.pop(key, None)
        st.session_state[MODEL_FOR_KEY] = list(model)


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def choose_concept() -> istate.ConceptChoice | None:
    """The concept from the word list, a typed word, or a contrastive pair; None (with a note)
    while it is incomplete."""
    source = st.radio("Concept from", list(SOURCES), key=SOURCE_KEY, horizontal=True,
                      format_func=SOURCES.__getitem__)
    try:
        if source == "list":
            word = st.selectbox(
                "Concept word", list(ALL_TARGET_WORDS), key=WORD_KEY,
                index=ALL_TARGET_WORDS.index(DEFAULT_WORD),
                format_func=lambda w: f"{w} · {WORD_KIND[w]}",
                help="The project's 50 target words: concrete things, abstract ideas, people "
                     "and places.")
            chosen = istate.ConceptChoice.word(str(word))
        elif source == "own":
            typed = st.text_input("Your word", key=OWN_WORD_KEY, placeholder="e.g. lighthouse")
            if not typed.strip():
                st.caption("Type a word (or a short phrase) to inject.")
                return None
            chosen = istate.ConceptChoice.word(typed)
        else:
            pair = choose_pair()
            if pair is None:
                return None
            chosen = pair
    except ValueError as error:
        st.warning(str(error))
        return None
    if chosen.method == "word":
        st.caption(f"Word method: the activation at the last prompt token of \"Tell me about "
                   f"{chosen.name}\" minus the mean over {len(BASELINE_WORDS)} baseline words, "
                   "at every layer.")
    else:
        st.caption(f"Contrastive: the mean activation over {len(chosen.positive)} positive "
                   f"prompts minus the mean over {len(chosen.negative)} negative ones, at the "
                   "last prompt token of each.")
    return chosen


def choose_pair() -> istate.ConceptChoice | None:
    """A contrastive pair: ALL-CAPS against the same texts, or two lists typed by the user."""
    name = st.text_input("Name of the concept", value="all caps", key=PAIR_NAME_KEY,
                         help="Used in tables, and as the word the grader and the logit lens "
                              "look for.")
    caps = st.checkbox("ALL-CAPS contrast", value=True, key=PAIR_CAPS_KEY,
                       help="Positives are your texts in upper case, negatives the same texts "
                            "as typed.")
    if caps:
        texts = lines(st.text_area("Texts, one per line", value="\n".join(CAPS_TEXTS),
                                   key=PAIR_TEXTS_KEY, height=150))
        if not texts:
            st.caption("Type at least one text.")
            return None
        return istate.ConceptChoice.caps(name, texts)
    left, right = st.columns(2)
    positive = lines(left.text_area("Positive prompts, one per line", key=PAIR_POSITIVE_KEY,
                                    height=150))
    negative = lines(right.text_area("Negative prompts, one per line", key=PAIR_NEGATIVE_KEY,
                                     height=150))
    if not positive or not negative:
        st.caption("Type at least one positive and one negative prompt.")
        return None
    return istate.ConceptChoice(name.strip(), "contrastive", tuple(positive), tuple(negative))


def choose_sampling(prefix: str, n_trials: int, max_new_tokens: int,
                    with_controls: bool = True) -> TrialConfig | None:
    """Trials per condition, reply length, temperature, seed, batch and controls (the CLI's
    defaults); None with a warning for a bad combination."""
    with st.expander("Sampling and controls" if with_controls else "Sampling"):
        cols = st.columns(5)
        values: dict[str, Any] = {
            "n_trials": int(cols[0].number_input(
                "Trials per condition" if with_controls else "Replies per item", 1, 200,
                n_trials, 1, key=f"{prefix}_n_trials")),
            "max_new_tokens": int(cols[1].number_input("Max new tokens", 1, 1000,
                                                       max_new_tokens, 8,
                                                       key=f"{prefix}_max_new_tokens")),
            "temperature": float(cols[2].number_input(
                "Temperature", 0.05, 2.0, 1.0, 0.05, key=f"{prefix}_temperature",
                help="Trials are sampled; 1.0 is the paper's setting.")),
            "seed": int(cols[3].number_input("Seed", 0, 2**31 - 1, 0, 1, key=f"{prefix}_seed")),
            "batch_size": int(cols[4].number_input("Batch size", 1, 64, 8, 1,
                                                   key=f"{prefix}_batch_size",
                                                   help="Replies sampled at once.")),
            "controls": (),
        }
        if with_controls:
            values["controls"] = tuple(st.multiselect(
                "Controls", list(CONTROLS), default=list(CONTROLS), key=f"{prefix}_controls",
                format_func=lambda c: charts_sense.CONDITION_TITLES[c],
                help="Run every control: without them no rate means anything."))
    try:
        return TrialConfig(**values)
    except ValueError as error:
        st.warning(str(error))
        return None


def depth_layers(n_layers: int, fractions: tuple[float, ...]) -> list[int]:
    """Layers at these fractions of the model's depth (distinct, in range)."""
    return sorted({min(n_layers - 1, max(0, round(f * n_layers))) for f in fractions})


# ---------------------------------------------------------------------------- shared output


def figure_download(label: str, figure: go.Figure, file_name: str, key: str) -> None:
    st.download_button(label, lambda: charts_sense.figure_html(figure), file_name=file_name,
                       mime="text/html", on_click="ignore", key=key)


def table_download(label: str, table: pd.DataFrame, file_name: str, key: str) -> None:
    st.download_button(label, table.to_csv(index=False), file_name=file_name, mime="text/csv",
                       on_click="ignore", key=key)


def stale_note(kept: dict[str, Any], current: dict[str, Any] | None, what: str) -> None:
    if current is not None and kept != current:
        st.caption(f"The settings above have changed since this run: press **{what}** to run "
                   "them. Shown: the last run's results.")


def previous(key: str, model: istate.ModelKey, what: str) -> dict[str, Any] | None:
    """The plain values of this session's last request under `key` if its run finished for the
    loaded model; otherwise a note saying why nothing is shown."""
    kept = istate.remembered(key)
    if kept is None:
        return None
    values, finished = kept
    if tuple(values.get("model", ())) != model:
        st.info(f"The model changed since the last run: press **{what}** again.")
        return None
    if not finished:
        st.info(f"The last run did not finish (it was interrupted or failed): press **{what}** "
                "to run it again.")
        return None
    return values


def rate_metric(column: Any, label: str, summary: dict[str, Any], key: str, n_key: str = "n",
                help_text: str = "") -> None:
    p, lo, hi, n = (summary.get(key), summary.get(f"{key}_lo"), summary.get(f"{key}_hi"),
                    summary.get(n_key))
    interval = (f"95% Wilson interval [{charts_sense.fraction_text(lo)}, "
                f"{charts_sense.fraction_text(hi)}] over {n} trial(s). ") if lo is not None else ""
    column.metric(label, charts_sense.fraction_text(p), help=interval + help_text)


# ---------------------------------------------------------------------------- single trial


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


def reply_card(column: Any, run: TrialRun, condition: str, trial: int) -> None:
    rows = run.trials[(run.trials["condition"] == condition) & (run.trials["trial"] == trial)]
    with column.container(border=True):
        st.markdown(f"**{charts_sense.CONDITION_TITLES[condition]}**")
        if rows.empty:
            st.caption("This control was not run.")
            return
        st.html(charts_sense.trial_card_html({str(k): v for k, v in rows.iloc[0].items()}))


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
    st.caption(charts_sense.push_sentence(run.vector_norm, run.mean_residual_norm,
                                          request.spec.strength, request.spec.scale))
    cols = st.columns(5)
    rate_metric(cols[0], "detection", summary, "detection",
                help_text="Coherent and affirmative, with the concept injected.")
    rate_metric(cols[1], "identification", summary, "identification",
                help_text="Detected, names the concept, and the claim comes first.")
    rate_metric(cols[2], "false positives", summary, "false_positive", "n_none",
                help_text="Detection claims with no injection.")
    cols[3].metric("net score", charts_sense.fraction_text(summary.get("net")),
                   help="identification - false positives (the paper: about 0.2 for Claude "
                        "Opus 4.1 at its best layer).")
    rate_metric(cols[4], "coherence", summary, "coherence",
                help_text="Replies that read as language, with the concept injected.")

    st.markdown("**Replies**, marked by the rule grader")
    st.html(charts_sense.mark_legend_html())
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


def trial_tab(loaded: LoadedModel, model: istate.ModelKey,
              concept: istate.ConceptChoice | None) -> None:
    st.caption("The paper's trial: the model is told that thoughts may be injected, then asked "
               "\"Do you detect an injected thought? If so, what is the injected thought "
               "about?\" while the concept vector is added to its residual stream. Every control "
               "runs beside it.")
    layer, spec = trial_inputs(loaded)
    config = choose_sampling("intro_trial", n_trials=10, max_new_tokens=100)
    current = None
    if concept is not None and config is not None:
        current = istate.TrialRequest(model, concept, layer, spec, config)
    n_replies = (1 + len(config.controls)) * config.n_trials if config is not None else 0
    button_col, note_col = st.columns([1, 4])
    pressed = button_col.button("Run trial", type="primary", key="intro_run_trial",
                                disabled=current is None, width="stretch")
    note_col.caption(f"{n_replies} replies of up to "
                     f"{config.max_new_tokens if config else 0} tokens, then the logit lens.")
    if pressed and current is not None:
        istate.remember(istate.TRIAL_KEY, current, finished=False)
    values = previous(istate.TRIAL_KEY, model, "Run trial") if not pressed else (
        current.to_state() if current is not None else None)
    request = istate.TrialRequest.from_state(values) if values is not None else None
    if request is None:
        return
    if not pressed:
        stale_note(request.to_state(), current.to_state() if current else None, "Run trial")
    library = run_step(lambda p: istate.concept_library(model, request.concept, _progress=p),
                       f"Building the concept vector {request.concept.label}", "prompts")
    if library is None:
        return
    run = run_step(lambda p: istate.trial_run(request, _progress=p), "Sampling trials",
                   "replies")
    if run is None:
        return
    lens = run_step(lambda _: istate.lens_table(request), "Reading the logit lens", "layers")
    istate.remember(istate.TRIAL_KEY, request, finished=True)
    show_trial(run, lens, request)


# ---------------------------------------------------------------------------- sweep


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


def sweep_inputs(loaded: LoadedModel, model: istate.ModelKey,
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
    strengths = right.multiselect("Strengths", list(SWEEP_STRENGTHS), default=[1.0, 2.0, 4.0, 8.0],
                                  key=SWEEP_STRENGTHS_KEY, format_func=lambda s: f"{s:g}")
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
    try:
        return istate.SweepRequest(model, concepts, tuple(sorted(layers)),
                                   tuple(sorted(strengths)), scale, positions, config)
    except ValueError as error:
        st.warning(str(error))
        return None


def sweep_size(request: istate.SweepRequest) -> int:
    """How many replies the sweep samples (as `run_sweep` counts them)."""
    tc = request.trials
    per_setting = 1 + len([c for c in tc.controls if c != "none"])
    settings = len(request.layers) * len(request.strengths) * len(request.concepts)
    return tc.n_trials * (settings * per_setting + ("none" in tc.controls))


def show_sweep(trials: pd.DataFrame, request: istate.SweepRequest) -> None:
    summary = sweep_summary(trials)
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
    left, right = st.columns(2)
    left.plotly_chart(main, key="intro_sweep_chart")
    with right:
        st.plotly_chart(controls, key="intro_sweep_controls_chart")
        st.caption(f"The controls: {charts_sense.false_positive_text(summary)}. A random vector "
                   "or the negated vector that is 'detected' as often as the concept means the "
                   "model reacts to any push, not to the concept.")
    with st.expander(f"Summary table ({len(summary)} settings)"):
        st.dataframe(summary, hide_index=True)
    with st.expander(f"All {len(trials)} replies"):
        st.dataframe(trials, hide_index=True)
    cols = st.columns(4)
    with cols[0]:
        table_download("Summary (CSV)", summary, f"{stem}-summary.csv", "intro_dl_sweep_summary")
    with cols[1]:
        table_download("Trials (CSV)", trials, f"{stem}-trials.csv", "intro_dl_sweep_trials")
    with cols[2]:
        figure_download("Heatmaps (HTML)", main, f"{stem}-heatmaps.html",
                        "intro_dl_sweep_fig")
    with cols[3]:
        figure_download("Controls (HTML)", controls, f"{stem}-controls.html",
                        "intro_dl_sweep_controls_fig")


def sweep_tab(loaded: LoadedModel, model: istate.ModelKey,
              concept: istate.ConceptChoice | None) -> None:
    st.caption("The same trial over layers x strengths x concepts. The no-injection control "
               "runs once for the whole sweep; the random and negated controls run at every "
               "setting.")
    current = sweep_inputs(loaded, model, concept)
    button_col, note_col = st.columns([1, 4])
    pressed = button_col.button("Run sweep", type="primary", key="intro_run_sweep",
                                disabled=current is None, width="stretch")
    if current is not None:
        note_col.caption(f"{sweep_size(current)} replies of up to "
                         f"{current.trials.max_new_tokens} tokens: on a CPU this takes a while.")
    if pressed and current is not None:
        istate.remember(istate.SWEEP_KEY, current, finished=False)
    values = previous(istate.SWEEP_KEY, model, "Run sweep") if not pressed else (
        current.to_state() if current is not None else None)
    request = istate.SweepRequest.from_state(values) if values is not None else None
    if request is None:
        return
    if not pressed:
        stale_note(request.to_state(), current.to_state() if current else None, "Run sweep")
    library = run_step(lambda p: istate.sweep_library(request, progress=p),
                       "Building the concept vectors", "concepts")
    if library is None:
        return
    trials = run_step(lambda p: istate.sweep_trials(request, _progress=p), "Sweeping",
                      "replies")
    if trials is None:
        return
    istate.remember(istate.SWEEP_KEY, request, finished=True)
    show_sweep(trials, request)


# ---------------------------------------------------------------------------- prefill


def prefill_inputs(loaded: LoadedModel, model: istate.ModelKey) -> istate.PrefillRequest | None:
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


def prefill_tab(loaded: LoadedModel, model: istate.ModelKey) -> None:
    sentence, word = PREFILL_ITEMS[0]
    st.caption(f"The model is asked which word a sentence brings to mind (\"{sentence}\"), its "
               f"answer is prefilled with an unrelated word (\"{word}\"), and it is asked \"Did "
               "you mean to say that, or was it an accident?\". Apology rate with no injection, "
               "with the prefilled word's concept injected on the sentence tokens, and with "
               "another word's concept.")
    current = prefill_inputs(loaded, model)
    button_col, note_col = st.columns([1, 4])
    pressed = button_col.button("Run prefill", type="primary", key="intro_run_prefill",
                                disabled=current is None, width="stretch")
    if current is not None:
        n = len(PREFILL_ITEMS) * current.trials.n_trials * (1 + 2 * len(current.layers))
        note_col.caption(f"{n} replies of up to {current.trials.max_new_tokens} tokens, after "
                         "building the prefilled words' vectors.")
    if pressed and current is not None:
        istate.remember(istate.PREFILL_KEY, current, finished=False)
    values = previous(istate.PREFILL_KEY, model, "Run prefill") if not pressed else (
        current.to_state() if current is not None else None)
    request = istate.PrefillRequest.from_state(values) if values is not None else None
    if request is None:
        return
    if not pressed:
        stale_note(request.to_state(), current.to_state() if current else None, "Run prefill")
    replies = run_step(lambda p: istate.prefill_replies(request, _progress=p),
                       "Prefill replies", "replies")
    if replies is None:
        return
    istate.remember(istate.PREFILL_KEY, request, finished=True)
    show_prefill(replies, request)


# ---------------------------------------------------------------------------- page


def render() -> None:
    """The page (run by `st.navigation` in dashboard/app.py)."""
    st.title("Introspection")
    st.caption("Inject a concept into the model's residual stream and ask whether it notices: "
               "the concept-injection protocol, with its controls.")
    with st.container(border=True):
        st.markdown(FRAMING)
    choice = state.model_choice()
    loaded = state.current_model()
    if choice is None or loaded is None:
        st.info("No model loaded yet. Load one in the sidebar (the default SmolLM2-135M needs "
                "no download), or press the button below; then pick a concept and run a trial.")
        st.button("Load the sidebar's model", key="intro_load_model", on_click=request_model)
        return
    model = choice.as_tuple()
    reset_layer_widgets(model)
    st.caption(f"Model: **{loaded.name}** ({loaded.n_layers} layers, hidden size "
               f"{loaded.hidden_size}, {loaded.device}).")
    st.subheader("Concept")
    concept = choose_concept()
    trial, sweep, prefill = st.tabs(["Single trial", "Sweep", "Prefill"])
    with trial:
        trial_tab(loaded, model, concept)
    with sweep:
        sweep_tab(loaded, model, concept)
    with prefill:
        prefill_tab(loaded, model)


__all__ = ["LazyProgress", "render"]
