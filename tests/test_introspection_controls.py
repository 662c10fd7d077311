"""The controls of an introspection run on a tiny model: every arm injects what it says where it
says, the arms without injection are as large as the floor and shared, trial i of every arm draws
the same random numbers, the push is reported in residual-norm units, the control table puts each
rate beside its chance, and a journaled sweep resumes."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import core.sense.introspection as intro
from core.runtime.inject import Positions
from core.runtime.models import LoadedModel, wrap_model
from core.sense.arms import ALL_CONTROLS, ARMS, YES_NO_QUESTIONS, arms_for
from core.sense.concepts import ConceptRecipe, ConceptVector, build_word_library
from core.sense.introspection import (
    CONTROL_KEYS,
    QUESTION_START,
    InjectionSpec,
    PromptLayout,
    SweepConfig,
    TrialConfig,
    control_table,
    magnitudes,
    run_sweep,
    run_trials,
    sweep_summary,
)
from core.sense.introspection_grading import rate
from core.sense.introspection_rates import difference_interval
from core.sense.prefill import PrefillConfig, prefill_summary, run_prefill
from tests.tiny_models import HIDDEN, tiny_model, tiny_tokenizer

CHAT = ("{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
        "{% if add_generation_prompt %}w5{% endif %}")
BASELINE = ["w20", "w21", "w22"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@cache
def _loaded() -> LoadedModel:
    return wrap_model(tiny_model("llama"), tiny_tokenizer(CHAT), name="tiny")


def _concept(name: str = "w10", layer: int = 2, seed: int = 3, scale: float = 1.0
             ) -> ConceptVector:
    vector = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed)) * scale
    return ConceptVector(ConceptRecipe(name, "word", (name,), ("w20",)), vector, "tiny", layer)


def _config(n: int = 2, floor: int = 3, controls: tuple[str, ...] = ALL_CONTROLS,
            batch: int = 2, tokens: int = 3) -> TrialConfig:
    return TrialConfig(n_trials=n, max_new_tokens=tokens, batch_size=batch, controls=controls,
                       min_none_trials=floor)


# ------------------------------------------------------------------ arms


def test_arms_of_each_control() -> None:
    assert [a.name for a in arms_for(())] == ["injected"]
    assert [a.name for a in arms_for(ALL_CONTROLS)] == [
        "injected", "none", "random", "negated", "generation_only", "yes_no", "yes_no_none",
        "named", "mismatch"]
    assert [a.name for a in arms_for(("mismatch", "none"))] == [
        "injected", "none", "named", "mismatch"]
    assert {name for name, arm in ARMS.items() if arm.shared} == {"none", "yes_no_none"}
    with pytest.raises(ValueError, match="Unknown control 'shuffled'"):
        arms_for(("shuffled",))


def test_every_arm_injects_its_vector_at_its_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[torch.Tensor, float, Positions]] = []
    real = intro.inject_residual

    def spy(model: Any, layer: int, vector: torch.Tensor, strength: float = 1.0,
            positions: Positions | None = None, layer_path: str | None = None) -> Any:
        assert layer == 2
        seen.append((vector.clone(), strength, positions or Positions.all()))
        return real(model, layer, vector, strength, positions, layer_path)

    monkeypatch.setattr(intro, "inject_residual", spy)
    concept, partner = _concept(), _concept("w11", seed=9, scale=3.0)
    run = run_trials(_loaded(), concept, InjectionSpec(2.5), _config(n=2, batch=2), partner=partner)
    table = run.trials
    counts = table["condition"].value_counts().to_dict()
    assert counts == {"injected": 2, "none": 3, "random": 2, "negated": 2, "generation_only": 2,
                      "yes_no": 2, "yes_no_none": 3, "named": 2, "mismatch": 2}
    # one batch per injected arm (the yes/no questions are as long as each other); none: nothing
    v = concept.vector
    assert len(seen) == 7 and all(s == 2.5 for _, s, _ in seen)
    (injected, p1), (random, _), (negated, _), (generation_only, p4), (yes_no, p5), \
        (named, _), (mismatch, _) = [(vec, pos) for vec, _, pos in seen]
    assert torch.equal(injected, v) and torch.equal(negated, -v)
    assert torch.isclose(random.norm(), v.norm())
    assert torch.equal(generation_only, v) and p4 == Positions.generated()
    assert p1.kind == "from" and p5.kind == "from"
    assert torch.equal(yes_no, v) and torch.equal(named, v)
    torch.testing.assert_close(mismatch, partner.vector / partner.norm * concept.norm)


def test_trials_with_windows_at_other_distances_get_their_own_batches() -> None:
    short, long = PromptLayout((1, 2, 3), start=1), PromptLayout((1, 2, 3, 4, 5), start=3)
    shifted = PromptLayout((1, 2, 3, 4, 5), start=2)
    assert intro._same_windows([short, shifted, long, short]) == [[0, 2, 3], [1]]
    assert intro._same_windows([PromptLayout((1, 2, 3), 0, 2), PromptLayout((1, 2, 3), 0, 3)]) \
        == [[0], [1]]


def test_mismatch_injects_the_partner_at_the_concepts_norm(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []
    real = intro.inject_residual

    def spy(model: Any, layer: int, vector: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append(vector.clone())
        return real(model, layer, vector, *args, **kwargs)

    monkeypatch.setattr(intro, "inject_residual", spy)
    concept, partner = _concept(), _concept("w11", seed=9, scale=3.0)
    run = run_trials(_loaded(), concept, InjectionSpec(1.0), _config(controls=("mismatch",)),
                     partner=partner)
    named, mismatch = seen[1], seen[2]
    assert torch.equal(named, concept.vector)
    torch.testing.assert_close(mismatch, partner.vector / partner.norm * concept.norm)
    rows = run.trials.set_index("condition")
    assert set(rows.loc["mismatch", "injected"]) == {"w11"}
    assert set(rows.loc["named", "question"]) == {
        "Do you detect an injected thought about w10?"}
    assert run.partner == "w11"


def test_questions_of_the_yes_no_arms_are_paired() -> None:
    run = run_trials(_loaded(), _concept(), InjectionSpec(1.0),
                     _config(n=7, floor=7, controls=("yes_no",), batch=4))
    for arm in ("yes_no", "yes_no_none"):
        rows = run.trials[run.trials["condition"] == arm].sort_values("trial")
        assert list(rows["trial"]) == list(range(7))
        assert list(rows["question"]) == [
            YES_NO_QUESTIONS[i % len(YES_NO_QUESTIONS)] + " Answer yes or no." for i in range(7)]
        assert rows["affirmative"].isna().all() and rows["answer_yes"].map(
            lambda x: x in (True, False, None)).all()


def test_controls_that_cannot_run_are_refused() -> None:
    with pytest.raises(ValueError, match="second concept"):
        run_trials(_loaded(), _concept(), InjectionSpec(1.0), _config(controls=("mismatch",)))
    with pytest.raises(ValueError, match="generation_only"):
        run_trials(_loaded(), _concept(), InjectionSpec(1.0, positions="generated"),
                   _config(controls=("generation_only",)))
    with pytest.raises(ValueError, match="min_none_trials"):
        TrialConfig(min_none_trials=0)
    with pytest.raises(ValueError, match="partner"):
        SweepConfig(("w10",), (1,), (1.0,), trials=_config(controls=("mismatch",)))


# ------------------------------------------------------------------ size of the plain arms


def test_the_arms_without_injection_get_the_floor_or_n() -> None:
    assert TrialConfig(n_trials=10).n_shared == 100
    assert TrialConfig(n_trials=150).n_shared == 150
    run = run_trials(_loaded(), _concept(), InjectionSpec(1.0),
                     _config(n=2, floor=5, controls=("none",)))
    assert run.trials["condition"].value_counts().to_dict() == {"injected": 2, "none": 5}
    assert run.summary()["n_none"] == 5


# ------------------------------------------------------------------ pairing


def test_trial_i_of_every_arm_shares_its_random_numbers() -> None:
    """At strength 0 an injected arm is the plain arm: with paired draws its replies are the
    plain arm's, trial for trial, whatever the batch size."""
    loaded, concept = _loaded(), _concept()
    controls = ("none", "random", "negated", "yes_no")
    zero = run_trials(loaded, concept, InjectionSpec(0.0), _config(4, 6, controls, 4, 6)).trials
    by_arm = {arm: list(g.sort_values("trial")["reply"]) for arm, g in zero.groupby("condition")}
    assert by_arm["injected"] == by_arm["none"][:4] == by_arm["random"] == by_arm["negated"]
    assert by_arm["yes_no"] == by_arm["yes_no_none"][:4]
    ones = run_trials(loaded, concept, InjectionSpec(0.0), _config(4, 6, controls, 1, 6)).trials
    assert list(ones["reply"]) == list(zero["reply"])
    pushed = run_trials(loaded, concept, InjectionSpec(40.0), _config(4, 6, controls, 4, 6)).trials
    assert list(pushed[pushed["condition"] == "none"]["reply"]) == by_arm["none"]
    assert list(pushed[pushed["condition"] == "injected"]["reply"]) != by_arm["injected"]


