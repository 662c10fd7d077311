"""What the Introspection page keeps between reruns: its requests (small values in session
state, `sense.requests`), its results (`st.cache_data`, keyed on the model and every setting) and
the norms of the concept vectors built so far (for the strength sliders' help).

- A request names the model (spec, device, dtype), the concept by its recipe (never by its
  vector) and the settings; `dashboard.common.runs.Run` keeps it in session state as a dict of
  plain values, with how far its run got. Results are looked up again on each rerun (a cache
  hit).
- Each long cached function takes an optional `_progress(done, total)` callback (the underscore
  keeps it out of the cache key) and reports (0, 0) first thing, so a `runs.Bar` draws its bar
  inside the call, where Streamlit records it (and replays it, emptied, on a hit).
- Nothing here draws on the page itself; session state gets small plain values only.

    request = TrialRequest(model, ConceptChoice.word("bread"), 20, InjectionSpec(4.0), config)
    run = trial_run(request, _progress=bar)            # a core.sense.introspection.TrialRun
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pandas as pd
import streamlit as st

from core.progress import Progress
from core.sense.concepts import (
    METHODS,
    ConceptLibrary,
    build_contrastive_library,
    build_word_library,
)
from core.sense.introspection import (
    TrialRun,
    mean_residual_norms,
    run_sweep,
    run_trials,
    trial_layout,
)
from core.sense.logit_lens import logit_lens
from core.sense.prefill import run_prefill
from dashboard.common.state import ModelKey, get_model
from dashboard.sense.requests import (
    ConceptChoice,
    PrefillRequest,
    SweepRequest,
    TrialRequest,
    concept_from,
    reply_counts,
    trial_config_from,
)

TRIAL_KEY = "introspection_trial"  # session state: {"request": ..., "status": ...} (runs.Run)
SWEEP_KEY = "introspection_sweep"
PREFILL_KEY = "introspection_prefill"


# ---------------------------------------------------------------------------- vector norms

NORMS_KEY = "intro_vector_norms"  # session state: {model and recipe (JSON): [||v|| per layer]}


def _norms_key(model: ModelKey, concept: ConceptChoice) -> str:
    return json.dumps([list(model), asdict(concept)])


def remember_norms(model: ModelKey, concept: ConceptChoice, library: ConceptLibrary) -> None:
    """Keep ||v|| per layer of a concept just built, so the sliders can say how big a strength
    is without building the vector again."""
    known = dict(st.session_state.get(NORMS_KEY, {}))
    known[_norms_key(model, concept)] = library.norms(concept.name)
    st.session_state[NORMS_KEY] = known


def known_norm(model: ModelKey, concept: ConceptChoice | None, layer: int) -> float | None:
    """||v|| of the concept at `layer` if it was built in this session (None otherwise)."""
    if concept is None:
        return None
    norms = st.session_state.get(NORMS_KEY, {}).get(_norms_key(model, concept))
    return float(norms[layer]) if norms is not None and 0 <= layer < len(norms) else None


# ---------------------------------------------------------------------------- cached results


def _started(progress: Progress | None) -> None:
    """Tell the progress callback that work has begun (it draws its bar at zero)."""
    if progress:
        progress(0, 0)


@st.cache_data(show_spinner=False, max_entries=64)
def concept_library(model: ModelKey, concept: ConceptChoice,
                    _progress: Progress | None = None) -> ConceptLibrary:
    """The concept's vectors at every layer of the model (one batched pass: the word and the
    baseline words, or the contrastive prompts)."""
    _started(_progress)
    loaded = get_model(*model)
    if concept.method == "word":
        return build_word_library(loaded, [concept.name], progress=_progress)
    return build_contrastive_library(loaded, concept.name, concept.positive, concept.negative,
                                     progress=_progress)


@st.cache_data(show_spinner=False, max_entries=8)
def residual_norms(model: ModelKey) -> dict[int, float]:
    """Mean residual norm per layer over the trial prompt (what "relative" scale multiplies)."""
    loaded = get_model(*model)
    text, _ = trial_layout(loaded.tokenizer)
    return mean_residual_norms(loaded, text)


@st.cache_data(show_spinner=False, max_entries=64)
def trial_run(request: TrialRequest, _progress: Progress | None = None) -> TrialRun:
    """`core.sense.introspection.run_trials` for the request: the injected trials and every
    control (the mismatch control injects the request's partner concept)."""
    _started(_progress)
    loaded = get_model(*request.model)
    library = concept_library(request.model, request.concept)
    partner = None
    if request.partner is not None and "mismatch" in request.config.controls:
        partner = concept_library(request.model, request.partner).vector(request.partner.name,
                                                                         request.layer)
    return run_trials(loaded, library.vector(request.concept.name, request.layer), request.spec,
                      request.config, progress=_progress, partner=partner)


@st.cache_data(show_spinner="Reading the logit lens ...", max_entries=64)
def lens_table(request: TrialRequest) -> pd.DataFrame:
    """`core.sense.logit_lens.logit_lens` for the request's concept, layer and injection."""
    loaded = get_model(*request.model)
    library = concept_library(request.model, request.concept)
    return logit_lens(loaded, library.vector(request.concept.name, request.layer), request.spec)


def sweep_library(request: SweepRequest, progress: Progress | None = None) -> ConceptLibrary:
    """Every concept the sweep injects (its partner included) in one library, each built, or
    found, in the cache on its own; `progress` counts concepts."""
    _started(progress)
    partner = request.injected_partner
    concepts = [*request.concepts, *([partner] if partner is not None else [])]
    library: ConceptLibrary | None = None
    for done, concept in enumerate(concepts, start=1):
        one = concept_library(request.model, concept)
        library = one if library is None else library.merge(one)
        if progress:
            progress(done, len(concepts))
    assert library is not None  # a SweepConfig has at least one concept
    return library


@st.cache_data(show_spinner=False, max_entries=16)
def sweep_trials(request: SweepRequest, _progress: Progress | None = None) -> pd.DataFrame:
    """`core.sense.introspection.run_sweep`'s per-trial table (build the concepts first with
    `sweep_library`)."""
    _started(_progress)
    loaded = get_model(*request.model)
    return run_sweep(loaded, sweep_library(request), request.sweep_config(), progress=_progress)


@st.cache_data(show_spinner=False, max_entries=16)
def prefill_replies(request: PrefillRequest, _progress: Progress | None = None) -> pd.DataFrame:
    """`core.sense.prefill.run_prefill`'s per-reply table (it builds the prefilled words'
    vectors)."""
    _started(_progress)
    loaded = get_model(*request.model)
    return run_prefill(loaded, request.prefill_config(), progress=_progress)


__all__ = [  # the requests are re-exported: the page's modules reach everything through here
    "METHODS", "NORMS_KEY", "PREFILL_KEY", "SWEEP_KEY", "TRIAL_KEY", "ConceptChoice",
    "PrefillRequest", "SweepRequest", "TrialRequest", "concept_from", "concept_library",
    "known_norm", "lens_table", "prefill_replies", "remember_norms", "reply_counts",
    "residual_norms", "sweep_library", "sweep_trials", "trial_config_from", "trial_run",
]
