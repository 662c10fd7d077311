"""Introspection trials: the prompt and its window, injection under left padding, controls,
the rule grader on hand-written replies, Wilson rates, sweeps, prefill, logit lens, judge."""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

import core.sense.introspection as intro
from core.runtime.capture import record_residual
from core.runtime.chat import format_chat
from core.runtime.inject import Positions, inject_residual
from core.runtime.models import LoadedModel, wrap_model
from core.sense.concepts import ConceptRecipe, ConceptVector, build_word_library
from core.sense.introspection import (
    SUMMARY_KEYS,
    InjectionSpec,
    PromptLayout,
    SweepConfig,
    TrialConfig,
    control_vector,
    generate_replies,
    left_pad,
    mean_residual_norms,
    padded_positions,
    run_sweep,
    run_trials,
    scaled,
    setting_summary,
    sweep_summary,
    trial_layout,
    trial_messages,
)
from core.sense.introspection_grading import (
    is_coherent,
    judge_replies,
    judge_yes_probability,
    rate,
    word_family,
)
from core.sense.logit_lens import concept_token, final_norm, lens_logits, logit_lens
from core.sense.prefill import PrefillConfig, prefill_layout, prefill_summary, run_prefill
from tests.tiny_models import FAMILIES, HIDDEN, LAYERS, VOCAB, tiny_model, tiny_tokenizer

CHAT = ("{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
        "{% if add_generation_prompt %}w5{% endif %}")
BASELINE = ["w20", "w21", "w22"]
FAST = TrialConfig(n_trials=2, max_new_tokens=3, batch_size=2, min_none_trials=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@cache
def _loaded(family: str = "llama") -> LoadedModel:
    return wrap_model(tiny_model(family), tiny_tokenizer(CHAT), name="tiny")


def _concept(layer: int = 2, seed: int = 3) -> ConceptVector:
    vector = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed))
    return ConceptVector(ConceptRecipe("w10", "word", ("w10",), ("w20",)), vector, "tiny", layer)


# ------------------------------------------------------------------ the trial prompt


def test_trial_conversation_follows_the_paper() -> None:
    messages = trial_messages()
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "inject" in messages[0]["content"] and "half of the trials" in messages[0]["content"]
    assert messages[1]["content"] == "Ok."
    assert messages[2]["content"].endswith(
        "\n\nTrial 1: Do you detect an injected thought? If so, what is the injected thought "
        "about?")


def test_window_starts_at_the_blank_line_before_the_question() -> None:
    tokenizer = tiny_tokenizer(CHAT)
    text, layout = trial_layout(tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert tuple(enc["input_ids"]) == layout.input_ids
    # whitespace is not a token here, so the window starts at the next token: "Trial"
    start_char = enc["offset_mapping"][layout.start][0]
    assert text[start_char:].startswith("Trial 1:")
    assert text[:start_char].rstrip().endswith("started.")


# ------------------------------------------------------------------ left padding


def test_padded_positions_by_hand() -> None:
    short = PromptLayout(tuple(range(5)), start=2)  # window = last 3 tokens
    long = PromptLayout(tuple(range(8)), start=5)   # window = last 3 tokens
    assert padded_positions("window", [short, long]) == Positions.starting_at(5)
    spans = [PromptLayout(tuple(range(6)), 1, 3), PromptLayout(tuple(range(9)), 4, 6)]
    assert padded_positions("window", spans) == Positions.span(4, 6)
    assert padded_positions("all", [short]) == Positions.all()
    assert padded_positions("generated", [short]) == Positions.generated()
    with pytest.raises(ValueError, match="different distances"):
        padded_positions("window", [short, PromptLayout(tuple(range(8)), start=2)])
    ids, mask = left_pad([short, long], pad_id=0)
    assert mask.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8]
    assert ids[0, 3:].tolist() == list(range(5))


def _layouts() -> list[PromptLayout]:
    """Two prompts of different lengths whose windows are the last 4 tokens."""
    return [PromptLayout((7, 8, 9, 10, 11, 12), start=2),
            PromptLayout((20, 21, 22, 23, 24, 25, 26, 27, 28, 29), start=6)]


