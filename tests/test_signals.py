"""Token entropy / NLL against a naive per-position computation, and step aggregation by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from core.diagnose.signals import SIGNAL_NAMES, step_signals, token_entropy_nll

VOCAB = 23


def naive_entropy_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[list[list[float]], ...]:
    """One Categorical per (sequence, position): token t is predicted by the logits at t - 1."""
    batch, seq, _ = logits.shape
    entropy = [[math.nan] * seq for _ in range(batch)]
    nll = [[math.nan] * seq for _ in range(batch)]
    for b in range(batch):
        for t in range(1, seq):
            dist = Categorical(logits=logits[b, t - 1].double())
            entropy[b][t] = float(dist.entropy())
            nll[b][t] = -float(dist.log_prob(ids[b, t]))
    return entropy, nll


def _case(batch: int = 2, seq: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, seq, VOCAB, generator=gen)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=gen)
    return logits, ids


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 8, 128])
def test_entropy_and_nll_match_categorical(chunk: int) -> None:
    logits, ids = _case()
    entropy, nll = token_entropy_nll(logits, ids, chunk=chunk)
    want_entropy, want_nll = naive_entropy_nll(logits, ids)
    assert entropy.shape == nll.shape == (2, 9)
    assert bool(entropy[:, 0].isnan().all()) and bool(nll[:, 0].isnan().all())
    assert not bool(entropy[:, 1:].isnan().any()) and not bool(nll[:, 1:].isnan().any())
    want_entropy_t = torch.tensor(want_entropy, dtype=torch.float64)
    want_nll_t = torch.tensor(want_nll, dtype=torch.float64)
    torch.testing.assert_close(entropy[:, 1:].double(), want_entropy_t[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll[:, 1:].double(), want_nll_t[:, 1:], rtol=1e-5, atol=1e-5)


def test_chunking_does_not_change_the_result() -> None:
    logits, ids = _case(batch=3, seq=20, seed=1)
    whole = token_entropy_nll(logits, ids, chunk=1000)
    for chunk in (1, 4, 19):
        parts = token_entropy_nll(logits, ids, chunk=chunk)
        torch.testing.assert_close(parts[0], whole[0], equal_nan=True)
        torch.testing.assert_close(parts[1], whole[1], equal_nan=True)


def test_uniform_logits_give_entropy_and_nll_log_v() -> None:
    logits = torch.zeros(1, 5, VOCAB)
    ids = torch.tensor([[0, 4, 9, 22, 1]])
    entropy, nll = token_entropy_nll(logits, ids, chunk=2)
    torch.testing.assert_close(entropy[0, 1:], torch.full((4,), math.log(VOCAB)))
    torch.testing.assert_close(nll[0, 1:], torch.full((4,), math.log(VOCAB)))


def test_certain_prediction_has_zero_entropy_and_zero_nll() -> None:
    logits = torch.full((1, 3, VOCAB), -1e4)
    logits[0, :, 7] = 1e4  # always predicts token 7
    ids = torch.tensor([[2, 7, 7]])
    entropy, nll = token_entropy_nll(logits, ids)
    assert entropy[0, 1:].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert nll[0, 1:].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_bfloat16_logits_are_read_in_float32() -> None:
    logits, ids = _case()
    entropy, nll = token_entropy_nll(logits.bfloat16(), ids)
    want_entropy, want_nll = token_entropy_nll(logits.bfloat16().float(), ids)
    assert entropy.dtype == nll.dtype == torch.float32
    torch.testing.assert_close(entropy, want_entropy, equal_nan=True)
    torch.testing.assert_close(nll, want_nll, equal_nan=True)


def test_one_token_sequence_is_all_nan() -> None:
    entropy, nll = token_entropy_nll(torch.zeros(2, 1, VOCAB), torch.zeros(2, 1, dtype=torch.long))
    assert bool(entropy.isnan().all()) and bool(nll.isnan().all())


# ------------------------------------------------------------------ step_signals


def test_step_signals_by_hand() -> None:
    entropy = torch.tensor([math.nan, 1.0, 2.0, 3.0, 4.0, 0.5])
    nll = torch.tensor([math.nan, 0.5, 1.5, 1.0, 2.0, 0.25])
    rows = step_signals(entropy, nll, [(1, 3), (3, 5), (5, 6)])
    assert len(rows) == 3
    assert all(tuple(row) == SIGNAL_NAMES for row in rows)
    assert rows[0] == pytest.approx({"mean_entropy": 1.5, "mean_nll": 1.0, "max_nll": 1.5,
                                     "min_prob": math.exp(-1.5)})
    assert rows[1] == pytest.approx({"mean_entropy": 3.5, "mean_nll": 1.5, "max_nll": 2.0,
                                     "min_prob": math.exp(-2.0)})
    assert rows[2] == pytest.approx({"mean_entropy": 0.5, "mean_nll": 0.25, "max_nll": 0.25,
                                     "min_prob": math.exp(-0.25)})


def test_step_signals_min_prob_is_the_least_likely_token() -> None:
    logits, ids = _case(batch=1, seq=8, seed=2)
    entropy, nll = token_entropy_nll(logits, ids)
    rows = step_signals(entropy[0], nll[0], [(2, 6)])
    probs = [float(torch.softmax(logits[0, t - 1].double(), -1)[ids[0, t]]) for t in range(2, 6)]
    assert rows[0]["min_prob"] == pytest.approx(min(probs), rel=1e-5)
    assert rows[0]["mean_nll"] == pytest.approx(-sum(math.log(p) for p in probs) / 4, rel=1e-5)


def test_step_signals_without_spans_is_empty() -> None:
    assert step_signals(torch.zeros(3), torch.zeros(3), []) == []
