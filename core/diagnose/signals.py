"""Per-token and per-step uncertainty signals from the logits: the baselines every probe faces.

For the token at position t (predicted from logits at t-1):
    entropy_t = -sum_v p_v log p_v          (full-vocabulary entropy of the prediction)
    nll_t     = -log p(token_t)
Per step: mean entropy, mean and max NLL, min token probability (= exp(-max NLL)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.runtime.pooling import Span

SIGNAL_NAMES: tuple[str, ...] = ("mean_entropy", "mean_nll", "max_nll", "min_prob")


def token_entropy_nll(logits: torch.Tensor, input_ids: torch.Tensor,
                      chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and NLL of each token given its prefix, [batch, seq] each (position 0 is NaN).

    Works through the sequence in chunks so only [batch, chunk, vocab] float32 lives at once.
    """
    batch, seq, _ = logits.shape
    entropy = torch.full((batch, seq), float("nan"))
    nll = torch.full((batch, seq), float("nan"))
    for lo in range(0, seq - 1, chunk):
        hi = min(lo + chunk, seq - 1)
        logp = torch.log_softmax(logits[:, lo:hi].float(), dim=-1)  # predicts tokens lo+1..hi
        entropy[:, lo + 1 : hi + 1] = -(logp.exp() * logp).sum(-1).cpu()
        target = input_ids[:, lo + 1 : hi + 1].to(logp.device).unsqueeze(-1)
        nll[:, lo + 1 : hi + 1] = -logp.gather(-1, target).squeeze(-1).cpu()
    return entropy, nll


def step_signals(entropy: torch.Tensor, nll: torch.Tensor,
                 spans: Sequence[Span]) -> list[dict[str, float]]:
    """Aggregate one sequence's token signals ([seq] each) over its step spans."""
    rows = []
    for start, end in spans:
        ent = entropy[start:end]
        step_nll = nll[start:end]
        max_nll = float(step_nll.max())
        rows.append({
            "mean_entropy": float(ent.mean()),
            "mean_nll": float(step_nll.mean()),
            "max_nll": max_nll,
            "min_prob": float(torch.exp(torch.tensor(-max_nll))),
        })
    return rows
