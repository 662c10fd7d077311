"""Sampling with common random numbers: trial i of every condition draws the same random numbers,
so two conditions differ only by what was injected (paired comparisons).

`generate`'s own sampler draws from one global stream for the whole batch, so a row's draws
depend on the batch it lands in and on every condition sampled before. Here each trial owns a
generator seeded from (seed, trial index) alone, and the next token is drawn by the Gumbel-max
trick: argmax over tokens of logits / T + G, with G ~ Gumbel(0, 1) drawn from the trial's
generator, is an exact sample from softmax(logits / T) (restricted to the top-p nucleus). The
argmax is `generate`'s greedy step, so any model `generate` supports samples this way. Every step
draws one value per vocabulary entry, whatever the row's text, so the streams stay aligned: when
two conditions give a step the same distribution they pick the same token.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor


def stable_seed(*parts: object) -> int:
    """A seed from the parts' repr (the same on every run and machine)."""
    return zlib.crc32(repr(parts).encode("utf-8"))


def trial_seeds(seed: int, trials: Sequence[int], *scope: object) -> list[int]:
    """One seed per trial index, from the run's seed, the index and an optional scope (e.g. the
    prefill item): never from the condition, layer or strength, so those share it."""
    return [stable_seed(seed, *scope, "trial", int(t)) for t in trials]


def nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """`scores` [batch, vocab] with every token outside the top-p nucleus set to -inf (the most
    likely token always stays)."""
    if top_p >= 1.0:
        return scores
    ordered, order = scores.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
    drop_sorted = before >= top_p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


class GumbelSampler(LogitsProcessor):
    """A logits processor for greedy `generate` that turns its argmax into a sample at
    `temperature` from the top-p nucleus, row r drawing from a generator seeded `seeds[r]`."""

    def __init__(self, seeds: Sequence[int], temperature: float = 1.0, top_p: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def gumbel(self, vocab: int) -> torch.Tensor:
        """The next step's noise [rows, vocab]: one Gumbel(0, 1) draw per token and row."""
        uniform = torch.stack([torch.rand(vocab, generator=g) for g in self.generators])
        return -torch.log(-torch.log(uniform))

    def __call__(self, input_ids: torch.LongTensor,
                 scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"The sampler has {len(self.generators)} seeds for a batch of "
                             f"{scores.shape[0]} rows.")
        logits = nucleus(scores.float() / self.temperature, self.top_p)
        noise = self.gumbel(scores.shape[-1]).to(logits.device)
        return logits + noise  # type: ignore[return-value]
