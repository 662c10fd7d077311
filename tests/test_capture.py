"""Residual capture against transformers' own `output_hidden_states`, on five model families."""

from __future__ import annotations

import operator
from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

from core.runtime.capture import record_residual
from core.runtime.hooks import hidden_of, replace_hidden
from core.runtime.layers import decoder_layers
from core.runtime.pooling import POOLINGS, span_weights
from tests.tiny_models import FAMILIES, HIDDEN, LAYERS, random_batch, tiny_model

# The norm each family applies after its last block before `hidden_states[-1]` is stored.
FINAL_NORM = {
    "llama": "model.norm",
    "qwen2": "model.norm",
    "gpt2": "transformer.ln_f",
    "gpt_neox": "gpt_neox.final_layer_norm",
    "opt": "model.decoder.final_layer_norm",
}
SEQ = 12
PAD = 4


@cache
def _model(family: str) -> nn.Module:
    return tiny_model(family)


def _padded_batch() -> dict[str, torch.Tensor]:
    """Two sequences; the second is right-padded (its last PAD tokens are masked)."""
    return random_batch(batch=2, seq=SEQ, pad_last=PAD)


# ------------------------------------------------------------------ full capture


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_equals_output_hidden_states_on_real_tokens(family: str) -> None:
    model = _model(family)
    batch = _padded_batch()
    real = batch["attention_mask"].bool()  # [batch, seq]
    with torch.no_grad(), record_residual(model, list(range(LAYERS))) as rec:
        out = model(**batch, output_hidden_states=True)
    assert rec.layers == list(range(LAYERS))
    assert len(out.hidden_states) == LAYERS + 1  # embeddings + one per block
    for layer in range(LAYERS - 1):  # hidden_states[L + 1] is block L's raw output
        recorded = rec.hidden[layer][0]
        assert recorded.shape == (2, SEQ, HIDDEN)
        assert torch.equal(recorded[real], out.hidden_states[layer + 1][real]), layer


