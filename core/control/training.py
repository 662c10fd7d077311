"""Fine-tune and measure one model: the pieces `core.control.finetune` compares methods with.

Measures: mean CE over the response tokens (`mean_response_loss`), and the share of greedy
replies that give an example's `answer` (`answer_accuracy`; NaN where no example has one).
Training: a copy of the model (every weight, or LoRA adapters) trained by `train` with a gated
loss (`core.control.eaft`) and AdamW or SGD (`make_optimizer`) at a constant learning rate,
without gradient clipping; `displacement` is how far its weights moved (|dtheta|).
"""

from __future__ import annotations

import copy
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from core.control.eaft import LossConfig, gated_loss
from core.control.finetune_data import EncodedExample, FinetuneExample, collate, prompt_text
from core.data.answers import reply_is_correct
from core.progress import Progress

OPTIMIZERS = ("adamw", "sgd")


# ---------------------------------------------------------------------------- measuring


def answer_matches(reply: str, answer: str, mode: str = "final") -> bool:
    """Does the reply give the answer? `answer` may list alternatives separated by "|".

    mode="final": a number must be the reply's stated final answer (`core.data.answers`: an
    explicit "Answer: N", "#### N", "\\boxed{N}" or "The answer is N"), for worked solutions;
    words must appear in the reply. mode="contains": every alternative, number or words, must
    appear as whole words (ignoring case), for short factual replies that go on after the
    answer.
    """
    if mode not in ("final", "contains"):
        raise ValueError(f"mode must be 'final' or 'contains', not {mode!r}.")
    for option in (a.strip() for a in answer.split("|") if a.strip()):
        try:
            number = float(option.replace(",", ""))
        except ValueError:
            number = None
        if number is not None and mode == "final":
            if reply_is_correct(reply, number):
                return True
            continue
        pattern = r"(?<!\w)" + re.escape(option.lower()) + r"(?!\w)"
        if re.search(pattern, reply.lower()):
            return True
    return False


@torch.no_grad()
def greedy_replies(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                   batch_size: int = 16, progress: Progress | None = None) -> list[str]:
    """Greedy continuation of each (already templated) prompt, left-padded in batches."""
    replies: list[str] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    try:
        for lo in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[lo : lo + batch_size]), return_tensors="pt",
                              padding=True, add_special_tokens=False).to(device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=pad_id)
            new = out[:, batch["input_ids"].shape[1] :]
            replies.extend(r.strip() for r in tokenizer.batch_decode(new,
                                                                     skip_special_tokens=True))
            if progress:
                progress(min(lo + batch_size, len(prompts)), len(prompts))
    finally:
        tokenizer.padding_side = old_side
    return replies


@torch.no_grad()
def mean_response_loss(model: Any, encoded: Sequence[EncodedExample], pad_id: int,
                       batch_size: int = 8) -> float:
    """Mean CE over all response tokens of the examples (token-weighted)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for lo in range(0, len(encoded), batch_size):
        batch = collate(encoded[lo : lo + batch_size], pad_id, with_new_facts=False)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device), use_cache=False).logits
        out = gated_loss(logits, batch["labels"], LossConfig(kind="sft"))
        total += float(out.loss) * out.n_tokens
        count += out.n_tokens
    return total / count if count else math.nan


def answer_accuracy(model: Any, tokenizer: Any, examples: Sequence[FinetuneExample],
                    max_new_tokens: int, batch_size: int = 16, mode: str = "final") -> float:
    """Share of the examples with an `answer` that the model's greedy reply gets right
    (`answer_matches` with `mode`)."""
    checkable = [e for e in examples if e.answer is not None and e.text is None]
    if not checkable:
        return math.nan
    replies = greedy_replies(model, tokenizer, [prompt_text(tokenizer, e) for e in checkable],
                             max_new_tokens, batch_size)
    right = [answer_matches(r, e.answer or "", mode)
             for r, e in zip(replies, checkable, strict=True)]
    return sum(right) / len(right)


# ---------------------------------------------------------------------------- training


def split_holdout(examples: Sequence[FinetuneExample], share: float,
                  seed: int = 0) -> tuple[list[FinetuneExample], list[FinetuneExample]]:
    """(train, held out): a seeded shuffle, at least one example on each side."""
    if len(examples) < 2:
        raise ValueError("Need at least two target examples to hold some out.")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_held = min(max(1, round(len(examples) * share)), len(examples) - 1)
    held = sorted(order[:n_held])
    kept = sorted(order[n_held:])
    return [examples[i] for i in kept], [examples[i] for i in held]


def batch_schedule(n_examples: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """The example indices of every step: seeded shuffled epochs, cut into batches."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        epoch = list(range(n_examples))
        rng.shuffle(epoch)
        order += epoch
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def trainable_copy(reference: torch.nn.Module, lora: bool = False,
                   rank: int = 8) -> torch.nn.Module:
    """A copy of the model to fine-tune: every weight trainable, or LoRA adapters (peft) on
    every linear layer but the output head."""
    model = copy.deepcopy(reference)
    if not lora:
        model.requires_grad_(True)
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ValueError("LoRA needs the peft package: run `pip install peft`, or leave out "
                         "--lora to fine-tune every weight.") from err
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                        target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def make_optimizer(params: Iterable[torch.nn.Parameter], name: str,
                   lr: float) -> torch.optim.Optimizer:
    """AdamW without weight decay, or plain SGD (no momentum, no decay).

    Under AdamW, multiplying the loss by c > 0 leaves the update (almost) unchanged: the first
    and second moments scale by c and c^2 and the ratio cancels (up to eps). Under SGD the
    update is lr * c * gradient, so a loss scale is a learning-rate scale.
    """
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=0.0)
    raise ValueError(f"The optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}.")