# ------------------------------------------------------------------ strength units


def test_magnitudes_in_residual_norm_units() -> None:
    loaded, concept = _loaded(), _concept()
    raw = run_trials(loaded, concept, InjectionSpec(3.0), _config(controls=("none",)))
    assert raw.effective_magnitude == pytest.approx(3.0 * concept.norm)
    assert raw.relative_magnitude == pytest.approx(3.0 * concept.norm / raw.mean_residual_norm)
    rows = raw.trials.set_index("condition")
    assert list(rows.loc["injected", "effective_magnitude"]) == pytest.approx(
        [raw.effective_magnitude] * 2)
    assert set(rows.loc["none", "effective_magnitude"]) == {0.0}
    relative = run_trials(loaded, concept, InjectionSpec(0.5, scale="relative"),
                          _config(controls=()))
    assert relative.relative_magnitude == pytest.approx(0.5)
    assert relative.trials["relative_magnitude"].iloc[0] == pytest.approx(0.5)
    assert magnitudes(None, 4.0, 10.0) == (0.0, 0.0)
    assert magnitudes(torch.ones(4), -2.0, 8.0) == (pytest.approx(4.0), pytest.approx(0.5))


# ------------------------------------------------------------------ rates beside their chance


def _rows(condition: str, hits: list[bool], column: str = "detected",
          setting: tuple[Any, Any, Any] = (2, 4.0, "bread")) -> list[dict[str, Any]]:
    layer, strength, concept = setting
    return [{"concept": concept, "layer": layer, "strength": strength, "positions": "window",
             "condition": condition, "trial": i, "coherent": True, column: hit,
             "identified": False, "injected": concept, "effective_magnitude": 8.0,
             "relative_magnitude": 0.25} for i, hit in enumerate(hits)]