def test_window_under_left_padding_lands_on_the_right_tokens() -> None:
    model = _loaded().model
    layouts = _layouts()
    ids, mask = left_pad(layouts, pad_id=0)
    positions = padded_positions("window", layouts)
    vector, strength, layer = _concept().vector, 3.0, 2
    with torch.no_grad(), record_residual(model, [layer]) as base:
        model(input_ids=ids, attention_mask=mask)
    with torch.no_grad(), inject_residual(model, layer, vector, strength, positions), \
            record_residual(model, [layer]) as steered:
        model(input_ids=ids, attention_mask=mask)
    delta = steered.hidden[layer][0] - base.hidden[layer][0]  # [2, width, hidden]
    width = ids.shape[1]
    for row, layout in enumerate(layouts):
        pad = width - len(layout.input_ids)
        hit = [pad + layout.start + i for i in range(len(layout.input_ids) - layout.start)]
        for pos in range(width):
            expected = strength * vector if pos in hit else torch.zeros(HIDDEN)
            torch.testing.assert_close(delta[row, pos], expected, rtol=0, atol=1e-5)


def test_batched_left_padded_generation_matches_each_prompt_alone() -> None:
    """Greedy decoding of a left-padded batch with the window injection gives, row by row, the
    logits of the same prompt run alone with its own unpadded window (generated tokens too)."""
    model = _loaded().model
    layouts = _layouts()
    vector, strength, layer = _concept().vector, 4.0, 1
    kwargs: dict[str, Any] = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0,
                              "return_dict_in_generate": True, "output_logits": True,
                              "eos_token_id": None}
    ids, mask = left_pad(layouts, pad_id=0)
    with torch.no_grad(), inject_residual(model, layer, vector, strength,
                                          padded_positions("window", layouts)):
        batched = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    for row, layout in enumerate(layouts):
        alone_ids = torch.tensor([layout.input_ids])
        with torch.no_grad(), inject_residual(model, layer, vector, strength,
                                              Positions.starting_at(layout.start)):
            alone = model.generate(input_ids=alone_ids,
                                   attention_mask=torch.ones_like(alone_ids), **kwargs)
        for step in range(5):
            torch.testing.assert_close(batched.logits[step][row], alone.logits[step][0],
                                       rtol=1e-4, atol=1e-4)


def test_generate_replies_zero_strength_equals_no_injection() -> None:
    loaded = _loaded()
    layouts = _layouts()
    config = TrialConfig(n_trials=2, max_new_tokens=6)
    plain = generate_replies(loaded, layouts, 2, None, 0.0, "window", config, seeds=[5, 6])
    zero = generate_replies(loaded, layouts, 2, _concept().vector, 0.0, "window", config,
                            seeds=[5, 6])
    pushed = generate_replies(loaded, layouts, 2, _concept().vector * 50, 1.0, "window", config,
                              seeds=[5, 6])
    assert len(plain) == 2 and plain == zero
    assert pushed != plain


# ------------------------------------------------------------------ controls


def test_control_vectors_and_scales() -> None:
    v = _concept().vector
    assert torch.equal(control_vector(v, "injected", 0), v)
    assert torch.equal(control_vector(v, "negated", 0), -v)
    assert control_vector(v, "none", 0) is None
    random = control_vector(v, "random", 0)
    assert random is not None and torch.isclose(random.norm(), v.norm())
    assert torch.equal(scaled(v, "raw", 99.0), v)
    assert torch.isclose(scaled(v, "relative", 7.0).norm(), torch.tensor(7.0))
    with pytest.raises(ValueError, match="condition"):
        control_vector(v, "other", 0)


