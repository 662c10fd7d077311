"""What the Introspection page keeps between reruns: its requests (small values in session
state) and its results (`st.cache_data`, keyed on the model and every setting).

- A request names the model (spec, device, dtype), the concept by its recipe (never by its
  vector) and the settings; `dashboard.common.runs.Run` keeps it in session state as a dict of
  plain values, with how far its run got. Results are looked up again on each rerun (a cache
  hit).
- Each long cached function takes an optional `_progress(done, total)` callback (the underscore
  keeps it out of the cache key) and reports (0, 0) first thing, so a `runs.Bar` draws its bar
  inside the call, where Streamlit records it (and replays it, emptied, on a hit).
- Nothing here draws on the page itself.

    request = TrialRequest(model, ConceptChoice.word("bread"), 20, InjectionSpec(4.0), config)
    run = trial_run(request, _progress=bar)            # a core.sense.introspection.TrialRun
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import streamlit as st

from core.progress import Progress
from core.sense.arms import arms_for
from core.sense.concepts import (
    METHODS,
    ConceptLibrary,
    build_contrastive_library,
    build_word_library,
    caps_pairs,
    check_method,
)
from core.sense.introspection import (
    InjectionSpec,
    SweepConfig,
    TrialConfig,
    TrialRun,
    mean_residual_norms,
    run_sweep,
    run_trials,
    trial_layout,
)
from core.sense.logit_lens import logit_lens
from core.sense.prefill import PrefillConfig, run_prefill
from dashboard.common.state import ModelKey, get_model, model_key

TRIAL_KEY = "introspection_trial"  # session state: {"request": ..., "status": ...} (runs.Run)
SWEEP_KEY = "introspection_sweep"
PREFILL_KEY = "introspection_prefill"


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class ConceptChoice:
    """A concept by its recipe: the word method (`positive` = (word,), baseline = the core's
    BASELINE_WORDS) or a contrastive pair of prompt lists."""

    name: str
    method: str = "word"
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_method(self.method)
        if not self.name.strip():
            raise ValueError("Type a concept: a word, or a name for the contrastive pair.")
        if self.method == "contrastive" and not (
                any(p.strip() for p in self.positive) and any(n.strip() for n in self.negative)):
            raise ValueError(f"The contrastive concept '{self.name}' needs at least one positive "
                             "and one negative prompt.")

    @classmethod
    def word(cls, word: str) -> ConceptChoice:
        word = word.strip()
        return cls(word, "word", (word,), ())

    @classmethod
    def caps(cls, name: str, texts: list[str]) -> ConceptChoice:
        """The ALL-CAPS contrast: the texts in upper case against the texts as given."""
        positive, negative = caps_pairs([t for t in texts if t.strip()])
        return cls(name.strip(), "contrastive", tuple(positive), tuple(negative))

    @property
    def label(self) -> str:
        if self.method == "word":
            return f"'{self.name}' (word method)"
        return (f"'{self.name}' (contrastive: {len(self.positive)} positive, "
                f"{len(self.negative)} negative prompts)")


def _tuples(value: Any) -> Any:
    """Lists (as session state and JSON hold them) back into tuples, recursively."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def concept_from(value: Mapping[str, Any]) -> ConceptChoice:
    return ConceptChoice(str(value["name"]), str(value["method"]),
                         tuple(map(str, value["positive"])), tuple(map(str, value["negative"])))


def trial_config_from(value: Mapping[str, Any]) -> TrialConfig:
    return TrialConfig(**{k: _tuples(v) for k, v in value.items()})