def test_control_table_by_hand() -> None:
    shared = (None, None, None)
    trials = pd.DataFrame([
        *_rows("none", [True, False, False, False], setting=shared),
        *_rows("yes_no_none", [True, False, False, False], "answer_yes", shared),
        *_rows("injected", [True, False]),
        *_rows("yes_no", [True, True], "answer_yes"),
        *_rows("named", [True, True]),
        *_rows("mismatch", [True, False]),
    ])
    table = control_table(trials)
    assert list(table.columns) == CONTROL_KEYS
    assert list(table["control"]) == ["none", "yes_no_none", "injected", "yes_no", "named",
                                      "mismatch"]
    rows = table.set_index("control")
    assert rows.loc["none", "n"] == 4 and rows.loc["none", "rate"] == 0.25
    assert pd.isna(rows.loc["none", "layer"]) and pd.isna(rows.loc["none", "reference"])
    assert rows.loc["injected", "reference"] == "none"
    assert rows.loc["injected", "reference_rate"] == 0.25
    d, lo, hi = difference_interval(rate(1, 2), rate(1, 4))
    assert (rows.loc["injected", "difference"], rows.loc["injected", "difference_lo"],
            rows.loc["injected", "difference_hi"]) == (pytest.approx(d), pytest.approx(lo),
                                                       pytest.approx(hi))
    assert rows.loc["yes_no", "measure"] == "yes" and rows.loc["yes_no", "rate"] == 1.0
    assert rows.loc["yes_no", "reference_rate"] == 0.25
    assert pd.isna(rows.loc["yes_no", "identification"])
    assert rows.loc["named", "reference"] == "mismatch"
    assert rows.loc["named", "reference_rate"] == 0.5
    assert rows.loc["injected", "relative_magnitude"] == 0.25
    summary = sweep_summary(trials)
    assert len(summary) == 1
    row = summary.iloc[0]
    assert (row["false_positive"], row["n_none"], row["yes_no_yes"], row["yes_no_none_yes"],
            row["named_detection"], row["mismatch_detection"]) == (0.25, 4, 1.0, 0.25, 1.0, 0.5)
    assert row["generation_only_n"] == 0 and row["generation_only_detection"] is None


