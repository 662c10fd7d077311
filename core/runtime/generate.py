"""Batched sampling of responses: the default model writes its own chains of thought.

Prompts are left-padded so every row's next token sits at the same position; sampling is seeded
per batch, so a rerun with the same arguments writes the same text on the same machine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from core.progress import Progress
from core.runtime.chat import user_prompt
from core.runtime.models import LoadedModel


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")


@torch.no_grad()
def sample_responses(loaded: LoadedModel, questions: Sequence[str], sampling: SamplingConfig,
                     batch_size: int = 8, progress: Progress | None = None,
                     done: Mapping[int, str] | None = None,
                     on_batch: Callable[[int, list[str]], None] | None = None) -> list[str]:
    """One sampled reply per question (repeat a question to get several samples of it).

    Batch b is seeded from (seed, b's first index) alone, so a rerun that reuses the replies
    in `done` (index -> reply) and samples only the missing batches writes the same text;
    `on_batch(first_index, replies)` is called after each sampled batch (e.g. to journal it).
    """
    tokenizer = loaded.tokenizer
    prompts = [user_prompt(tokenizer, q) for q in questions]
    done = done or {}
    replies: list[str] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for lo in range(0, len(prompts), batch_size):
            chunk = prompts[lo : lo + batch_size]
            if all(i in done for i in range(lo, lo + len(chunk))):
                replies.extend(done[i] for i in range(lo, lo + len(chunk)))
                if progress:
                    progress(lo + len(chunk), len(prompts))
                continue
            batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            batch = {k: v.to(loaded.input_device) for k, v in batch.items()}
            torch.manual_seed(sampling.seed * 100_003 + lo)
            greedy = sampling.temperature == 0
            with loaded.lock:
                out = loaded.model.generate(  # type: ignore[operator]
                    **batch, max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
                    temperature=None if greedy else sampling.temperature,
                    top_p=None if greedy else sampling.top_p,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = out[:, batch["input_ids"].shape[1] :]
            sampled = [r.strip() for r in tokenizer.batch_decode(new, skip_special_tokens=True)]
            replies.extend(sampled)
            if on_batch:
                on_batch(lo, sampled)
            if progress:
                progress(min(lo + batch_size, len(prompts)), len(prompts))
    finally:
        tokenizer.padding_side = old_side
    return replies
