"""Does EAFT protect the model? Fine-tune copies of one model on the same target data with SFT,
EAFT, SFT + KL, the hard mask, and SFT at EAFT's effective learning rate, then measure what each
learned (held-out target data) and what each forgot (general data), before and after.

    table = finetune_compare(loaded, train=target_examples, general=general_examples,
                             config=CompareConfig(steps=30), progress=update)

Every method starts from the same weights, sees the same batches in the same order (same seed)
and uses AdamW at a constant learning rate without gradient clipping (clipping would cut SFT's
larger gradients and blur the comparison). "sft_lr_matched" runs plain SFT at lr x EAFT's mean
gate: EAFT's weights are <= 1, so part of its protection may be only a smaller update, and this
control separates the two. Measures: mean CE over the response tokens (loss), and the share of
greedy replies that give `answer` (accuracy; NaN where no example has one): on the target set
the final number must match, on the general set the answer must appear in the reply.
"""

from __future__ import annotations

import copy
import gc
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from core.control.eaft import LossConfig, gated_loss
from core.control.finetune_data import (
    EncodedExample,
    FinetuneExample,
    collate,
    encode_examples,
    prompt_text,
)
from core.data.answers import reply_is_correct
from core.progress import Progress
from core.runtime.models import LoadedModel

METHODS = ("sft", "eaft", "sft_kl", "hard_mask", "sft_lr_matched")
_LOSS_KIND = {"sft": "sft", "eaft": "eaft", "sft_kl": "sft_kl", "hard_mask": "hard_mask",
              "sft_lr_matched": "sft"}
TABLE_COLUMNS = ("method", "lr", "steps", "mean_gate", "target_loss", "target_acc",
                 "general_loss", "general_acc", "d_target_loss", "d_target_acc",
                 "d_general_loss", "d_general_acc", "train_seconds")


@dataclass(frozen=True)
class CompareConfig:
    """One comparison run. `lr` None: 3e-5 for full fine-tuning, 2e-4 with LoRA."""

    methods: tuple[str, ...] = METHODS
    steps: int = 30
    batch_size: int = 4
    lr: float | None = None
    seed: int = 0
    lora: bool = False
    lora_rank: int = 8
    max_tokens: int = 384
    holdout: float = 0.25  # share of the target examples held out, when no eval set is given
    k: int = 20
    alpha: float = 1.0
    norm: str = "lnk"
    beta: float = 0.5
    mask_percentile: float = 15.0
    target_new_tokens: int = 96
    general_new_tokens: int = 40
    eval_batch_size: int = 16
    max_eval: int | None = None  # at most this many held-out target and general examples

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"Methods must be some of {', '.join(METHODS)}; got "
                             f"{', '.join(self.methods) or 'none'}.")
        if "sft_lr_matched" in self.methods and (
                "eaft" not in self.methods
                or self.methods.index("eaft") > self.methods.index("sft_lr_matched")):
            raise ValueError("sft_lr_matched needs EAFT's mean gate: put 'eaft' before it.")
        if self.steps < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("steps and batch sizes must be at least 1.")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"The learning rate must be positive, got {self.lr}.")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"The held-out share must be in (0, 1), got {self.holdout}.")
        if self.max_eval is not None and self.max_eval < 1:
            raise ValueError(f"max_eval must be at least 1, got {self.max_eval}.")
        if self.lora_rank < 1:
            raise ValueError(f"The LoRA rank must be at least 1, got {self.lora_rank}.")
        LossConfig(k=self.k, alpha=self.alpha, norm=self.norm, beta=self.beta,
                   mask_percentile=self.mask_percentile)  # checks those

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-4 if self.lora else 3e-5

    def loss_config(self, method: str) -> LossConfig:
        return LossConfig(kind=_LOSS_KIND[method], k=self.k, alpha=self.alpha, norm=self.norm,
                          beta=self.beta, mask_percentile=self.mask_percentile)


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


@dataclass(frozen=True)
class EvalSets:
    target: list[FinetuneExample]
    target_encoded: list[EncodedExample]
    general: list[FinetuneExample]
    general_encoded: list[EncodedExample]