@torch.no_grad()
def displacement(model: torch.nn.Module, reference: torch.nn.Module) -> float:
    """|dtheta| = sqrt(sum over weights of ||W - W_base||_F^2), of the weights the model computes
    with: for a LoRA model (peft) the adapters' dW = scale * B A of every adapted layer (the base
    weights are frozen); otherwise every parameter against the reference's of the same name."""
    total = 0.0
    adapted: list[Any] = [m for m in model.modules()
                          if hasattr(m, "get_delta_weight") and hasattr(m, "lora_A")]
    if adapted:
        for module in adapted:
            for name in module.active_adapters:
                if name in module.lora_A:
                    total += float(module.get_delta_weight(name).float().pow(2).sum())
        return math.sqrt(total)
    base = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        if name not in base:
            raise ValueError(f"The reference model has no parameter {name}.")
        total += float((param.float() - base[name].float()).pow(2).sum())
    return math.sqrt(total)


@dataclass(frozen=True)
class TrainLog:
    """What one fine-tuning run saw, per step."""

    gate_means: tuple[float, ...]
    sft_losses: tuple[float, ...]
    n_tokens: tuple[int, ...]
    seconds: float

    @property
    def mean_gate(self) -> float:
        """Token-weighted mean of the gate over the whole run."""
        total = sum(self.n_tokens)
        if total == 0:
            return math.nan
        return sum(g * n for g, n in zip(self.gate_means, self.n_tokens, strict=True)) / total


def train(model: torch.nn.Module, encoded: Sequence[EncodedExample],
          schedule: Sequence[Sequence[int]], loss_config: LossConfig, lr: float, pad_id: int,
          reference: torch.nn.Module | None = None,
          on_step: Callable[[int], None] | None = None, optimizer: str = "adamw",
          checkpoints: Iterable[int] = (),
          on_checkpoint: Callable[[int], None] | None = None) -> TrainLog:
    """`optimizer` (AdamW or SGD, `make_optimizer`) at a constant `lr` over the scheduled
    batches with the gated loss of `loss_config` (`reference` is the frozen base for "sft_kl").
    After each step in `checkpoints`, `on_checkpoint(step)` runs with the model in eval mode
    (its time is not counted in `seconds`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, optimizer, lr)
    device = next(model.parameters()).device
    marks = set(checkpoints)
    gates, losses, counts = [], [], []
    seconds = 0.0
    model.train()
    for step, indices in enumerate(schedule, start=1):
        start = time.perf_counter()
        batch = collate([encoded[i] for i in indices], pad_id, with_new_facts=True)
        inputs = {"input_ids": batch["input_ids"].to(device),
                  "attention_mask": batch["attention_mask"].to(device)}
        logits = model(**inputs, use_cache=False).logits
        base_logits = None
        if loss_config.kind == "sft_kl" and reference is not None:
            with torch.no_grad():
                base_logits = reference(**inputs, use_cache=False).logits
        out = gated_loss(logits, batch["labels"], loss_config, base_logits=base_logits,
                         new_fact_mask=batch["new_fact_mask"])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        seconds += time.perf_counter() - start
        gates.append(out.gate_mean)
        losses.append(out.sft_loss)
        counts.append(out.n_tokens)
        if on_step:
            on_step(step)
        if on_checkpoint and step in marks:
            model.eval()
            on_checkpoint(step)
            model.train()
    model.eval()
    return TrainLog(tuple(gates), tuple(losses), tuple(counts), seconds)


__all__ = [
    "OPTIMIZERS", "TrainLog", "answer_accuracy", "answer_matches", "batch_schedule",
    "displacement", "greedy_replies", "make_optimizer", "mean_response_loss", "split_holdout",
    "train", "trainable_copy",
]
