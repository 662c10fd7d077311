"""Entropy-adaptive fine-tuning (EAFT) and its variants: token-gated cross-entropy losses.

Every loss here is, over the response tokens t of a batch (N of them, or `num_items` when a
trainer counts the tokens of the whole accumulated batch):
    loss = sum_t w_t * CE_t / N   (+ beta * sum_t KL_t / N for "sft_kl")
with the gate w_t computed WITHOUT gradient (detached) from the model's own prediction:
    sft        w = 1
    eaft       w = H~^alpha       (H~: normalised top-K entropy, `core.control.entropy`)
    hard_mask  w = 1[H~ > the `mask_percentile` percentile of H~ in the batch]
    sigmoid    w = sigmoid(scale * (H~ - center))          scale 30, center 0.17
    sft_kl     w = 1, plus KL(p_model || p_base) over the full vocabulary, base frozen
    three_way  w = override on confident conflicts (low p, low H~) of tokens marked as new
               facts (1 - H~, or 1), H~^alpha elsewhere: confident-and-right tokens get ~0
               (kept), uncertain ones H~ (learned), unmarked conflicts ~0 (protected).
Why detached: the gate says how much to learn from a token; letting gradient through it would
teach the model to raise its own entropy. The weights w <= 1 do not make EAFT's update smaller
under Adam(W): the update divides by the running gradient scale, so a global loss scale cancels
and the gate changes the update's direction (which tokens it learns from), not its size. Hence
`core.control.finetune` compares methods at matched progress on the target, not at a matched
learning rate (with plain SGD, where a loss scale is a learning-rate scale, it offers both).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from core.control.entropy import (
    NORMS,
    Cuts,
    Thresholds,
    normalise_entropy,
    resolve_thresholds,
    response_positions,
    topk_entropy,
)

LOSS_KINDS = ("sft", "eaft", "hard_mask", "sigmoid", "sft_kl", "three_way")
OVERRIDES = ("one_minus_h", "one")
# Confident conflict during training, in absolute terms so that the logged share means the same
# thing in every batch (a percentile would flag a fixed share of every batch): the model gives
# the target at most 10% while its normalised top-K entropy is at most 0.2. Looser than the
# bottom-15% cuts of the default model on the house-style set (p 0.004, H~ 0.06), which flag
# almost nothing there.
DEFAULT_CONFLICT = Thresholds(p=0.1, h=0.2, uncertain=0.5, mode="absolute")


@dataclass(frozen=True)
class LossConfig:
    """Which gated loss, and its parameters (see the module docstring)."""

    kind: str = "eaft"
    k: int = 20
    alpha: float = 1.0
    norm: str = "lnk"
    mask_percentile: float = 15.0
    sigmoid_scale: float = 30.0
    sigmoid_center: float = 0.17
    beta: float = 0.5
    override: str = "one_minus_h"
    conflict: Thresholds = field(default_factory=lambda: DEFAULT_CONFLICT)

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"The loss kind must be one of {', '.join(LOSS_KINDS)}, not "
                             f"{self.kind!r}.")
        if self.k < 2:
            raise ValueError(f"K must be at least 2 (the entropy of one logit is 0), got {self.k}.")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}.")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {self.norm!r}.")
        if not 0.0 <= self.mask_percentile < 100.0:
            raise ValueError(f"The mask percentile must be in [0, 100), got "
                             f"{self.mask_percentile}.")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}.")
        if self.override not in OVERRIDES:
            raise ValueError(f"override must be one of {', '.join(OVERRIDES)}, not "
                             f"{self.override!r}.")


@dataclass(frozen=True)
class LossOutput:
    """The loss (with gradient) and what a trainer logs about the batch."""

    loss: torch.Tensor
    n_tokens: int
    gate_mean: float  # mean w over the response tokens
    conflict_share: float  # share of response tokens that are confident conflicts
    sft_loss: float  # mean CE, the plain SFT loss of the same batch
    kl: float | None = None  # mean KL to the base ("sft_kl" only)


# ---------------------------------------------------------------------------- gates


def eaft_gate(h_norm: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """w = H~^alpha."""
    return h_norm.clamp_min(0) ** alpha


def hard_mask_gate(h_norm: torch.Tensor, percentile: float = 15.0) -> torch.Tensor:
    """w = 1 where H~ is strictly above the `percentile` percentile of these tokens, else 0."""
    if h_norm.numel() == 0:
        return h_norm.clone()
    cut = torch.quantile(h_norm.float(), percentile / 100.0)
    return (h_norm > cut).to(h_norm.dtype)


def sigmoid_gate(h_norm: torch.Tensor, scale: float = 30.0, center: float = 0.17) -> torch.Tensor:
    """w = sigmoid(scale * (H~ - center))."""
    return torch.sigmoid(scale * (h_norm - center))


def conflict_mask(p: torch.Tensor, h_norm: torch.Tensor, cuts: Cuts) -> torch.Tensor:
    """Confident conflicts: p <= p cut and H~ <= h cut."""
    return (p <= cuts.p) & (h_norm <= cuts.h)


def three_way_gate(h_norm: torch.Tensor, p: torch.Tensor, new_fact: torch.Tensor, cuts: Cuts,
                   alpha: float = 1.0, override: str = "one_minus_h") -> torch.Tensor:
    """w = (1 - H~ or 1) on confident conflicts marked as new facts, H~^alpha elsewhere."""
    forced = (1 - h_norm).clamp(0, 1) if override == "one_minus_h" else torch.ones_like(h_norm)
    learn = conflict_mask(p, h_norm, cuts) & new_fact.bool()
    return torch.where(learn, forced, eaft_gate(h_norm, alpha))


def conflict_cuts(p: torch.Tensor, h_norm: torch.Tensor, thresholds: Thresholds) -> Cuts:
    """The thresholds as values for these tokens (percentiles are taken over them)."""
    if thresholds.mode == "absolute" or p.numel() == 0:
        return Cuts(thresholds.p, thresholds.h, thresholds.uncertain)
    return resolve_thresholds(p.detach().float().cpu().numpy(),
                              h_norm.detach().float().cpu().numpy(), thresholds)


def token_gate(config: LossConfig, h_norm: torch.Tensor, p: torch.Tensor,
               new_fact: torch.Tensor | None = None) -> torch.Tensor:
    """The weight of each response token under `config` (no gradient is taken through it)."""
    kind = config.kind
    if kind in ("sft", "sft_kl"):
        return torch.ones_like(h_norm)
    if kind == "eaft":
        return eaft_gate(h_norm, config.alpha)
    if kind == "hard_mask":
        return hard_mask_gate(h_norm, config.mask_percentile)
    if kind == "sigmoid":
        return sigmoid_gate(h_norm, config.sigmoid_scale, config.sigmoid_center)
    facts = torch.zeros_like(h_norm, dtype=torch.bool) if new_fact is None else new_fact
    cuts = conflict_cuts(p, h_norm, config.conflict)
    return three_way_gate(h_norm, p, facts, cuts, config.alpha, config.override)


# ---------------------------------------------------------------------------- losses


def gated_loss(logits: torch.Tensor, labels: torch.Tensor, config: LossConfig | None = None, *,
               base_logits: torch.Tensor | None = None,
               new_fact_mask: torch.Tensor | None = None,
               num_items: int | torch.Tensor | None = None) -> LossOutput:
    """The loss `config` selects, on logits [B, T, V] and unshifted labels [B, T] (-100 outside
    the response). `base_logits` [B, T, V]: the frozen base model's, for "sft_kl".
    `new_fact_mask` [B, T] bool: tokens marked as new facts, for "three_way". `num_items`: the
    divisor a trainer gives (tokens of the accumulated batch); default the tokens here."""
    config = config or LossConfig()
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not "
                         "match in batch and length.")
    if config.kind == "sft_kl" and base_logits is None:
        raise ValueError("The sft_kl loss needs the base model's logits (base_logits).")
    labels = labels.to(logits.device)
    rows, positions = response_positions(labels)
    n = int(rows.numel())
    if n == 0:
        zero = logits.sum() * 0.0  # keeps the graph, so backward() still works
        return LossOutput(zero, 0, 0.0, 0.0, 0.0, 0.0 if config.kind == "sft_kl" else None)
    z = logits[rows, positions - 1]  # [n, V], predicts the target at `positions`
    target = labels[rows, positions]
    ce = F.cross_entropy(z.float(), target, reduction="none")  # [n]
    with torch.no_grad():
        h_norm = normalise_entropy(topk_entropy(z.detach(), config.k), config.k, config.norm)
        p = torch.exp(-ce.detach())
        facts = None if new_fact_mask is None else new_fact_mask.to(z.device)[rows, positions]
        gate = token_gate(config, h_norm, p, facts)
        conflict = conflict_mask(p, h_norm, conflict_cuts(p, h_norm, config.conflict))
    denominator = num_items if num_items is not None else n
    if isinstance(denominator, torch.Tensor):
        denominator = denominator.to(z.device).clamp_min(1)
    else:
        denominator = max(int(denominator), 1)
    loss = (gate * ce).sum() / denominator
    kl_mean = None
    if config.kind == "sft_kl" and base_logits is not None:
        logp = torch.log_softmax(z.float(), dim=-1)
        with torch.no_grad():
            base_logp = torch.log_softmax(base_logits.to(z.device)[rows, positions - 1].float(),
                                          dim=-1)
        kl = (logp.exp() * (logp - base_logp)).sum(-1)  # KL(p_model || p_base) per token
        loss = loss + config.beta * kl.sum() / denominator
        kl_mean = float(kl.detach().mean())
    return LossOutput(loss=loss, n_tokens=n, gate_mean=float(gate.mean()),
                      conflict_share=float(conflict.float().mean()),
                      sft_loss=float(ce.detach().mean()), kl=kl_mean)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor,
             num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """Plain cross-entropy over the response tokens: sum_t CE_t / N."""
    return gated_loss(logits, labels, LossConfig(kind="sft"), num_items=num_items).loss


def eaft_loss(logits: torch.Tensor, labels: torch.Tensor, k: int = 20, alpha: float = 1.0,
              norm: str = "lnk", num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """EAFT: sum_t H~_t^alpha * CE_t / N, the gate H~ detached."""
    config = LossConfig(kind="eaft", k=k, alpha=alpha, norm=norm)
    return gated_loss(logits, labels, config, num_items=num_items).loss


def hard_mask_loss(logits: torch.Tensor, labels: torch.Tensor, percentile: float = 15.0,
                   k: int = 20, norm: str = "lnk",
                   num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """sum_t 1[H~_t > percentile of H~] * CE_t / N (low-entropy tokens dropped)."""
    config = LossConfig(kind="hard_mask", k=k, norm=norm, mask_percentile=percentile)
    return gated_loss(logits, labels, config, num_items=num_items).loss


def sigmoid_gate_loss(logits: torch.Tensor, labels: torch.Tensor, scale: float = 30.0,
                      center: float = 0.17, k: int = 20, norm: str = "lnk",
                      num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """sum_t sigmoid(scale (H~_t - center)) * CE_t / N."""
    config = LossConfig(kind="sigmoid", k=k, norm=norm, sigmoid_scale=scale,
                        sigmoid_center=center)
    return gated_loss(logits, labels, config, num_items=num_items).loss


def sft_kl_loss(logits: torch.Tensor, labels: torch.Tensor, base_logits: torch.Tensor,
                beta: float = 0.5, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """sum_t [CE_t + beta * KL(p_model,t || p_base,t)] / N, the base frozen."""
    config = LossConfig(kind="sft_kl", beta=beta)
    return gated_loss(logits, labels, config, base_logits=base_logits, num_items=num_items).loss


def three_way_loss(logits: torch.Tensor, labels: torch.Tensor, new_fact_mask: torch.Tensor,
                   k: int = 20, alpha: float = 1.0, norm: str = "lnk",
                   override: str = "one_minus_h", conflict: Thresholds = DEFAULT_CONFLICT,
                   num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """sum_t w_t CE_t / N with the three-way gate (see the module docstring)."""
    config = LossConfig(kind="three_way", k=k, alpha=alpha, norm=norm, override=override,
                        conflict=conflict)
    return gated_loss(logits, labels, config, new_fact_mask=new_fact_mask,
                      num_items=num_items).loss


def gate_weights(config: LossConfig, h_norm: np.ndarray, p: np.ndarray,
                 new_fact: np.ndarray | None = None) -> np.ndarray:
    """`token_gate` on numpy arrays of a whole data set (percentiles over all of it): the
    per-token weights a page exports, and the gradient pressure of each loss."""
    facts = None if new_fact is None else torch.tensor(np.array(new_fact, dtype=bool))
    weights = token_gate(config, torch.tensor(np.array(h_norm, dtype=np.float32)),
                         torch.tensor(np.array(p, dtype=np.float32)), facts)
    return weights.numpy()


__all__ = [
    "DEFAULT_CONFLICT", "LOSS_KINDS", "OVERRIDES", "LossConfig", "LossOutput", "conflict_cuts",
    "conflict_mask", "eaft_gate", "eaft_loss", "gate_weights", "gated_loss", "hard_mask_gate",
    "hard_mask_loss", "sft_kl_loss", "sft_loss", "sigmoid_gate", "sigmoid_gate_loss",
    "three_way_gate", "three_way_loss", "token_gate",
]