@pytest.mark.parametrize("family", FAMILIES)
def test_last_block_is_raw_output_before_the_final_norm(family: str) -> None:
    """HF stores the *final-normed* last block output as hidden_states[-1]; the recorder keeps
    the raw block output (resid_post). Checked by two other routes: a hand-written forward hook
    sees the same tensor, and applying the family's final norm to it gives hidden_states[-1]."""
    model = _model(family)
    batch = _padded_batch()
    real = batch["attention_mask"].bool()
    last = decoder_layers(model)[-1]
    manual: list[torch.Tensor] = []

    def grab(_module: nn.Module, _args: Any, output: Any) -> None:
        manual.append((output[0] if isinstance(output, tuple) else output).detach())

    handle = last.register_forward_hook(grab)
    try:
        with torch.no_grad(), record_residual(model, [-1]) as rec:
            out = model(**batch, output_hidden_states=True)
    finally:
        handle.remove()
    recorded = rec.hidden[LAYERS - 1][0]
    assert torch.equal(recorded, manual[0])
    final_norm = operator.attrgetter(FINAL_NORM[family])(model)
    with torch.no_grad():
        normed = final_norm(recorded)
    torch.testing.assert_close(normed[real], out.hidden_states[-1][real], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(recorded[real], out.hidden_states[-1][real], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_change_real_tokens(family: str) -> None:
    model = _model(family)
    batch = _padded_batch()
    n_real = SEQ - PAD
    single = {"input_ids": batch["input_ids"][1:, :n_real],
              "attention_mask": batch["attention_mask"][1:, :n_real]}
    layers = list(range(LAYERS))
    with torch.no_grad(), record_residual(model, layers) as padded:
        model(**batch)
    with torch.no_grad(), record_residual(model, layers) as alone:
        model(**single)
    for layer in layers:
        torch.testing.assert_close(padded.hidden[layer][0][1, :n_real], alone.hidden[layer][0][0],
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_negative_indices_and_repeats_resolve_to_the_same_blocks(family: str) -> None:
    model = _model(family)
    batch = random_batch()
    with torch.no_grad(), record_residual(model, [-1, -LAYERS, 0, LAYERS - 1]) as rec:
        out = model(**batch, output_hidden_states=True)
    assert rec.layers == [LAYERS - 1, 0]
    assert sorted(rec.hidden) == [0, LAYERS - 1]
    assert len(rec.hidden[0]) == 1  # one hook per block even when named twice
    assert torch.equal(rec.hidden[0][0], out.hidden_states[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_several_calls_are_appended_in_order(family: str) -> None:
    model = _model(family)
    first = random_batch(batch=1, seq=5, seed=1)
    second = random_batch(batch=1, seq=7, seed=2)
    with torch.no_grad(), record_residual(model, [1]) as rec:
        out1 = model(**first, output_hidden_states=True)
        out2 = model(**second, output_hidden_states=True)
    assert len(rec.hidden[1]) == 2
    assert torch.equal(rec.hidden[1][0], out1.hidden_states[2])
    assert torch.equal(rec.hidden[1][1], out2.hidden_states[2])
    assert rec.stacked(1).shape == (1, 12, HIDDEN)
    assert torch.equal(rec.stacked(1), torch.cat([out1.hidden_states[2], out2.hidden_states[2]], 1))


def test_recorded_tensors_are_detached() -> None:
    model = _model("llama")
    with record_residual(model, [0]) as rec:
        model(**random_batch())  # with grad enabled
    assert not rec.hidden[0][0].requires_grad


def test_nothing_is_recorded_after_the_context_exits() -> None:
    model = _model("llama")
    with torch.no_grad(), record_residual(model, [0]) as rec:
        model(**random_batch())
    with torch.no_grad():
        model(**random_batch())
    assert len(rec.hidden[0]) == 1


# ------------------------------------------------------------------ pooled capture

# Per sequence: token spans [start, end) of its steps; one-token steps included, and the
# padded second sequence has fewer steps, all inside its real tokens.
SPANS = [[(2, 5), (5, 6), (6, 11), (11, 12)], [(1, 4), (4, 8)]]


@pytest.mark.parametrize("family", FAMILIES)
def test_pooled_vectors_equal_span_weights_on_the_full_states(family: str) -> None:
    model = _model(family)
    batch = _padded_batch()
    layers = [0, 2, -1]
    with torch.no_grad(), record_residual(model, layers) as full, \
            record_residual(model, layers, spans=SPANS, poolings=POOLINGS) as pooled:
        model(**batch)
    assert pooled.hidden == {}  # only pooled vectors are kept
    for layer in full.layers:
        states = full.hidden[layer][0].double()  # [batch, seq, hidden]
        for method in POOLINGS:
            per_seq = pooled.pooled[(layer, method)]
            assert len(per_seq) == len(SPANS)
            for b, spans in enumerate(SPANS):
                expected = span_weights(spans, SEQ, method) @ states[b]  # [steps, hidden]
                got = per_seq[b]
                assert got.shape == (len(spans), HIDDEN)
                torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_pooled_capture_keeps_only_step_vectors() -> None:
    model = _model("llama")
    batch = _padded_batch()
    with torch.no_grad(), record_residual(model, [1, 3], spans=SPANS,
                                          poolings=("exp", "mean")) as rec:
        model(**batch)
    assert rec.hidden == {}
    assert sorted(rec.pooled) == [(1, "exp"), (1, "mean"), (3, "exp"), (3, "mean")]
    for vectors in rec.pooled.values():
        assert [tuple(v.shape) for v in vectors] == [(4, HIDDEN), (2, HIDDEN)]
        assert all(v.dtype == torch.float32 for v in vectors)


def test_pooled_capture_rejects_an_unknown_pooling() -> None:
    model = _model("llama")
    with pytest.raises(ValueError, match="median"), \
            record_residual(model, [0], spans=SPANS, poolings=("median",)):
        pass


def test_pooled_capture_rejects_spans_beyond_the_sequence() -> None:
    model = _model("llama")
    with pytest.raises(ValueError, match="does not fit"), torch.no_grad(), \
            record_residual(model, [0], spans=[[(0, SEQ + 1)], [(0, 2)]]):
        model(**_padded_batch())


# ------------------------------------------------------------------ output containers


def test_hidden_of_and_replace_hidden_handle_tensor_tuple_and_list() -> None:
    hidden = torch.randn(1, 3, 4)
    new = torch.zeros(1, 3, 4)
    extra = torch.ones(2)
    assert hidden_of(hidden) is hidden
    assert hidden_of((hidden, extra)) is hidden
    assert hidden_of([hidden, extra]) is hidden
    assert replace_hidden(hidden, new) is new
    swapped = replace_hidden((hidden, extra), new)
    assert isinstance(swapped, tuple) and swapped[0] is new and swapped[1] is extra
    swapped_list = replace_hidden([hidden, extra], new)
    assert isinstance(swapped_list, list) and swapped_list[0] is new and swapped_list[1] is extra
    with pytest.raises(TypeError):
        hidden_of({"hidden": hidden})