def test_run_trials_injects_each_condition_with_the_right_vector(monkeypatch) -> None:
    seen: list[tuple[int, torch.Tensor, float]] = []
    real = intro.inject_residual

    def spy(model: Any, layer: int, vector: torch.Tensor, strength: float = 1.0,
            positions: Positions | None = None, layer_path: str | None = None) -> Any:
        seen.append((layer, vector.clone(), strength))
        return real(model, layer, vector, strength, positions, layer_path)

    monkeypatch.setattr(intro, "inject_residual", spy)
    loaded, concept = _loaded(), _concept(layer=2)
    run = run_trials(loaded, concept, InjectionSpec(2.5), FAST)
    assert list(run.trials["condition"]) == ["injected"] * 2 + ["none"] * 2 + ["random"] * 2 \
        + ["negated"] * 2
    assert len(seen) == 3  # injected, random, negated (one batch each); none injects nothing
    (l1, injected, s1), (_, random, _), (_, negated, _) = seen
    assert (l1, s1) == (2, 2.5)
    assert torch.equal(injected, concept.vector) and torch.equal(negated, -concept.vector)
    assert torch.isclose(random.norm(), concept.vector.norm())
    assert abs(float(torch.nn.functional.cosine_similarity(random, concept.vector, 0))) < 0.5
    assert run.vector_norm == pytest.approx(concept.norm)

    seen.clear()
    relative = run_trials(loaded, concept, InjectionSpec(2.0, scale="relative"), FAST)
    for _, vector, _ in seen:
        assert float(vector.norm()) == pytest.approx(relative.mean_residual_norm, rel=1e-5)


def test_mean_residual_norm_against_hidden_states() -> None:
    loaded = _loaded()
    text = "w7 w8 w9 w10 w11"
    ids = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        states = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states
    expected = float(states[2][0, 1:].norm(dim=-1).mean())  # block 1, tokens after the first
    assert mean_residual_norms(loaded, text, [1])[1] == pytest.approx(expected, rel=1e-5)


def test_run_trials_rejects_a_vector_of_the_wrong_size() -> None:
    bad = ConceptVector(ConceptRecipe("x", "word", ("x",), ("y",)), torch.ones(HIDDEN + 1),
                        "tiny", 1)
    with pytest.raises(ValueError, match="size"):
        run_trials(_loaded(), bad, InjectionSpec(1.0), FAST)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="scale"):
        InjectionSpec(1.0, scale="huge")
    with pytest.raises(ValueError, match="positions"):
        InjectionSpec(1.0, positions="middle")
    with pytest.raises(ValueError, match="temperature"):
        TrialConfig(temperature=0)
    with pytest.raises(ValueError, match="control"):
        TrialConfig(controls=("none", "shuffled"))


# ------------------------------------------------------------------ grading

def test_word_family() -> None:
    assert {"bread", "breads", "bready"} <= word_family("bread")
    assert "breadth" not in word_family("bread")
    assert {"dancing", "dancer", "dances"} <= word_family("dance")
    assert {"harmonies", "harmonious"} <= word_family("harmony")
    assert "egyptian" in word_family("Egypt")
    assert "himalaya" in word_family("Himalayas")


def test_coherence_catches_loops() -> None:
    assert is_coherent("I think there may be something about the sea in my mind today.")
    assert not is_coherent("the cat sat on the mat " * 6)
    assert not is_coherent("")


# ------------------------------------------------------------------ rates


def test_wilson_rates_by_hand() -> None:
    z = 1.959963984540054
    n, k = 10, 3
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    r = rate(k, n)
    assert (r.k, r.n, r.p) == (3, 10, 0.3)
    assert (r.lo, r.hi) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert rate(0, 10).hi == pytest.approx(z * z / (10 + z * z))  # 0/n: upper = z^2/(n+z^2)
    assert rate(0, 0).p is None


def _trial_rows(condition: str, detected: list[bool], identified: list[bool]) -> pd.DataFrame:
    return pd.DataFrame({"condition": condition, "detected": detected,
                         "identified": identified, "coherent": [True] * len(detected)})


def test_setting_summary_by_hand() -> None:
    trials = pd.concat([
        _trial_rows("injected", [True, True, False, False], [True, False, False, False]),
        _trial_rows("none", [True, False, False, False], [False] * 4),
        _trial_rows("random", [False, False], [False, False]),
        _trial_rows("negated", [True, False], [False, False]),
    ])
    s = setting_summary(trials)
    assert (s["detection"], s["identification"], s["false_positive"]) == (0.5, 0.25, 0.25)
    assert s["net"] == 0.0 and s["coherence"] == 1.0
    assert (s["random_detection"], s["negated_detection"], s["n_none"]) == (0.0, 0.5, 4)
    assert s["false_positive_hi"] == pytest.approx(rate(1, 4).hi)


# ------------------------------------------------------------------ sweep


