"""Token statistics against naive per-position formulas, across chunk sizes and dtypes; quadrants
and their shares by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from core.control.entropy import (
    CODE_NORM,
    Cuts,
    Thresholds,
    assign_quadrants,
    full_entropy,
    gradient_norm,
    normalise_entropy,
    quadrant_shares,
    resolve_thresholds,
    response_positions,
    token_stats,
    topk_entropy,
)

V = 31
X = -100


def naive_topk_entropy(row: torch.Tensor, k: int) -> float:
    """Sort, keep the K largest, softmax in float64, -sum q log q."""
    top = sorted(row.double().tolist(), reverse=True)[:k]
    m = max(top)
    weights = [math.exp(v - m) for v in top]
    total = sum(weights)
    return -sum(w / total * math.log(w / total) for w in weights if w > 0)


def _case(seed: int = 0, batch: int = 2, seq: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, seq, V, generator=gen)
    labels = torch.randint(0, V, (batch, seq), generator=gen)
    labels[0, :3] = X  # a prompt
    labels[1, -2:] = X  # padding
    return logits, labels


@pytest.mark.parametrize("k", [1, 2, 5, 20, V, 100])
def test_topk_entropy_matches_the_naive_formula(k: int) -> None:
    logits, _ = _case()
    got = topk_entropy(logits, k)
    want = torch.tensor([[naive_topk_entropy(logits[b, t], k) for t in range(9)]
                         for b in range(2)], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [2, 7, 20])
def test_uniform_logits_give_ln_k_and_one_hot_gives_zero(k: int) -> None:
    uniform = torch.zeros(3, 50)
    torch.testing.assert_close(topk_entropy(uniform, k), torch.full((3,), math.log(k)))
    torch.testing.assert_close(normalise_entropy(topk_entropy(uniform, k), k, "lnk"),
                               torch.ones(3))
    one_hot = torch.full((3, 50), -1e4)
    one_hot[:, 7] = 1e4
    assert topk_entropy(one_hot, k).abs().max() < 1e-6
    assert full_entropy(one_hot).abs().max() < 1e-6
    torch.testing.assert_close(full_entropy(uniform), torch.full((3,), math.log(50)))


def test_code_norm_divides_by_three() -> None:
    h = torch.tensor([math.log(20)])
    assert float(normalise_entropy(h, 20, "code")) == pytest.approx(math.log(20) / CODE_NORM)
    assert float(normalise_entropy(h, 20, "lnk")) == pytest.approx(1.0)
    # the paper: the two differ by 0.14% at K = 20
    assert 1 - math.log(20) / 3.0 == pytest.approx(0.0014, abs=1e-4)
    with pytest.raises(ValueError, match="norm"):
        normalise_entropy(h, 20, "ln")


def test_full_entropy_matches_categorical() -> None:
    logits, _ = _case(seed=3)
    want = Categorical(logits=logits.double()).entropy()
    torch.testing.assert_close(full_entropy(logits).double(), want, rtol=1e-5, atol=1e-6)


def test_gradient_norm_is_the_norm_of_the_cross_entropy_gradient() -> None:
    logits, labels = _case(seed=4)
    z = logits.reshape(-1, V).double().requires_grad_(True)
    target = labels.reshape(-1).clamp_min(0)
    torch.nn.functional.cross_entropy(z, target, reduction="sum").backward()
    assert z.grad is not None
    want = z.grad.norm(dim=-1)
    got = gradient_norm(torch.softmax(z.detach(), -1), target)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)


def test_response_positions_skip_ignored_and_position_zero() -> None:
    labels = torch.tensor([[5, X, 6, 7], [X, 8, X, X]])
    rows, positions = response_positions(labels)
    assert rows.tolist() == [0, 0, 1] and positions.tolist() == [2, 3, 1]


def naive_stats(logits: torch.Tensor, labels: torch.Tensor, k: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"p": [], "hk": [], "hf": [], "top": [], "g": []}
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[b, t] == X:
                continue
            z = logits[b, t - 1].double()
            dist = Categorical(logits=z)
            p = dist.probs
            y = int(labels[b, t])
            out["p"].append(float(p[y]))
            out["hk"].append(naive_topk_entropy(z, k))
            out["hf"].append(float(dist.entropy()))
            out["top"].append(float(z.argmax()))
            onehot = torch.zeros_like(p)
            onehot[y] = 1
            out["g"].append(float((p - onehot).norm()))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk", [None, 1, 3, 64])
def test_token_stats_match_naive_per_position(dtype: torch.dtype, chunk: int | None) -> None:
    logits, labels = _case(seed=5)
    logits = logits.to(dtype)
    stats = token_stats(logits, labels, k=5, chunk=chunk)
    want = naive_stats(logits.float(), labels, 5)  # the same (rounded) logits, in float64
    assert len(stats) == len(want["p"]) == 9 - 1 - 2 + 9 - 1 - 2
    assert stats.p_target.dtype == torch.float32
    close = {"rtol": 1e-5, "atol": 1e-6}
    f64 = torch.float64
    for got, name in ((stats.p_target, "p"), (stats.entropy_topk, "hk"),
                      (stats.entropy_full, "hf"), (stats.grad_norm, "g")):
        torch.testing.assert_close(got.double(), torch.tensor(want[name], dtype=f64), **close)
    torch.testing.assert_close(stats.ce.double(), -torch.tensor(want["p"], dtype=f64).log(),
                               **close)
    torch.testing.assert_close(stats.entropy_norm, stats.entropy_topk / math.log(5))
    assert stats.top_token.tolist() == [int(v) for v in want["top"]]
    assert stats.target.tolist() == [int(labels[r, t]) for r, t in zip(
        stats.row.tolist(), stats.position.tolist(), strict=True)]


def test_chunked_equals_unchunked_on_a_longer_sequence() -> None:
    logits, labels = _case(seed=6, batch=3, seq=70)
    whole = token_stats(logits, labels, chunk=None)
    for chunk in (1, 7, 64, 1000):
        part = token_stats(logits, labels, chunk=chunk)
        for name in ("p_target", "ce", "entropy_topk", "entropy_full", "grad_norm", "top_token"):
            torch.testing.assert_close(getattr(part, name), getattr(whole, name))


def test_token_stats_frame_and_empty_batch() -> None:
    logits, labels = _case()
    frame = token_stats(logits, labels).to_frame()
    assert list(frame.columns[:4]) == ["row", "position", "target_id", "top_id"]
    assert len(frame) == 12
    empty = token_stats(logits, torch.full_like(labels, X))
    assert len(empty) == 0
    with pytest.raises(ValueError, match="do not match"):
        token_stats(logits, labels[:, :-1])


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError, match="percentile"):
        Thresholds(mode="quantile")
    with pytest.raises(ValueError, match="probability"):
        Thresholds(p=2.0, h=0.1, uncertain=0.5, mode="absolute")
    with pytest.raises(ValueError, match="above"):
        Thresholds(h=60.0, uncertain=50.0)
    with pytest.raises(ValueError, match="between 0 and 100"):
        Thresholds(p=101.0)


def test_quadrants_by_hand() -> None:
    p = np.array([0.01, 0.9, 0.02, 0.5, 0.3])
    h = np.array([0.05, 0.05, 0.9, 0.3, 0.1])
    cuts = Cuts(p=0.1, h=0.1, uncertain=0.5)
    got = assign_quadrants(p, h, cuts).tolist()
    assert got == ["confident_conflict", "confident_right", "uncertain", "other",
                   "confident_right"]


def test_percentile_thresholds_resolve_like_numpy() -> None:
    p = np.linspace(0, 1, 101)
    h = np.linspace(0, 2, 101)
    cuts = resolve_thresholds(p, h, Thresholds())
    assert (cuts.p, cuts.h, cuts.uncertain) == pytest.approx((0.15, 0.30, 1.0))
    absolute = Thresholds(p=0.2, h=0.3, uncertain=0.6, mode="absolute")
    assert resolve_thresholds(p, h, absolute) == Cuts(0.2, 0.3, 0.6)


def test_quadrant_shares_by_hand() -> None:
    quadrant = np.array(["confident_conflict", "confident_right", "uncertain", "uncertain"],
                        dtype=object)
    ce = np.array([4.0, 1.0, 2.0, 1.0])
    g = np.array([1.0, 0.5, 0.5, 1.0])
    eaft = np.array([0.1, 0.1, 0.8, 0.6])
    table = quadrant_shares(quadrant, ce, g, {"sft": np.ones(4), "eaft": eaft})
    assert table.loc["confident_conflict", "token_share"] == 0.25
    assert table.loc["confident_conflict", "loss_share"] == pytest.approx(0.5)
    assert table.loc["confident_conflict", "sft_grad_share"] == pytest.approx(1 / 3)
    # EAFT pressure: 0.1, 0.05, 0.4, 0.6 of 1.15
    assert table.loc["confident_conflict", "eaft_grad_share"] == pytest.approx(0.1 / 1.15)
    assert table.loc["uncertain", "eaft_grad_share"] == pytest.approx(1.0 / 1.15)
    assert table.loc["other", "n_tokens"] == 0
    for column in ("token_share", "loss_share", "sft_grad_share", "eaft_grad_share"):
        assert table[column].sum() == pytest.approx(1.0)
