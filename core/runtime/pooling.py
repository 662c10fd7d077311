"""Pool token vectors into step vectors, as weight matrices so one matmul does a whole batch.

A step's tokens h_1..h_L (one layer) become one vector z = sum_n a_n h_n. The methods:
- "exp" / "exp3": paper's exponential pooling, w_n = (n-1)/(L-1), a = softmax(k * w), k = 1
  (paper) or k = 3 (released code); later tokens weigh more. One-token steps: the token itself.
- "mean": a_n = 1/L.
- "last": the step's last token.
- "causal": the global causal feature, an exponentially weighted mean of every response token
  so far (up to the step's end), weight exp(gamma * token_index), gamma = 0.003.
- "prefix_mean": the plain mean of every response token so far (global mean pooling, the
  SAPLMA-like baseline).
Vectors are not normalised here; features are L2-normalised where a probe reads them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

POOLINGS: tuple[str, ...] = ("exp", "exp3", "mean", "last", "causal", "prefix_mean")
CAUSAL_GAMMA = 0.003
Span = tuple[int, int]  # token positions [start, end) in the sequence


def check_poolings(methods: Sequence[str]) -> tuple[str, ...]:
    """Validate pooling names; ValueError names the unknown one and the choices."""
    for method in methods:
        if method not in POOLINGS:
            raise ValueError(f"Unknown pooling '{method}'; choose from {', '.join(POOLINGS)}.")
    return tuple(methods)


def exp_weights(length: int, k: float) -> torch.Tensor:
    """softmax(k * w), w_n = (n-1)/(L-1) for n = 1..L; [1.0] for a one-token step."""
    if length <= 1:
        return torch.ones(max(length, 1))
    w = torch.arange(length, dtype=torch.float64) / (length - 1)
    return torch.softmax(k * w, dim=0)


def span_weights(spans: Sequence[Span], seq_len: int, method: str,
                 gamma: float = CAUSAL_GAMMA) -> torch.Tensor:
    """Weights [n_spans, seq_len] whose row s pools span s (rows sum to 1).

    For "causal" and "prefix_mean" the row of span s covers every position from the first
    span's start to span s's end.
    """
    weights = torch.zeros(len(spans), seq_len, dtype=torch.float64)
    origin = spans[0][0] if spans else 0
    previous_end = origin
    for row, (start, end) in enumerate(spans):
        if not 0 <= start < end <= seq_len:
            raise ValueError(f"Step span {start}:{end} does not fit a sequence of "
                             f"{seq_len} tokens.")
        if start < previous_end:
            raise ValueError(f"Step span {start}:{end} starts before the previous step ends "
                             f"({previous_end}); steps must be in order and not overlap.")
        previous_end = end
        length = end - start
        if method == "exp":
            weights[row, start:end] = exp_weights(length, 1.0)
        elif method == "exp3":
            weights[row, start:end] = exp_weights(length, 3.0)
        elif method == "mean":
            weights[row, start:end] = 1.0 / length
        elif method == "last":
            weights[row, end - 1] = 1.0
        elif method == "causal":
            idx = torch.arange(end - origin, dtype=torch.float64)
            w = torch.exp(gamma * idx)
            weights[row, origin:end] = w / w.sum()
        elif method == "prefix_mean":
            weights[row, origin:end] = 1.0 / (end - origin)
        else:
            check_poolings([method])
    return weights


def batch_span_weights(spans: Sequence[Sequence[Span]], seq_len: int, method: str,
                       gamma: float = CAUSAL_GAMMA) -> torch.Tensor:
    """Weights [batch, max_spans, seq_len], zero rows where a sequence has fewer spans."""
    max_spans = max((len(s) for s in spans), default=0)
    out = torch.zeros(len(spans), max_spans, seq_len, dtype=torch.float64)
    for b, seq_spans in enumerate(spans):
        if seq_spans:
            out[b, : len(seq_spans)] = span_weights(seq_spans, seq_len, method, gamma)
    return out