def test_sweep_table_shape_and_progress() -> None:
    loaded = _loaded()
    library = build_word_library(loaded, ["w10", "w11"], [1, 2], baseline=BASELINE)
    config = SweepConfig(("w10", "w11"), (1, 2), (1.0, 4.0), trials=FAST)
    calls: list[tuple[int, int]] = []
    trials = run_sweep(loaded, library, config, progress=lambda d, t: calls.append((d, t)))
    settings = 2 * 2 * 2
    assert len(trials) == FAST.n_trials * (1 + settings * 3)
    assert trials["condition"].value_counts().to_dict() == {
        "injected": 16, "random": 16, "negated": 16, "none": 2}
    assert calls[-1] == (len(trials), len(trials))
    summary = sweep_summary(trials)
    assert list(summary.columns) == SUMMARY_KEYS
    assert len(summary) == settings
    assert set(zip(summary["layer"], summary["strength"], summary["concept"], strict=True)) == {
        (la, s, c) for la in (1, 2) for s in (1.0, 4.0) for c in ("w10", "w11")}
    assert (summary["n"] == 2).all() and (summary["n_none"] == 2).all()


def test_sweep_rejects_what_the_library_lacks() -> None:
    loaded = _loaded()
    library = build_word_library(loaded, ["w10"], [1], baseline=BASELINE)
    with pytest.raises(KeyError, match="w11"):
        run_sweep(loaded, library, SweepConfig(("w11",), (1,), (1.0,), trials=FAST))
    with pytest.raises(KeyError, match="Layer 2"):
        run_sweep(loaded, library, SweepConfig(("w10",), (2,), (1.0,), trials=FAST))


# ------------------------------------------------------------------ prefill


def test_prefill_window_is_the_sentence() -> None:
    tokenizer = tiny_tokenizer(CHAT)
    layout = prefill_layout(tokenizer, "w30 w31 w32", "w40")
    assert [tokenizer.convert_ids_to_tokens(i) for i in
            layout.input_ids[layout.start : layout.stop]] == ["w30", "w31", "w32"]


def test_prefill_run_shape() -> None:
    loaded = _loaded()
    items = (("w30 w31", "w40"), ("w32 w33 w34", "w41"))
    config = PrefillConfig(layers=(1, 2), strength=2.0, items=items,
                           trials=TrialConfig(n_trials=2, max_new_tokens=3, controls=()))
    library = build_word_library(loaded, ["w40", "w41"], [1, 2], baseline=BASELINE)
    replies = run_prefill(loaded, config, library)
    assert len(replies) == 2 * 2 * (1 + 2 * 2)
    random = replies[replies["condition"] == "random"]
    assert list(random.drop_duplicates("item")["injected_word"]) == ["w41", "w40"]
    summary = prefill_summary(replies)
    assert list(zip(summary["layer"], summary["condition"], strict=True)) == [
        (1, "none"), (1, "matching"), (1, "random"), (2, "none"), (2, "matching"),
        (2, "random")]
    assert (summary["n"] == 4).all()


# ------------------------------------------------------------------ logit lens


@pytest.mark.parametrize("family", FAMILIES)
def test_lens_at_the_last_layer_is_the_models_own_output(family: str) -> None:
    model = _loaded(family).model
    ids = torch.tensor([[5, 9, 14, 22, 31]])
    with torch.no_grad(), record_residual(model, [LAYERS - 1]) as rec:
        logits = model(input_ids=ids).logits
    assert final_norm(model) is not None
    torch.testing.assert_close(lens_logits(model, rec.hidden[LAYERS - 1][0][0]), logits[0],
                               rtol=1e-4, atol=1e-4)


def test_logit_lens_table() -> None:
    loaded = _loaded()
    concept = _concept(layer=2)
    table = logit_lens(loaded, concept, InjectionSpec(8.0), word="w10")
    token_id, _ = concept_token(loaded.tokenizer, "w10")
    assert token_id == 10 and set(table["token_id"]) == {10}
    assert len(table) == 2 * LAYERS
    none = table[table["condition"] == "none"].set_index("layer")
    injected = table[table["condition"] == "injected"].set_index("layer")
    for layer in range(2):  # before the injection layer nothing changes
        assert none.loc[layer, "prob"] == injected.loc[layer, "prob"]
    assert none.loc[2, "prob"] != injected.loc[2, "prob"]
    assert table["rank"].between(1, VOCAB).all()
    # rank by hand at the last layer: 1 + tokens with a larger final logit
    text, layout = trial_layout(loaded.tokenizer)
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([layout.input_ids])).logits[0, -1]
    assert none.loc[LAYERS - 1, "rank"] == 1 + int((logits > logits[10]).sum())
    assert none.loc[LAYERS - 1, "prob"] == pytest.approx(float(logits.softmax(-1)[10]),
                                                         rel=1e-4)


