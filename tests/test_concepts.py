"""Concept vectors against transformers' own hidden states, the word lists, and the files."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch

from core.runtime.models import LoadedModel, wrap_model
from core.sense.concepts import (
    ALL_TARGET_WORDS,
    BASELINE_WORDS,
    LIBRARY_SIDECAR,
    LIBRARY_TENSORS,
    TARGET_WORDS,
    ConceptRecipe,
    ConceptVector,
    build_contrastive_library,
    build_word_library,
    caps_pairs,
    load_concept,
    load_library,
    random_like,
    save_concept,
    save_library,
    word_prompt,
)
from tests.tiny_models import FAMILIES, HIDDEN, LAYERS, tiny_model, tiny_tokenizer

CHAT = ("{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
        "{% if add_generation_prompt %}w5{% endif %}")
# A multi-token "word" makes the prompts differ in length, so batches are really padded.
WORDS = ["w10", "w11 w12 w13", "w14"]
BASELINE = ["w20", "w21", "w22 w23", "w24", "w25"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@cache
def _loaded(family: str = "llama", name: str = "tiny") -> LoadedModel:
    return wrap_model(tiny_model(family), tiny_tokenizer(CHAT), name=name)


def _oracle_last(loaded: LoadedModel, prompt: str, layer: int) -> torch.Tensor:
    """Block `layer`'s output at the last token, from an unpadded forward's hidden_states."""
    ids = loaded.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = loaded.model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[layer + 1][0, -1]


# ------------------------------------------------------------------ the maths


@pytest.mark.parametrize("family", FAMILIES)
def test_word_vector_is_target_minus_baseline_mean_of_hidden_states(family: str) -> None:
    loaded = _loaded(family)
    layers = list(range(LAYERS - 1))  # hidden_states[-1] is final-normed: compare the others
    library = build_word_library(loaded, WORDS, layers, baseline=BASELINE, batch_size=3)
    assert library.layers == tuple(layers)
    for layer in layers:
        base = torch.stack([_oracle_last(loaded, word_prompt(loaded.tokenizer, b), layer)
                            for b in BASELINE]).mean(0)
        for word in WORDS:
            expected = _oracle_last(loaded, word_prompt(loaded.tokenizer, word), layer) - base
            got = library.vector(word, layer)
            torch.testing.assert_close(got.vector, expected, rtol=1e-4, atol=1e-5)
            assert got.layer == layer and got.recipe.method == "word"
            assert got.recipe.negative == tuple(BASELINE)


def test_word_prompt_is_tell_me_about_in_the_chat_template() -> None:
    assert word_prompt(_loaded().tokenizer, "w10") == "w3 Tell me about w10 w4 w5"


def test_batch_size_does_not_change_the_vectors() -> None:
    loaded = _loaded()
    one = build_word_library(loaded, WORDS, [1, 3], baseline=BASELINE, batch_size=1)
    many = build_word_library(loaded, WORDS, [1, 3], baseline=BASELINE, batch_size=8)
    for word in WORDS:
        torch.testing.assert_close(one.vectors[word], many.vectors[word], rtol=1e-4, atol=1e-5)


def test_default_layers_are_every_layer_and_progress_reaches_the_total() -> None:
    calls: list[tuple[int, int]] = []
    library = build_word_library(_loaded(), ["w10"], baseline=BASELINE, batch_size=2,
                                 progress=lambda d, t: calls.append((d, t)))
    assert library.layers == tuple(range(LAYERS))
    assert calls[-1] == (6, 6) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_contrastive_vector_is_mean_positive_minus_mean_negative() -> None:
    loaded = _loaded()
    positive, negative = ["w30 w31", "w32"], ["w40", "w41 w42 w43", "w44"]
    library = build_contrastive_library(loaded, "shout", positive, negative, [2], chat=False)
    pos = torch.stack([_oracle_last(loaded, p, 2) for p in positive]).mean(0)
    neg = torch.stack([_oracle_last(loaded, n, 2) for n in negative]).mean(0)
    vector = library.vector("shout", 2)
    torch.testing.assert_close(vector.vector, pos - neg, rtol=1e-4, atol=1e-5)
    assert vector.recipe == ConceptRecipe("shout", "contrastive", tuple(positive),
                                          tuple(negative))


def test_caps_pairs_and_random_control_of_matched_norm() -> None:
    assert caps_pairs(["Hello there"]) == (["HELLO THERE"], ["Hello there"])
    v = torch.arange(HIDDEN, dtype=torch.float32)
    r = random_like(v, seed=7)
    assert torch.isclose(r.norm(), v.norm())
    assert torch.equal(r, random_like(v, seed=7))
    assert not torch.equal(r, random_like(v, seed=8))
    assert abs(float(torch.nn.functional.cosine_similarity(r, v, dim=0))) < 0.5


def test_builders_reject_bad_input() -> None:
    loaded = _loaded()
    with pytest.raises(ValueError, match="repeat"):
        build_word_library(loaded, ["w10", "w10"], [0], baseline=BASELINE)
    with pytest.raises(ValueError, match="at least one"):
        build_contrastive_library(loaded, "x", ["w10"], [" "], [0])
    with pytest.raises(ValueError, match="out of range"):
        build_word_library(loaded, ["w10"], [LAYERS], baseline=BASELINE)
    with pytest.raises(ValueError, match="method"):
        ConceptRecipe("x", "magic", ("a",), ("b",))


def test_library_lookup_errors_name_what_it_holds() -> None:
    library = build_word_library(_loaded(), ["w10"], [1], baseline=BASELINE)
    with pytest.raises(KeyError, match="holds w10"):
        library.vector("w99", 1)
    with pytest.raises(KeyError, match="holds layers 1"):
        library.vector("w10", 2)


# ------------------------------------------------------------------ word lists


def test_word_lists() -> None:
    assert len(BASELINE_WORDS) == len(set(BASELINE_WORDS)) == 100
    assert len(ALL_TARGET_WORDS) == len(set(ALL_TARGET_WORDS)) == 50
    assert set(TARGET_WORDS) == {"concrete", "abstract", "people", "places"}
    assert not set(w.lower() for w in BASELINE_WORDS) & set(w.lower() for w in ALL_TARGET_WORDS)


# ------------------------------------------------------------------ files


def test_library_round_trip_and_sidecar(tmp_path: Path) -> None:
    loaded = _loaded()
    library = build_word_library(loaded, WORDS, [1, 2], baseline=BASELINE).merge(
        build_contrastive_library(loaded, "shout", ["w30"], ["w31"], [1, 2]))
    save_library(library, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LIBRARY_SIDECAR, LIBRARY_TENSORS]
    meta = json.loads((tmp_path / LIBRARY_SIDECAR).read_text())
    assert (meta["model"], meta["hidden_size"], meta["layers"]) == ("tiny", HIDDEN, [1, 2])
    assert meta["position"] == "last_prompt_token"
    assert meta["concepts"]["w10"]["method"] == "word"
    assert meta["concepts"]["w10"]["words"] == ["w10"]
    assert meta["concepts"]["shout"]["method"] == "contrastive"
    assert meta["concepts"]["w14"]["norms"] == pytest.approx(
        [float(library.vectors["w14"][i].norm()) for i in range(2)])
    back = load_library(tmp_path, loaded)
    assert back.concepts == library.concepts and back.layers == (1, 2)
    for name in library.concepts:
        assert torch.equal(back.vectors[name], library.vectors[name])
        assert back.recipes[name] == library.recipes[name]


def test_loading_for_another_model_is_a_clear_error(tmp_path: Path) -> None:
    save_library(build_word_library(_loaded(), ["w10"], [1], baseline=BASELINE), tmp_path)
    wider = wrap_model(tiny_model("llama"), tiny_tokenizer(CHAT), name="tiny")
    object.__setattr__(wider, "hidden_size", 64)
    with pytest.raises(ValueError, match=r"built for model 'tiny' \(hidden size 32\), not "
                                         r"'tiny' \(hidden size 64\)"):
        load_library(tmp_path, wider)
    with pytest.raises(ValueError, match="built for model 'tiny'"):
        load_library(tmp_path, _loaded("gpt2", name="other"))


def test_tensors_from_another_run_are_detected(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    save_library(build_word_library(_loaded(), ["w10"], [1], baseline=BASELINE), first)
    save_library(build_word_library(_loaded(), ["w10"], [1], baseline=BASELINE[:2]), second)
    (first / LIBRARY_TENSORS).write_bytes((second / LIBRARY_TENSORS).read_bytes())
    with pytest.raises(ValueError, match="checksum"):
        load_library(first)


def test_single_vector_round_trip(tmp_path: Path) -> None:
    vector = build_word_library(_loaded(), ["w10"], [2], baseline=BASELINE).vector("w10", 2)
    tensors, sidecar = save_concept(vector, tmp_path / "bread")
    assert (tensors.name, sidecar.name) == ("bread.safetensors", "bread.json")
    meta = json.loads(sidecar.read_text())
    assert {"model", "layer", "position", "method", "words", "norm"} <= set(meta)
    assert meta["norm"] == pytest.approx(vector.norm)
    back = load_concept(tmp_path / "bread.json", _loaded())
    assert isinstance(back, ConceptVector)
    assert torch.equal(back.vector, vector.vector) and back.layer == 2
    assert back.recipe == vector.recipe


def test_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="concepts.json"):
        load_library(tmp_path)
    (tmp_path / LIBRARY_SIDECAR).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_library(tmp_path)