def evaluate(model: Any, tokenizer: Any, sets: EvalSets, config: CompareConfig) -> dict[str, float]:
    """target_loss, target_acc, general_loss, general_acc of one model."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.eval()
    return {
        "target_loss": mean_response_loss(model, sets.target_encoded, pad_id),
        "target_acc": answer_accuracy(model, tokenizer, sets.target, config.target_new_tokens,
                                      config.eval_batch_size),
        "general_loss": mean_response_loss(model, sets.general_encoded, pad_id),
        "general_acc": answer_accuracy(model, tokenizer, sets.general, config.general_new_tokens,
                                       config.eval_batch_size, mode="contains"),
    }


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
          on_step: Callable[[int], None] | None = None) -> TrainLog:
    """AdamW at a constant `lr` over the scheduled batches with the gated loss of
    `loss_config` (`reference` is the frozen base for "sft_kl")."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = next(model.parameters()).device
    gates, losses, counts = [], [], []
    start = time.perf_counter()
    model.train()
    for step, indices in enumerate(schedule, start=1):
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
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        gates.append(out.gate_mean)
        losses.append(out.sft_loss)
        counts.append(out.n_tokens)
        if on_step:
            on_step(step)
    model.eval()
    return TrainLog(tuple(gates), tuple(losses), tuple(counts), time.perf_counter() - start)


def _row(method: str, lr: float, steps: int, gate: float, metrics: dict[str, float],
         base: dict[str, float], seconds: float) -> dict[str, Any]:
    deltas = {f"d_{name}": metrics[name] - base[name] for name in metrics}
    return {"method": method, "lr": lr, "steps": steps, "mean_gate": gate, **metrics, **deltas,
            "train_seconds": seconds}


def finetune_compare(loaded: LoadedModel, train_examples: Sequence[FinetuneExample],
                     general: Sequence[FinetuneExample], config: CompareConfig | None = None,
                     target_eval: Sequence[FinetuneExample] | None = None,
                     progress: Progress | None = None) -> pd.DataFrame:
    """One row for the base model and one per method: losses and accuracies after fine-tuning
    and their change from the base (d_*). Without `target_eval`, `config.holdout` of the target
    examples is held out. Progress counts training steps and evaluations."""
    config = config or CompareConfig()
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if target_eval is None:
        train_set, held = split_holdout(train_examples, config.holdout, config.seed)
    else:
        train_set, held = list(train_examples), list(target_eval)
    encoded, _ = encode_examples(tokenizer, train_set, config.max_tokens)
    if not encoded:
        raise ValueError("No training example fits: every one lacks response tokens within "
                         f"{config.max_tokens} tokens.")
    general = list(general)
    if config.max_eval is not None:
        held, general = held[: config.max_eval], general[: config.max_eval]
    sets = EvalSets(held, encode_examples(tokenizer, held, config.max_tokens)[0],
                    general, encode_examples(tokenizer, general, config.max_tokens)[0])
    schedule = batch_schedule(len(encoded), config.steps, config.batch_size, config.seed)
    total = len(config.methods) * (config.steps + 1) + 1
    done = 0

    def tick(count: int = 1) -> None:
        nonlocal done
        done += count
        if progress:
            progress(done, total)

    with loaded.lock:
        reference = copy.deepcopy(loaded.model)  # private frozen base: the shared one stays free
    reference.eval()
    reference.requires_grad_(False)
    base = evaluate(reference, tokenizer, sets, config)
    tick()
    rows = [_row("base", 0.0, 0, math.nan, base, base, 0.0)]
    eaft_gate = None
    for method in config.methods:
        lr = config.learning_rate
        if method == "sft_lr_matched":
            lr *= eaft_gate if eaft_gate is not None else 1.0
        torch.manual_seed(config.seed)
        model = trainable_copy(reference, config.lora, config.lora_rank)
        log = train(model, encoded, schedule, config.loss_config(method), lr, pad_id,
                    reference=reference, on_step=lambda _: tick())
        if method == "eaft":
            eaft_gate = log.mean_gate
        metrics = evaluate(model, tokenizer, sets, config)
        tick()
        rows.append(_row(method, lr, config.steps, log.mean_gate, metrics, base, log.seconds))
        del model
        gc.collect()
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


__all__ = [
    "METHODS", "TABLE_COLUMNS", "CompareConfig", "EvalSets", "TrainLog", "answer_accuracy",
    "answer_matches", "batch_schedule", "evaluate", "finetune_compare", "greedy_replies",
    "mean_response_loss", "split_holdout", "train", "trainable_copy",
]
