"""The Introspection page's requests: what one "Run trial", "Run sweep" or "Run prefill" asks
for, as frozen dataclasses that go to and from small plain values (session state holds them as
dicts; `dashboard.common.runs.Run` keeps them there). A concept is named by its recipe, never by
its vector. Nothing here draws on the page or touches a model.

    request = TrialRequest(model, ConceptChoice.word("bread"), 20, InjectionSpec(4.0), config)
    TrialRequest.from_state(json.loads(json.dumps(request.to_state()))) == request
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from core.sense.arms import arms_for
from core.sense.concepts import caps_pairs, check_method
from core.sense.introspection import InjectionSpec, SweepConfig, TrialConfig
from core.sense.prefill import PrefillConfig
from dashboard.common.state import ModelKey, model_key


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


def partner_from(value: Any) -> ConceptChoice | None:
    return None if value is None else concept_from(value)


def trial_config_from(value: Mapping[str, Any]) -> TrialConfig:
    return TrialConfig(**{k: _tuples(v) for k, v in value.items()})


def check_partner(concepts: tuple[ConceptChoice, ...], partner: ConceptChoice | None,
                  controls: tuple[str, ...]) -> None:
    """The mismatch control injects another concept while asking about the first: a run of one
    concept needs that `partner`, and it must be another concept."""
    if "mismatch" not in controls:
        return
    if partner is None and len(concepts) < 2:
        raise ValueError("The mismatch control needs a second concept to inject: choose one.")
    if partner is not None and len(concepts) == 1 and partner.name == concepts[0].name:
        raise ValueError("The mismatched concept must differ from the concept asked about.")


@dataclass(frozen=True)
class TrialRequest:
    """One "Run trial": the concept at `layer`, injected as `spec` says, with `config`'s trials
    and controls; `partner` is the concept the mismatch control injects (None without it)."""

    model: ModelKey
    concept: ConceptChoice
    layer: int
    spec: InjectionSpec
    config: TrialConfig
    partner: ConceptChoice | None = None

    def __post_init__(self) -> None:
        check_partner((self.concept,), self.partner, self.config.controls)
        if "generation_only" in self.config.controls and self.spec.positions == "generated":
            raise ValueError("The generation-only control injects on the generated tokens "
                             "only, which is this trial's own setting: drop one of them.")

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, value: Any) -> TrialRequest | None:
        try:
            return cls(model_key(value["model"]), concept_from(value["concept"]),
                       int(value["layer"]), InjectionSpec(**value["spec"]),
                       trial_config_from(value["config"]), partner_from(value.get("partner")))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class SweepRequest:
    """One "Run sweep": layers x strengths x concepts, with the trials and controls of
    `trials`; `partner` is the concept the mismatch control injects when the sweep has one
    concept (with more, concept k's mismatch injects concept k+1)."""

    model: ModelKey
    concepts: tuple[ConceptChoice, ...]
    layers: tuple[int, ...]
    strengths: tuple[float, ...]
    scale: str = "raw"
    positions: str = "window"
    trials: TrialConfig = TrialConfig(n_trials=4)
    partner: ConceptChoice | None = None

    def __post_init__(self) -> None:
        names = [c.name for c in self.concepts]
        if len(set(names)) != len(names):
            raise ValueError("Two concepts of the sweep share a name; give each its own.")
        check_partner(self.concepts, self.partner, self.trials.controls)
        self.sweep_config()  # checks the rest

    @property
    def injected_partner(self) -> ConceptChoice | None:
        """The partner the sweep injects (only a one-concept sweep with the mismatch control)."""
        if len(self.concepts) > 1 or "mismatch" not in self.trials.controls:
            return None
        return self.partner

    def sweep_config(self) -> SweepConfig:
        partner = self.injected_partner
        return SweepConfig(tuple(c.name for c in self.concepts), self.layers, self.strengths,
                           self.scale, self.positions, self.trials,
                           None if partner is None else partner.name)

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, value: Any) -> SweepRequest | None:
        try:
            return cls(model_key(value["model"]),
                       tuple(concept_from(c) for c in value["concepts"]),
                       tuple(int(x) for x in value["layers"]),
                       tuple(float(x) for x in value["strengths"]), str(value["scale"]),
                       str(value["positions"]), trial_config_from(value["trials"]),
                       partner_from(value.get("partner")))
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