@dataclass(frozen=True)
class TrialRequest:
    """One "Run trial": the concept at `layer`, injected as `spec` says, with `config`'s trials
    and controls."""

    model: ModelKey
    concept: ConceptChoice
    layer: int
    spec: InjectionSpec
    config: TrialConfig

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, value: Any) -> TrialRequest | None:
        try:
            return cls(model_key(value["model"]), concept_from(value["concept"]),
                       int(value["layer"]), InjectionSpec(**value["spec"]),
                       trial_config_from(value["config"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class SweepRequest:
    """One "Run sweep": layers x strengths x concepts, with the trials and controls of
    `trials`."""

    model: ModelKey
    concepts: tuple[ConceptChoice, ...]
    layers: tuple[int, ...]
    strengths: tuple[float, ...]
    scale: str = "raw"
    positions: str = "window"
    trials: TrialConfig = TrialConfig(n_trials=4)

    def __post_init__(self) -> None:
        names = [c.name for c in self.concepts]
        if len(set(names)) != len(names):
            raise ValueError("Two concepts of the sweep share a name; give each its own.")
        self.sweep_config()  # checks the rest

    def sweep_config(self) -> SweepConfig:
        return SweepConfig(tuple(c.name for c in self.concepts), self.layers, self.strengths,
                           self.scale, self.positions, self.trials)

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, value: Any) -> SweepRequest | None:
        try:
            return cls(model_key(value["model"]),
                       tuple(concept_from(c) for c in value["concepts"]),
                       tuple(int(x) for x in value["layers"]),
                       tuple(float(x) for x in value["strengths"]), str(value["scale"]),
                       str(value["positions"]), trial_config_from(value["trials"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class PrefillRequest:
    """One "Run prefill": the experiment's layers, injection strength and scale, and sampling
    (the core's own sentence items)."""

    model: ModelKey
    layers: tuple[int, ...]
    strength: float = 4.0
    scale: str = "raw"
    trials: TrialConfig = TrialConfig(n_trials=2, max_new_tokens=40, controls=())

    def __post_init__(self) -> None:
        self.prefill_config()  # checks the settings

    def prefill_config(self) -> PrefillConfig:
        return PrefillConfig(self.layers, self.strength, self.scale, trials=self.trials)

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, value: Any) -> PrefillRequest | None:
        try:
            return cls(model_key(value["model"]),
                       tuple(int(x) for x in value["layers"]), float(value["strength"]),
                       str(value["scale"]), trial_config_from(value["trials"]))
        except (KeyError, TypeError, ValueError):
            return None


def reply_counts(trials: TrialConfig) -> tuple[int, int]:
    """(replies of the arms without injection, sampled once per run; replies per injected
    setting), as `core.sense.introspection` samples them (`arms_for`, `TrialConfig.n_for`)."""
    arms = arms_for(trials.controls)
    return (sum(trials.n_for(a) for a in arms if a.shared),
            sum(trials.n_for(a) for a in arms if not a.shared))


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
    control."""
    _started(_progress)
    loaded = get_model(*request.model)
    library = concept_library(request.model, request.concept)
    return run_trials(loaded, library.vector(request.concept.name, request.layer), request.spec,
                      request.config, progress=_progress)


@st.cache_data(show_spinner="Reading the logit lens ...", max_entries=64)
def lens_table(request: TrialRequest) -> pd.DataFrame:
    """`core.sense.logit_lens.logit_lens` for the request's concept, layer and injection."""
    loaded = get_model(*request.model)
    library = concept_library(request.model, request.concept)
    return logit_lens(loaded, library.vector(request.concept.name, request.layer), request.spec)


def sweep_library(request: SweepRequest, progress: Progress | None = None) -> ConceptLibrary:
    """Every concept of the sweep in one library (each built, or found, in the cache on its own;
    `progress` counts concepts)."""
    _started(progress)
    library: ConceptLibrary | None = None
    for done, concept in enumerate(request.concepts, start=1):
        one = concept_library(request.model, concept)
        library = one if library is None else library.merge(one)
        if progress:
            progress(done, len(request.concepts))
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


__all__ = [
    "METHODS", "PREFILL_KEY", "SWEEP_KEY", "TRIAL_KEY", "ConceptChoice", "PrefillRequest",
    "SweepRequest", "TrialRequest", "concept_from", "concept_library", "lens_table",
    "prefill_replies", "reply_counts", "residual_norms", "sweep_library", "sweep_trials",
    "trial_config_from", "trial_run",
]