def test_newcombe_difference_by_hand() -> None:
    a, b = rate(7, 20), rate(2, 25)
    d, lo, hi = difference_interval(a, b)
    assert d == pytest.approx(0.35 - 0.08)
    assert lo == pytest.approx(d - math.sqrt((a.p - a.lo) ** 2 + (b.hi - b.p) ** 2))
    assert hi == pytest.approx(d + math.sqrt((a.hi - a.p) ** 2 + (b.p - b.lo) ** 2))
    assert lo < d < hi
    assert difference_interval(rate(0, 0), b) == (None, None, None)


# ------------------------------------------------------------------ sweeps


def test_sweep_shares_the_plain_arms_and_pairs_the_partners() -> None:
    loaded = _loaded()
    library = build_word_library(loaded, ["w10", "w11"], [1, 2], baseline=BASELINE)
    config = SweepConfig(("w10", "w11"), (1, 2), (1.0,),
                         trials=_config(n=2, floor=3, controls=ALL_CONTROLS))
    assert config.partner_of("w10") == "w11" and config.partner_of("w11") == "w10"
    trials = run_sweep(loaded, library, config)
    counts = trials["condition"].value_counts().to_dict()
    assert counts["none"] == 3 and counts["yes_no_none"] == 3
    assert counts["injected"] == 2 * 4 and counts["mismatch"] == 2 * 4
    assert trials[trials["condition"] == "none"]["layer"].isna().all()
    mismatch = trials[trials["condition"] == "mismatch"]
    assert set(zip(mismatch["concept"], mismatch["injected"], strict=True)) == {
        ("w10", "w11"), ("w11", "w10")}
    table = control_table(trials)
    assert set(table["control"]) == set(ARMS)
    assert (table[table["control"] == "injected"]["reference_n"] == 3).all()
    one = SweepConfig(("w10",), (1,), (1.0,), trials=_config(controls=("mismatch",)),
                      partner="w11")
    assert one.partner_of("w10") == "w11" and one.needed_concepts() == ["w10", "w11"]


def test_a_journaled_sweep_resumes_with_the_same_table(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _loaded()
    library = build_word_library(loaded, ["w10", "w11"], [1], baseline=BASELINE)
    config = SweepConfig(("w10", "w11"), (1,), (2.0,),
                         trials=_config(n=2, floor=2, controls=("none", "mismatch")))
    journal = tmp_path / "sweep.journal.jsonl"
    first = run_sweep(loaded, library, config, journal=journal)
    lines = journal.read_text().splitlines()
    assert json.loads(lines[0])["settings"]["model"] == "tiny"
    assert len(lines) == 1 + len(first)

    calls: list[int] = []
    real = intro.generate_replies

    def counting(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(intro, "generate_replies", counting)
    again = run_sweep(loaded, library, config, journal=journal)
    assert calls == [] and again.equals(first)
    # an interrupted run: the last batch and a line cut midway
    journal.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:10])
    resumed = run_sweep(loaded, library, config, journal=journal)
    assert len(calls) == 1 and resumed.equals(first)
    other = SweepConfig(("w10", "w11"), (1,), (2.0,),
                        trials=TrialConfig(n_trials=2, max_new_tokens=4, min_none_trials=2))
    with pytest.raises(ValueError, match="sweep.journal.jsonl belongs to a run with other"):
        run_sweep(loaded, library, other, journal=journal)


# ------------------------------------------------------------------ prefill


def test_prefill_pairs_its_trials_and_puts_the_plain_rate_beside() -> None:
    loaded = _loaded()
    items = (("w30 w31", "w40"), ("w32 w33 w34", "w41"))
    library = build_word_library(loaded, ["w40", "w41"], [1], baseline=BASELINE)
    zero = PrefillConfig(layers=(1,), strength=0.0, items=items,
                         trials=TrialConfig(n_trials=3, max_new_tokens=4, controls=()))
    replies = run_prefill(loaded, zero, library)
    for condition in ("matching", "random"):
        assert list(replies[replies["condition"] == condition]["reply"]) == list(
            replies[replies["condition"] == "none"]["reply"])
    forced = replies.assign(apologizes=replies["condition"].eq("none") & (replies["trial"] < 2))
    summary = prefill_summary(forced).set_index("condition")
    none = forced[forced["condition"] == "none"]
    chance = rate(int(none["apologizes"].sum()), len(none))
    matching = forced[forced["condition"] == "matching"]
    own = rate(int(matching["apologizes"].sum()), len(matching))
    assert (own.p, chance.p) == (0.0, pytest.approx(4 / 6))
    assert summary.loc["matching", "difference"] == pytest.approx(-4 / 6)
    assert pd.isna(summary.loc["none", "difference"])
    assert QUESTION_START.endswith("Trial 1: ")
