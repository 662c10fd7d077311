"""Token statistics of a fine-tuning batch: how sure the model is, and whether it agrees.

For each response token y_t, predicted by the logits z at the position before it:
    p_t      = softmax(z)[y_t]                               probability of the target
    CE_t     = -log p_t                                       the SFT loss of the token
    H_K      = -sum_{i in top K} q_i log q_i,  q = softmax(top-K logits)   (K = 20 default)
    H_full   = -sum_v softmax(z)_v log softmax(z)_v
    H~_t     = H_K / ln K  (norm="lnk", the paper)  or  H_K / 3.0  (norm="code", the released
               code; for K = 20 they differ by 0.14%)
    g_t      = ||softmax(z) - onehot(y_t)||_2   the norm of dCE/dz, the token's gradient pressure
Quadrants of the (p, H~) plane: confident conflict (low p and low H~: the model is sure of
something else), confident and right (low H~, p not low), uncertain (high H~), other.

Everything is computed in chunks of response positions, so at most [chunk, vocab] float32 values
live at once whatever the sequence length and vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

IGNORE_INDEX = -100
NORMS = ("lnk", "code")
CODE_NORM = 3.0  # the released code's divisor
QUADRANTS = ("confident_conflict", "confident_right", "uncertain", "other")
THRESHOLD_MODES = ("percentile", "absolute")


def topk_entropy(logits: torch.Tensor, k: int = 20) -> torch.Tensor:
    """Entropy over the renormalised top-K logits, [..., V] -> [...] float32.

    Naive: q = softmax(sort(z)[-K:]);  H_K = -sum_i q_i log q_i.  K larger than V means K = V.
    """
    if k < 1:
        raise ValueError(f"K must be at least 1, got {k}.")
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).values.float()
    logq = torch.log_softmax(top, dim=-1)
    return -(logq.exp() * logq).sum(-1)


def full_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the whole distribution, [..., V] -> [...] float32.

    Naive: p = softmax(z);  H = -sum_v p_v log p_v  (0 log 0 = 0).
    """
    p = torch.softmax(logits.float(), dim=-1)
    return torch.special.entr(p).sum(-1)


def normalise_entropy(entropy: torch.Tensor, k: int, norm: str = "lnk") -> torch.Tensor:
    """H~ = H_K / ln K (norm="lnk") or H_K / 3.0 (norm="code"). K = 1 gives 0 (H_1 is 0)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}.")
    divisor = CODE_NORM if norm == "code" else math.log(k)
    return entropy / divisor if divisor > 0 else torch.zeros_like(entropy)


def gradient_norm(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||p - onehot(y)||_2 = sqrt(sum_v p_v^2 - 2 p_y + 1), [n, V], [n] -> [n].

    This is the norm of d CE / d logits, how hard plain SFT pushes on the token.
    """
    p_y = probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return ((probs * probs).sum(-1) - 2 * p_y + 1).clamp_min(0).sqrt()


@dataclass(frozen=True)
class TokenStats:
    """Statistics of every response token of a batch, flattened in (row, position) order.

    All tensors are [n] on the CPU (float32, or int64 for ids and places). `position` is the
    target token's index in its sequence (its logits sit at position - 1).
    """

    row: torch.Tensor
    position: torch.Tensor
    target: torch.Tensor
    top_token: torch.Tensor
    p_target: torch.Tensor
    ce: torch.Tensor
    entropy_topk: torch.Tensor
    entropy_full: torch.Tensor
    entropy_norm: torch.Tensor
    grad_norm: torch.Tensor
    k: int
    norm: str

    def __len__(self) -> int:
        return int(self.row.numel())

    def to_frame(self) -> pd.DataFrame:
        """One row per token; columns named as the fields (p_target as `p`)."""
        return pd.DataFrame({
            "row": self.row.numpy(), "position": self.position.numpy(),
            "target_id": self.target.numpy(), "top_id": self.top_token.numpy(),
            "p": self.p_target.numpy(), "ce": self.ce.numpy(),
            "entropy_topk": self.entropy_topk.numpy(), "entropy_full": self.entropy_full.numpy(),
            "entropy_norm": self.entropy_norm.numpy(), "grad_norm": self.grad_norm.numpy(),
        })


