"""Step pooling weights against the formulas of the method, recomputed here with plain math."""

from __future__ import annotations

import math

import pytest
import torch

from core.runtime.pooling import (
    CAUSAL_GAMMA,
    POOLINGS,
    batch_span_weights,
    check_poolings,
    exp_weights,
    span_weights,
)


def naive_exp_weights(length: int, k: float) -> list[float]:
    """alpha = softmax(k * w), w_n = (n - 1) / (L - 1) for n = 1..L (METHODS.md)."""
    w = [(n - 1) / (length - 1) for n in range(1, length + 1)]
    e = [math.exp(k * x) for x in w]
    return [x / sum(e) for x in e]


def naive_causal_weights(length: int, gamma: float) -> list[float]:
    """exp(gamma * i) for i = 0..length-1, normalised to sum 1."""
    e = [math.exp(gamma * i) for i in range(length)]
    return [x / sum(e) for x in e]


# ------------------------------------------------------------------ exp weights


@pytest.mark.parametrize("length", [2, 3, 5, 17])
@pytest.mark.parametrize("k", [1.0, 3.0])
def test_exp_weights_match_the_softmax_formula(length: int, k: float) -> None:
    expected = torch.tensor(naive_exp_weights(length, k), dtype=torch.float64)
    torch.testing.assert_close(exp_weights(length, k).double(), expected, rtol=1e-12, atol=1e-12)


def test_exp_weights_hand_values_for_two_tokens() -> None:
    # w = (0, 1): alpha = (1, e^k) / (1 + e^k)
    for k in (1.0, 3.0):
        a1, a2 = exp_weights(2, k).tolist()
        assert a1 == pytest.approx(1 / (1 + math.e**k), abs=1e-12)
        assert a2 == pytest.approx(math.e**k / (1 + math.e**k), abs=1e-12)


def test_exp_weights_grow_along_the_step_and_k3_is_sharper() -> None:
    k1, k3 = exp_weights(6, 1.0), exp_weights(6, 3.0)
    assert bool((k1[1:] > k1[:-1]).all())
    assert float(k3[-1]) > float(k1[-1])
    assert float(k3[-1] / k3[0]) == pytest.approx(math.e**3, rel=1e-12)


def test_one_token_step_is_the_token_itself() -> None:
    assert exp_weights(1, 1.0).tolist() == [1.0]
    for method in POOLINGS:
        row = span_weights([(4, 5)], 8, method)[0]
        assert row.tolist() == [0, 0, 0, 0, 1.0, 0, 0, 0], method


# ------------------------------------------------------------------ span_weights


SPANS = [(2, 5), (5, 6), (6, 10)]
SEQ = 12


@pytest.mark.parametrize(("method", "k"), [("exp", 1.0), ("exp3", 3.0)])
def test_span_weights_exp_rows_sit_on_their_span(method: str, k: float) -> None:
    weights = span_weights(SPANS, SEQ, method)
    assert weights.shape == (3, SEQ)
    for row, (start, end) in enumerate(SPANS):
        expected = [0.0] * SEQ
        if end - start == 1:
            expected[start] = 1.0
        else:
            expected[start:end] = naive_exp_weights(end - start, k)
        assert weights[row].tolist() == pytest.approx(expected, abs=1e-12)


def test_span_weights_mean_and_last() -> None:
    mean = span_weights(SPANS, SEQ, "mean")
    last = span_weights(SPANS, SEQ, "last")
    assert mean[0].tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3] + [0] * 7)
    assert mean[2].tolist() == pytest.approx([0] * 6 + [0.25] * 4 + [0] * 2)
    assert last[0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert last[2].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]


@pytest.mark.parametrize("gamma", [CAUSAL_GAMMA, 0.5])
def test_span_weights_causal_covers_every_token_so_far(gamma: float) -> None:
    weights = span_weights(SPANS, SEQ, "causal", gamma=gamma)
    origin = SPANS[0][0]
    for row, (_start, end) in enumerate(SPANS):
        expected = [0.0] * SEQ
        expected[origin:end] = naive_causal_weights(end - origin, gamma)
        assert weights[row].tolist() == pytest.approx(expected, abs=1e-12)


def test_span_weights_causal_default_gamma_is_0_003() -> None:
    assert CAUSAL_GAMMA == 0.003
    weights = span_weights([(0, 3)], 3, "causal")
    e = [1.0, math.exp(0.003), math.exp(0.006)]
    assert weights[0].tolist() == pytest.approx([x / sum(e) for x in e], abs=1e-12)


def test_span_weights_prefix_mean_is_the_plain_mean_so_far() -> None:
    weights = span_weights(SPANS, SEQ, "prefix_mean")
    assert weights[0].tolist() == pytest.approx([0, 0] + [1 / 3] * 3 + [0] * 7)
    assert weights[1].tolist() == pytest.approx([0, 0] + [1 / 4] * 4 + [0] * 6)
    assert weights[2].tolist() == pytest.approx([0, 0] + [1 / 8] * 8 + [0] * 2)


@pytest.mark.parametrize("method", POOLINGS)
def test_every_row_sums_to_one(method: str) -> None:
    weights = span_weights(SPANS, SEQ, method)
    torch.testing.assert_close(weights.sum(1), torch.ones(3, dtype=torch.float64))
    assert bool((weights >= 0).all())


@pytest.mark.parametrize("span", [(3, 3), (5, 2), (-1, 2), (0, SEQ + 1), (SEQ, SEQ + 1)])
@pytest.mark.parametrize("method", POOLINGS)
def test_bad_spans_raise(span: tuple[int, int], method: str) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        span_weights([(0, 1), span], SEQ, method)


def test_unknown_method_raises_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="median.*exp, exp3, mean, last, causal, prefix_mean"):
        span_weights([(0, 2)], 4, "median")
    with pytest.raises(ValueError, match="median"):
        check_poolings(["exp", "median"])
    assert check_poolings(["exp", "mean"]) == ("exp", "mean")


def test_batch_span_weights_pads_missing_steps_with_zero_rows() -> None:
    spans = [[(0, 2), (2, 5)], [(1, 3)], []]
    weights = batch_span_weights(spans, 6, "mean")
    assert weights.shape == (3, 2, 6)
    assert weights[0, 1].tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3, 0])
    assert weights[1, 0].tolist() == pytest.approx([0, 0.5, 0.5, 0, 0, 0])
    assert weights[1, 1].tolist() == [0.0] * 6
    assert weights[2].abs().sum().item() == 0.0


def test_pooling_a_matrix_with_the_weights_gives_the_formula() -> None:
    """z = sum_n alpha_n h_n computed with the weights matches a hand loop."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(SEQ, 5, generator=gen, dtype=torch.float64)
    pooled = span_weights(SPANS, SEQ, "exp") @ hidden
    start, end = SPANS[2]
    alpha = naive_exp_weights(end - start, 1.0)
    expected = sum(a * hidden[start + i] for i, a in enumerate(alpha))
    assert isinstance(expected, torch.Tensor)
    torch.testing.assert_close(pooled[2], expected)


@pytest.mark.parametrize("method", ["causal", "prefix_mean"])
@pytest.mark.parametrize("spans", [[(5, 8), (2, 4)], [(5, 8), (2, 6)]])
def test_steps_out_of_order_raise_value_error(method: str, spans: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError):
        span_weights(spans, 10, method)