# ------------------------------------------------------------------ judge


def _judge_tokenizer() -> PreTrainedTokenizerFast:
    words = ["<unk>", "<s>", "</s>", "YES", "NO", "Yes", "No", "yes", "no"]
    vocab = {w: i for i, w in enumerate(words)}
    vocab.update({f"w{i}": i for i in range(len(words), VOCAB)})
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>")
    tok.chat_template = CHAT
    return tok


def test_judge_probability_against_one_forward() -> None:
    judge = wrap_model(tiny_model("llama", seed=4), _judge_tokenizer(), name="judge")
    prompts = ["w10 w11 w12", "w13"]
    got = judge_yes_probability(judge, prompts, batch_size=2)
    for prompt, p in zip(prompts, got, strict=True):
        ids = judge.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            probs = judge.model(input_ids=ids).logits[0, -1].softmax(-1)
        yes, no = float(probs[[3, 5, 7]].sum()), float(probs[[4, 6, 8]].sum())
        assert p == pytest.approx(yes / (yes + no), rel=1e-4)
    grades = judge_replies(judge, ["w10 w11", "w12"], "w10")
    assert len(grades) == 2 and all(0 <= x <= 1 for g in grades for x in g.p_yes)
    assert grades[0].coherent == (grades[0].p_yes[0] > 0.5)


def test_a_judge_whose_yes_and_no_collide_is_refused() -> None:
    with pytest.raises(ValueError, match="shared first token"):
        judge_yes_probability(_loaded(), ["w10"])  # YES and NO are both <unk> here


def test_trials_with_a_judge_get_its_columns() -> None:
    judge = wrap_model(tiny_model("llama", seed=4), _judge_tokenizer(), name="judge")
    run = run_trials(_loaded(), _concept(), InjectionSpec(1.0),
                     TrialConfig(n_trials=1, max_new_tokens=2, controls=("none",)), judge=judge)
    assert {"judge_coherent", "judge_thinks_about", "judge_affirmative",
            "judge_identified"} <= set(run.trials.columns)
    assert run.trials["judge_affirmative"].isin([True, False]).all()


def test_format_is_the_models_chat_template() -> None:
    text, _ = trial_layout(tiny_tokenizer(CHAT))
    assert text == format_chat(tiny_tokenizer(CHAT), trial_messages())
    assert text.startswith("w3 I am an interpretability researcher")


# ------------------------------------------------------------------ e2e: the default model


@pytest.mark.e2e
def test_default_model_window_vector_and_lens() -> None:
    """SmolLM2-135M: the window starts at the blank line, a word vector is built, and the lens at
    the last layer reproduces the model's own next-token probability."""
    from core.runtime.models import load_model
    from core.sense.concepts import BASELINE_WORDS

    loaded = load_model("default")
    _, layout = trial_layout(loaded.tokenizer)
    window = loaded.tokenizer.decode(list(layout.input_ids[layout.start :]))
    assert window.startswith("\n\nTrial 1: Do you detect an injected thought?")
    library = build_word_library(loaded, ["bread"], [15, 29], baseline=BASELINE_WORDS[:8])
    concept = library.vector("bread", 15)
    assert concept.norm > 0
    table = logit_lens(loaded, concept, InjectionSpec(4.0))
    assert len(table) == 2 * loaded.n_layers and table["token"].iloc[0] == " bread"
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([layout.input_ids])).logits[0, -1]
    token = int(table["token_id"].iloc[0])
    last = table[(table["condition"] == "none") & (table["layer"] == loaded.n_layers - 1)]
    assert float(last["prob"].iloc[0]) == pytest.approx(float(logits.softmax(-1)[token]),
                                                        rel=1e-3)
    before = table[table["layer"] < 15].pivot(index="layer", columns="condition", values="prob")
    assert (before["none"] == before["injected"]).all()