def response_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) of every target token: labels[:, 1:] != -100 (position 0 is never
    predicted). Positions index the labels; the predicting logits are at position - 1."""
    rows, cols = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    return rows, cols + 1


def token_stats(logits: torch.Tensor, labels: torch.Tensor, k: int = 20, norm: str = "lnk",
                chunk: int | None = 256) -> TokenStats:
    """Per response token statistics of a batch: logits [B, T, V] (any float dtype), labels
    [B, T] unshifted with -100 outside the response. `chunk` response positions are worked on
    at once (None: all at once, the naive reference)."""
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not "
                         "match in batch and length.")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}.")
    if k < 1 or (chunk is not None and chunk < 1):
        raise ValueError(f"K and chunk must be at least 1, got K={k}, chunk={chunk}.")
    labels = labels.to(logits.device)
    rows, positions = response_positions(labels)
    n = int(rows.numel())
    step = max(n, 1) if chunk is None else chunk
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in (
        "target", "top", "p", "ce", "h_k", "h_full", "g")}
    with torch.no_grad():
        for lo in range(0, n, step):
            r, t = rows[lo : lo + step], positions[lo : lo + step]
            z = logits[r, t - 1].float()  # [c, V]
            target = labels[r, t]
            logp = torch.log_softmax(z, dim=-1)
            probs = logp.exp()
            parts["target"].append(target)
            parts["top"].append(z.argmax(-1))
            parts["p"].append(probs.gather(-1, target.unsqueeze(-1)).squeeze(-1))
            parts["ce"].append(-logp.gather(-1, target.unsqueeze(-1)).squeeze(-1))
            parts["h_k"].append(topk_entropy(z, k))
            parts["h_full"].append(torch.special.entr(probs).sum(-1))
            parts["g"].append(gradient_norm(probs, target))
            del z, logp, probs

    def joined(name: str, dtype: torch.dtype) -> torch.Tensor:
        items = parts[name]
        return torch.cat(items).cpu().to(dtype) if items else torch.zeros(0, dtype=dtype)

    h_k = joined("h_k", torch.float32)
    return TokenStats(
        row=rows.cpu(), position=positions.cpu(), target=joined("target", torch.long),
        top_token=joined("top", torch.long), p_target=joined("p", torch.float32),
        ce=joined("ce", torch.float32), entropy_topk=h_k,
        entropy_full=joined("h_full", torch.float32),
        entropy_norm=normalise_entropy(h_k, k, norm), grad_norm=joined("g", torch.float32),
        k=k, norm=norm)


# ---------------------------------------------------------------------------- quadrants


@dataclass(frozen=True)
class Thresholds:
    """Where the quadrants of the (p, H~) plane are cut.

    mode="percentile": p, h and uncertain are percentiles (0-100) of the tokens at hand (the
    paper's pilot: bottom 15% of p and of H~). mode="absolute": p is a probability and h and
    uncertain are values of H~.
        low p      p_t  <= p cut        low H   H~_t <= h cut        high H   H~_t >= uncertain cut
    """

    p: float = 15.0
    h: float = 15.0
    uncertain: float = 50.0
    mode: str = "percentile"

    def __post_init__(self) -> None:
        if self.mode not in THRESHOLD_MODES:
            raise ValueError(f"Threshold mode must be 'percentile' or 'absolute', not "
                             f"{self.mode!r}.")
        top = 100.0 if self.mode == "percentile" else math.inf
        for name, value in (("p", self.p), ("h", self.h), ("uncertain", self.uncertain)):
            if not 0.0 <= value <= top or (self.mode == "absolute" and name == "p"
                                           and value > 1.0):
                limit = "between 0 and 100" if self.mode == "percentile" else (
                    "a probability in [0, 1]" if name == "p" else "at least 0")
                raise ValueError(f"The {name} threshold must be {limit}, got {value}.")
        if self.uncertain <= self.h:
            raise ValueError(f"The uncertain threshold ({self.uncertain}) must lie above the "
                             f"low-entropy threshold ({self.h}).")


@dataclass(frozen=True)
class Cuts:
    """Thresholds resolved to values of p and H~ for one set of tokens."""

    p: float
    h: float
    uncertain: float


def resolve_thresholds(p: np.ndarray, h_norm: np.ndarray, thresholds: Thresholds) -> Cuts:
    """Absolute cuts: the thresholds themselves, or those percentiles of p and H~ (linear)."""
    if thresholds.mode == "absolute":
        return Cuts(thresholds.p, thresholds.h, thresholds.uncertain)
    if p.size == 0:
        raise ValueError("No response tokens to take percentiles of.")
    return Cuts(float(np.percentile(p, thresholds.p)), float(np.percentile(h_norm, thresholds.h)),
                float(np.percentile(h_norm, thresholds.uncertain)))


def assign_quadrants(p: np.ndarray, h_norm: np.ndarray, cuts: Cuts) -> np.ndarray:
    """The quadrant name of each token (an array of strings from QUADRANTS).

    conflict: p <= p cut and H~ <= h cut; right: H~ <= h cut and p > p cut;
    uncertain: H~ >= uncertain cut; other: the rest.
    """
    low_h = h_norm <= cuts.h
    low_p = p <= cuts.p
    out = np.full(p.shape, "other", dtype=object)
    out[h_norm >= cuts.uncertain] = "uncertain"
    out[low_h & ~low_p] = "confident_right"
    out[low_h & low_p] = "confident_conflict"
    return out


def quadrant_shares(quadrant: np.ndarray, ce: np.ndarray, grad_norm: np.ndarray,
                    gates: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Per quadrant: n_tokens, token_share, loss_share (of the summed SFT loss), and for every
    gate w: {name}_grad_share = sum_q w g / sum_all w g (gradient pressure under that loss)."""
    if quadrant.size == 0:
        raise ValueError("No response tokens to summarise.")
    rows = []
    total_ce = float(ce.sum())
    totals = {name: float((np.asarray(w) * grad_norm).sum()) for name, w in gates.items()}
    for name in QUADRANTS:
        inside = quadrant == name
        row: dict[str, float | int | str] = {
            "quadrant": name, "n_tokens": int(inside.sum()),
            "token_share": float(inside.mean()),
            "loss_share": float(ce[inside].sum()) / total_ce if total_ce > 0 else 0.0,
        }
        for gate_name, weights in gates.items():
            pressure = np.broadcast_to(np.asarray(weights), grad_norm.shape)[inside]
            part = float((pressure * grad_norm[inside]).sum())
            total = totals[gate_name]
            row[f"{gate_name}_grad_share"] = part / total if total > 0 else 0.0
        rows.append(row)
    return pd.DataFrame(rows).set_index("quadrant")


__all__ = [
    "CODE_NORM", "IGNORE_INDEX", "NORMS", "QUADRANTS", "Cuts", "Thresholds", "TokenStats",
    "assign_quadrants", "full_entropy", "gradient_norm", "normalise_entropy", "quadrant_shares",
    "resolve_thresholds", "response_positions", "token_stats", "topk_entropy",
]
