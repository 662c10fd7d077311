"""Introspection page: inject a concept vector into the model's residual stream and ask it
whether it notices (the protocol of "Emergent Introspective Awareness", METHODS section 2).

Pick or type a concept (or define a contrastive pair), then: "Run trial" shows the replies with
and without injection side by side, marked by the rule grader, every control's rate beside its
chance arm's, and the logit lens; "Run sweep" maps net score, identification and coherence over
layer x strength beside the controls and the confounds; "Run prefill" measures how often the
model disowns a word it was made to say. Strengths are raw or relative (multiples of the layer's
mean residual norm), and shown also as effective magnitude and ratio to that norm.

Inputs -> request -> run -> show: this module draws the concept choice and the three tabs; each
tab is a panel (`trial_panel`, `sweep_panel`, `prefill_panel`) whose run is a
`dashboard.common.runs.Run` (requests in `sense.requests`) over the cached helpers of
`sense.state`; figures and marked replies come from `sense.charts`, `sense.control_charts` and
`sense.replies`.
"""

from __future__ import annotations

import streamlit as st

from core.sense.concepts import ALL_TARGET_WORDS, BASELINE_WORDS, TARGET_WORDS
from dashboard.common import state
from dashboard.common.sidebar import load_pressed
from dashboard.common.state import ModelKey
from dashboard.sense import prefill_panel, sweep_panel, trial_panel
from dashboard.sense import state as istate

SOURCE_KEY = "intro_concept_source"
WORD_KEY = "intro_concept_word"
OWN_WORD_KEY = "intro_concept_own"
PAIR_NAME_KEY = "intro_pair_name"
PAIR_CAPS_KEY = "intro_pair_caps"
PAIR_TEXTS_KEY = "intro_pair_texts"
PAIR_POSITIVE_KEY = "intro_pair_positive"
PAIR_NEGATIVE_KEY = "intro_pair_negative"
MODEL_FOR_KEY = "intro_model_for"  # the model the layer widgets were made for
# widgets whose choices depend on the model's depth: reset when the model changes
LAYER_WIDGETS = (trial_panel.LAYER_KEY, sweep_panel.SWEEP_LAYERS_KEY,
                 prefill_panel.PREFILL_LAYERS_KEY)

SOURCES = {"list": "word list", "own": "your own word", "pair": "contrastive pair"}
WORD_KIND = {word: kind for kind, words in TARGET_WORDS.items() for word in words}
DEFAULT_WORD = sweep_panel.DEFAULT_WORD
CAPS_TEXTS = ("Hi! How are you?", "I can't believe we won the game.", "Please close the door.",
              "The meeting starts at noon.", "Where did you put my keys?",
              "This is the best day of my life.")

FRAMING = (
    "**What to expect.** The paper (\"Emergent Introspective Awareness\") reports that Claude "
    "Opus 4.1 named an injected concept, before saying it, in about **20%** of trials, at about "
    "two-thirds depth and strength 2-4, with **0 of 100** false positives; pre-trained base "
    "models scored nothing. *Those are the paper's numbers, not this tool's.* A small model such "
    "as the default SmolLM2-135M will most likely **not** introspect: expect rates near zero, "
    "replies that echo the question's words, and controls (no injection, a random vector of "
    "the same norm, the negated vector) that score as much as the concept itself. The open "
    "reproductions found confounds, selectable under *Sampling and controls*: injection on the "
    "generated tokens only, unrelated yes/no questions with the same injection, and a "
    "mismatched concept. Read every rate against its chance arm. Replies are graded by simple "
    "rules (coherent; affirmative; names the concept; the claim comes before the word), checked "
    "by hand in sample_traces/audits/, so read the replies too.")


def reset_layer_widgets(model: ModelKey) -> None:
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
        st.button("Load the sidebar's model", key="intro_load_model", on_click=load_pressed)
        return
    model = choice.as_tuple()
    reset_layer_widgets(model)
    st.caption(f"Model: **{loaded.name}** ({loaded.n_layers} layers, hidden size "
               f"{loaded.hidden_size}, {loaded.device}).")
    st.subheader("Concept")
    concept = choose_concept()
    trial, sweep, prefill = st.tabs(["Single trial", "Sweep", "Prefill"])
    with trial:
        trial_panel.tab(loaded, model, concept)
    with sweep:
        sweep_panel.tab(loaded, model, concept)
    with prefill:
        prefill_panel.tab(loaded, model)
