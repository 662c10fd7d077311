"""Residual injection: the steered block output, causality, `generate`, and hook hygiene."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

from core.runtime.capture import record_residual
from core.runtime.inject import Positions, inject_residual
from core.runtime.layers import decoder_layers
from tests.tiny_models import FAMILIES, HIDDEN, LAYERS, random_batch, tiny_model

LAYER = 2
SEQ = 10
STRENGTH = 3.0

# Each Positions kind and the token positions it must touch in a SEQ-token forward, by hand.
POSITION_CASES = {
    "all": (Positions.all(), list(range(SEQ))),
    "span": (Positions.span(3, 7), [3, 4, 5, 6]),
    "from": (Positions.starting_at(5), [5, 6, 7, 8, 9]),
    "span_past_end": (Positions.span(8, 50), [8, 9]),
}


@cache
def _model(family: str) -> Any:
    """One tiny model per family for the module (hooks leave no trace, so sharing is safe)."""
    return tiny_model(family)


def _vector(seed: int = 3) -> torch.Tensor:
    return torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed))


def _batch() -> dict[str, torch.Tensor]:
    return random_batch(batch=2, seq=SEQ, seed=4)


# ------------------------------------------------------------------ one forward


@pytest.mark.parametrize("case", sorted(POSITION_CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_block_output_is_original_plus_strength_times_vector(family: str, case: str) -> None:
    model = _model(family)
    positions, chosen = POSITION_CASES[case]
    vector = _vector()
    batch = _batch()
    upto = list(range(LAYER + 1))
    with torch.no_grad(), record_residual(model, upto) as base:
        model(**batch)
    with torch.no_grad(), \
            inject_residual(model, LAYER, vector, STRENGTH, positions) as state, \
            record_residual(model, upto) as steered:
        model(**batch)

    for layer in range(LAYER):  # blocks before the injection see nothing of it
        assert torch.equal(steered.hidden[layer][0], base.hidden[layer][0]), layer
    original = base.hidden[LAYER][0]
    got = steered.hidden[LAYER][0]
    others = [p for p in range(SEQ) if p not in chosen]
    assert torch.equal(got[:, others], original[:, others])
    assert torch.equal(got[:, chosen], original[:, chosen] + STRENGTH * vector)
    assert state.layer == LAYER
    assert state.calls == 1
    assert state.prompt_length == SEQ
    assert state.positions_touched == len(chosen)


@pytest.mark.parametrize(("positions", "first"), [(Positions.span(4, 6), 4),
                                                  (Positions.starting_at(6), 6),
                                                  (Positions.all(), 0)])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_change_only_from_the_first_injected_position(
        family: str, positions: Positions, first: int) -> None:
    model = _model(family)
    batch = _batch()
    with torch.no_grad():
        base = model(**batch).logits
        with inject_residual(model, LAYER, _vector(), STRENGTH, positions):
            steered = model(**batch).logits
    assert torch.equal(steered[:, :first], base[:, :first])  # causality: bit-identical before
    changed = (steered - base).abs().amax(-1)  # [batch, seq]
    assert bool((changed[:, first] > 1e-4).all())
    assert bool((changed[:, first:] > 0).all())


def test_negative_layer_index_counts_from_the_end() -> None:
    model = _model("llama")
    with inject_residual(model, -1, _vector()) as state:
        pass
    assert state.layer == LAYERS - 1


def test_injection_rejects_bad_vector_and_layer() -> None:
    model = _model("llama")
    with pytest.raises(ValueError, match="1-D"), inject_residual(model, 0, torch.zeros(1, HIDDEN)):
        pass
    with pytest.raises(ValueError, match="out of range"), inject_residual(model, LAYERS, _vector()):
        pass


@pytest.mark.parametrize(
    "kwargs", [{"kind": "middle"}, {"kind": "span", "start": -1, "stop": 3},
               {"kind": "span", "start": 5, "stop": 2}],
)
def test_positions_validate(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Positions(**kwargs)


def test_positions_mask_by_hand() -> None:
    # a decode call: 1 token at absolute position 7 of a 5-token prompt
    assert Positions.generated().mask(7, 1, 5).tolist() == [True]
    assert Positions.generated().mask(0, 5, 5).tolist() == [False] * 5
    assert Positions.span(2, 4).mask(0, 6, 6).tolist() == [False, False, True, True, False, False]
    assert Positions.span(2, 4).mask(4, 1, 2).tolist() == [False]
    assert Positions.starting_at(3).mask(2, 3, 0).tolist() == [False, True, True]
    assert Positions.all().mask(9, 2, 0).tolist() == [True, True]


# ------------------------------------------------------------------ generate


GEN_KWARGS: dict[str, Any] = {"max_new_tokens": 6, "do_sample": False,
                              "return_dict_in_generate": True, "output_logits": True,
                              "pad_token_id": 0}


@pytest.mark.parametrize("family", FAMILIES)
def test_generated_positions_during_generate(family: str) -> None:
    model = _model(family)
    prompt = random_batch(batch=1, seq=7, seed=5)
    prompt_len = prompt["input_ids"].shape[1]
    vector = _vector()
    strength = 8.0
    with torch.no_grad(), record_residual(model, [LAYER]) as base_rec:
        base = model.generate(**prompt, **GEN_KWARGS)
    with torch.no_grad(), \
            inject_residual(model, LAYER, vector, strength, Positions.generated()) as state, \
            record_residual(model, [LAYER]) as steered_rec:
        steered = model.generate(**prompt, **GEN_KWARGS)

    n_new = steered.sequences.shape[1] - prompt_len
    assert state.prompt_length == prompt_len
    assert state.calls == n_new  # the prefill, then one call per fed-back token
    assert state.positions_touched == n_new - 1  # every fed-back generated token, not the prompt
    # the prefill is untouched: prompt-position states and the first token's logits are identical
    assert torch.equal(steered_rec.hidden[LAYER][0], base_rec.hidden[LAYER][0])
    assert torch.equal(steered.logits[0], base.logits[0])
    # a large push changes what the model writes
    assert not torch.equal(steered.sequences, base.sequences)

    # Oracle for the cached decode: one full forward over the generated text, injecting from the
    # prompt's end on, gives the same logits generate saw at each step.
    with torch.no_grad(), \
            inject_residual(model, LAYER, vector, strength, Positions.starting_at(prompt_len)):
        full = model(steered.sequences).logits  # [1, prompt + new, vocab]
    gen_logits = torch.stack(steered.logits, dim=1)  # [1, new, vocab]
    torch.testing.assert_close(full[:, prompt_len - 1 : prompt_len - 1 + n_new], gen_logits,
                               rtol=1e-4, atol=1e-4)


def test_span_positions_during_generate_touch_only_those_absolute_positions() -> None:
    model = _model("llama")
    prompt = random_batch(batch=1, seq=7, seed=5)
    vector = _vector()
    with torch.no_grad(), \
            inject_residual(model, LAYER, vector, 8.0, Positions.span(8, 10)) as state:
        out = model.generate(**prompt, **GEN_KWARGS)
    assert state.positions_touched == 2  # positions 8 and 9, each fed back in its own call
    with torch.no_grad(), inject_residual(model, LAYER, vector, 8.0, Positions.span(8, 10)):
        full = model(out.sequences).logits
    torch.testing.assert_close(full[:, 6:12], torch.stack(out.logits, 1), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ hooks always removed


def _hook_counts(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(b._forward_hooks), len(b._forward_pre_hooks)) for b in decoder_layers(model)]


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("family", FAMILIES)
def test_record_residual_removes_its_hooks_also_on_error(family: str) -> None:
    model = _model(family)
    before = _hook_counts(model)
    with record_residual(model, [0, -1]):
        inside = _hook_counts(model)
    assert _hook_counts(model) == before
    assert [f - f0 for (f, _), (f0, _) in zip(inside, before, strict=True)] == [1, 0, 0, 1]
    assert [p for _, p in inside] == [p for _, p in before]

    with pytest.raises(_Boom), record_residual(model, [1], spans=[[(0, 2)], [(0, 3)]]):
        assert _hook_counts(model) != before
        raise _Boom("inside the body")
    assert _hook_counts(model) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_inject_residual_removes_its_hooks_also_on_error(family: str) -> None:
    model = _model(family)
    before = _hook_counts(model)
    with inject_residual(model, 1, _vector()):
        inside = _hook_counts(model)
    assert _hook_counts(model) == before
    diff = [(f - f0, p - p0) for (f, p), (f0, p0) in zip(inside, before, strict=True)]
    assert diff == [(0, 0), (1, 1), (0, 0), (0, 0)]

    generated = Positions.generated()
    with pytest.raises(_Boom), inject_residual(model, 1, _vector(), positions=generated):
        model(**_batch())
        raise _Boom("inside the body")
    assert _hook_counts(model) == before
    # and the model is back to its unsteered self
    with torch.no_grad(), record_residual(model, [1]) as after:
        out = model(**_batch(), output_hidden_states=True)
    assert torch.equal(after.hidden[1][0], out.hidden_states[2])


def test_nested_contexts_remove_hooks_on_an_error_in_the_inner_one() -> None:
    model = _model("gpt2")
    before = _hook_counts(model)
    with pytest.raises(_Boom), inject_residual(model, 0, _vector()), \
            record_residual(model, [0, 1, 2, 3]):
        model(**_batch())
        raise _Boom("inside both")
    assert _hook_counts(model) == before
