"""Batched sampling of replies: the model writes its own chains of thought.

Prompts are left-padded so every row's next token sits at the same position; sampling is seeded
per batch, so a rerun with the same arguments writes the same text on the same machine. A reply
is the decoded text of the generated tokens as it is (no stripping): the text a probe later
reads teacher-forced is the text the model produced. An optional stop rule ends a row once the
text so far is complete (e.g. `core.data.answers.AnswerFormat.reply_end`: after the line of the
answer statement); the reply keeps every token generated up to that point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from core.progress import Progress
from core.runtime.chat import user_prompt
from core.runtime.models import LoadedModel

StopRule = Callable[[str], "int | None"]  # text so far -> where the reply ends, None: go on


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


class _StopCriteria(StoppingCriteria):
    """Per row: done once `stop` finds an end in the row's generated text (stays done)."""

    def __init__(self, tokenizer: Any, prompt_length: int, stop: StopRule) -> None:
        self.tokenizer, self.prompt_length, self.stop = tokenizer, prompt_length, stop
        self.done: list[bool] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any,
                 **kwargs: Any) -> torch.BoolTensor:
        if self.done is None:
            self.done = [False] * input_ids.shape[0]
        for row in range(input_ids.shape[0]):
            if not self.done[row]:
                text = self.tokenizer.decode(input_ids[row, self.prompt_length:],
                                             skip_special_tokens=True)
                self.done[row] = self.stop(text) is not None
        return torch.tensor(self.done, dtype=torch.bool,  # type: ignore[return-value]
                            device=input_ids.device)


@torch.no_grad()
def sample_replies(loaded: LoadedModel, prompts: Sequence[str], sampling: SamplingConfig,
                   batch_size: int = 8, progress: Progress | None = None,
                   done: Mapping[int, str] | None = None,
                   on_batch: Callable[[int, list[str]], None] | None = None,
                   stop: StopRule | None = None) -> list[str]:
    """One sampled reply per prompt text (already through the chat template; repeat a prompt
    to get several samples of it).

    Batch b is seeded from (seed, b's first index) alone, so a rerun that reuses the replies
    in `done` (index -> reply) and samples only the missing batches writes the same text;
    `on_batch(first_index, replies)` is called after each sampled batch (e.g. to journal it).
    `stop(text)` ends a row's generation once it returns an index (see the module docstring).
    """
    tokenizer = loaded.tokenizer
    done = done or {}
    replies: list[str] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for lo in range(0, len(prompts), batch_size):
            chunk = list(prompts[lo : lo + batch_size])
            if all(i in done for i in range(lo, lo + len(chunk))):
                replies.extend(done[i] for i in range(lo, lo + len(chunk)))
                if progress:
                    progress(lo + len(chunk), len(prompts))
                continue
            batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            batch = {k: v.to(loaded.input_device) for k, v in batch.items()}
            prompt_length = batch["input_ids"].shape[1]
            criteria = StoppingCriteriaList(
                [_StopCriteria(tokenizer, prompt_length, stop)] if stop else [])
            torch.manual_seed(sampling.seed * 100_003 + lo)
            greedy = sampling.temperature == 0
            with loaded.lock:
                out = loaded.model.generate(  # type: ignore[operator]
                    **batch, max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
                    temperature=None if greedy else sampling.temperature,
                    top_p=None if greedy else sampling.top_p,
                    pad_token_id=tokenizer.pad_token_id, stopping_criteria=criteria,
                )
            sampled = tokenizer.batch_decode(out[:, prompt_length:], skip_special_tokens=True)
            replies.extend(sampled)
            if on_batch:
                on_batch(lo, sampled)
            if progress:
                progress(min(lo + batch_size, len(prompts)), len(prompts))
    finally:
        tokenizer.padding_side = old_side
    return replies


def sample_responses(loaded: LoadedModel, questions: Sequence[str], sampling: SamplingConfig,
                     batch_size: int = 8, progress: Progress | None = None,
                     done: Mapping[int, str] | None = None,
                     on_batch: Callable[[int, list[str]], None] | None = None,
                     stop: StopRule | None = None) -> list[str]:
    """`sample_replies` for plain user messages: each question goes through the chat template
    (`core.runtime.chat.user_prompt`) first."""
    prompts = [user_prompt(loaded.tokenizer, question) for question in questions]
    return sample_replies(loaded, prompts, sampling, batch_size=batch_size, progress=progress,
                          done=done, on_batch=on_batch, stop=stop)
