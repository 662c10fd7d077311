"""Does EAFT protect the model? Fine-tune copies of one model on the same target data with SFT,
EAFT, SFT + KL and the hard mask, follow each run's curve, and compare the methods where they
have made the same progress on the target: what each forgot (general data) and how far its
weights moved (|dtheta|), over several seeds.

    result = compare_methods(loaded, train_examples, general_examples,
                             CompareConfig(steps=30, repeats=3), progress=update)
    result.summary      # per method: forgetting at matched target-loss reduction, mean and spread

Every method of a seed starts from the same weights (and LoRA start), sees the same batches in
the same order, is held out on the same target examples and trains at a constant learning rate
without gradient clipping (clipping would cut SFT's larger gradients and blur the comparison).
Each run is evaluated every `eval_every` steps: held-out target loss, general loss and accuracy,
and |dtheta|; `core.control.matching` reads forgetting off each curve at the same relative
reduction of the target loss. Why not at a matched step count or learning rate: methods learn at
different speeds, and under AdamW a global loss scale cancels (the update divides by the running
gradient scale), so EAFT's weights <= 1 change the direction of its update, not its size, and SFT
at lr x EAFT's mean gate is no matched control. With `optimizer="sgd"` a loss scale is a
learning-rate scale, and only there is "sft_lr_matched" (SFT at lr x EAFT's mean gate of the same
seed) offered. Measures: mean CE over the response tokens (loss), and the share of greedy
replies that give `answer` (accuracy; NaN where no example has one): on the target set the
stated final answer must match, on the general set the answer must appear in the reply.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from core.control.eaft import LossConfig
from core.control.finetune_data import (
    EncodedExample,
    FinetuneExample,
    encode_examples,
    example_to_dict,
)
from core.control.matching import (
    CURVE_COLUMNS,
    common_reach,
    matched_table,
    paired_differences,
    relative_reduction,
    seed_summary,
)
from core.control.training import (
    OPTIMIZERS,
    answer_accuracy,
    batch_schedule,
    displacement,
    mean_response_loss,
    split_holdout,
    train,
    trainable_copy,
)
from core.data.journal import Journal
from core.progress import Progress
from core.runtime.models import LoadedModel

METHODS = ("sft", "eaft", "sft_kl", "hard_mask", "sft_lr_matched")
DEFAULT_METHODS = ("sft", "eaft", "sft_kl", "hard_mask")
_LOSS_KIND = {"sft": "sft", "eaft": "eaft", "sft_kl": "sft_kl", "hard_mask": "hard_mask",
              "sft_lr_matched": "sft"}
# constant learning rates by (optimizer, LoRA); SGD has no per-weight scaling, so it needs more
_DEFAULT_LR = {("adamw", False): 3e-5, ("adamw", True): 2e-4, ("sgd", False): 1e-2,
               ("sgd", True): 1e-1}
TABLE_COLUMNS = ("seed", "method", "optimizer", "lr", "steps", "mean_gate", "target_loss",
                 "target_acc", "general_loss", "general_acc", "d_target_loss", "d_target_acc",
                 "d_general_loss", "d_general_acc", "d_theta", "train_seconds")
LR_MATCHED_NEEDS_SGD = (
    "sft_lr_matched is a valid control only with the SGD optimizer: under AdamW a loss scale "
    "cancels, so EAFT's gate does not shrink its update and SFT at lr x mean gate is no match. "
    "Compare at matched target-loss reduction instead (the default), or use --optimizer sgd.")


@dataclass(frozen=True)
class CompareConfig:
    """One comparison. `lr` None: see _DEFAULT_LR (AdamW 3e-5, 2e-4 with LoRA). Seeds are
    seed, seed + 1, ..., seed + repeats - 1. `eval_every` None: a sixth of the steps.
    `match_at`: relative target-loss reductions to compare at; empty: the largest one every
    run reaches. `curve_accuracy` False: general accuracy (greedy replies) only at the end."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    steps: int = 30
    batch_size: int = 4
    lr: float | None = None
    seed: int = 0
    repeats: int = 1
    optimizer: str = "adamw"
    eval_every: int | None = None
    curve_accuracy: bool = True
    match_at: tuple[float, ...] = ()
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
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"Each method once, please: got {', '.join(self.methods)}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"The optimizer must be one of {', '.join(OPTIMIZERS)}, not "
                             f"{self.optimizer!r}.")
        if "sft_lr_matched" in self.methods:
            if self.optimizer != "sgd":
                raise ValueError(LR_MATCHED_NEEDS_SGD)
            if ("eaft" not in self.methods
                    or self.methods.index("eaft") > self.methods.index("sft_lr_matched")):
                raise ValueError("sft_lr_matched needs EAFT's mean gate: put 'eaft' before it.")
        if self.steps < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("steps and batch sizes must be at least 1.")
        if self.repeats < 1:
            raise ValueError(f"repeats (seeds) must be at least 1, got {self.repeats}.")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every must be at least 1, got {self.eval_every}.")
        if any(not 0.0 < level < 1.0 for level in self.match_at):
            raise ValueError("Matched reductions are shares of the base target loss, in (0, 1); "
                             f"got {', '.join(f'{v:g}' for v in self.match_at)}.")
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
        return _DEFAULT_LR[(self.optimizer, self.lora)]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.repeats))

    @property
    def evaluation_steps(self) -> tuple[int, ...]:
        """The steps after which each run is evaluated: every eval_every, and the last."""
        every = self.eval_every or max(1, self.steps // 6)
        return tuple(sorted({*range(every, self.steps + 1, every), self.steps}))

    def loss_config(self, method: str) -> LossConfig:
        return LossConfig(kind=_LOSS_KIND[method], k=self.k, alpha=self.alpha, norm=self.norm,
                          beta=self.beta, mask_percentile=self.mask_percentile)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the learning rate the runs use."""
        out = asdict(self)
        out.update(methods=list(self.methods), match_at=list(self.match_at),
                   learning_rate=self.learning_rate, seeds=list(self.seeds),
                   evaluation_steps=list(self.evaluation_steps))
        return out


@dataclass(frozen=True)
class EvalSets:
    target: list[FinetuneExample]
    target_encoded: list[EncodedExample]
    general: list[FinetuneExample]
    general_encoded: list[EncodedExample]


def evaluate(model: Any, tokenizer: Any, sets: EvalSets, config: CompareConfig, *,
             target_acc: bool = True, general_acc: bool = True) -> dict[str, float]:
    """target_loss, target_acc, general_loss, general_acc of one model (an accuracy left out
    is NaN: it needs greedy replies, the slow part)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.eval()
    return {
        "target_loss": mean_response_loss(model, sets.target_encoded, pad_id),
        "target_acc": answer_accuracy(model, tokenizer, sets.target, config.target_new_tokens,
                                      config.eval_batch_size) if target_acc else math.nan,
        "general_loss": mean_response_loss(model, sets.general_encoded, pad_id),
        "general_acc": answer_accuracy(model, tokenizer, sets.general, config.general_new_tokens,
                                       config.eval_batch_size, mode="contains")
        if general_acc else math.nan,
    }


# ---------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class CompareResult:
    """All of a comparison, as tables (columns named in `core.control.matching` and here).

    final: TABLE_COLUMNS, a row for the base model and one per method, for every seed.
    curves: CURVE_COLUMNS, every evaluation of every run (step 0 is the base model).
    matched: MATCHED_COLUMNS, each run at each level of `levels`.
    summary: per method and level, mean/sd/min/max over seeds (`seed_summary`).
    differences: per method and level, seed-by-seed differences from SFT
    (`paired_differences`); empty without SFT.
    """

    config: CompareConfig
    final: pd.DataFrame
    curves: pd.DataFrame
    matched: pd.DataFrame
    summary: pd.DataFrame
    differences: pd.DataFrame
    levels: tuple[float, ...]


def _fingerprint(*groups: Sequence[FinetuneExample]) -> str:
    """A hash of the examples, so a journal is only resumed on the same data."""
    digest = hashlib.sha256()
    for group in groups:
        for example in group:
            digest.update(json.dumps(example_to_dict(example), sort_keys=True).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class _SeedData:
    sets: EvalSets
    encoded: list[EncodedExample]
    schedule: list[list[int]]


def _seed_data(tokenizer: Any, train_examples: Sequence[FinetuneExample],
               general: Sequence[FinetuneExample],
               target_eval: Sequence[FinetuneExample] | None, config: CompareConfig,
               seed: int) -> _SeedData:
    if target_eval is None:
        train_set, held = split_holdout(train_examples, config.holdout, seed)
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
    if not sets.target_encoded or not sets.general_encoded:
        raise ValueError("No held-out target or general example fits within "
                         f"{config.max_tokens} tokens.")
    return _SeedData(sets, encoded,
                     batch_schedule(len(encoded), config.steps, config.batch_size, seed))


class _RunBook:
    """Finished units (base evaluations, runs) by key; with a path, read from and appended to a
    `core.data.journal.Journal` ({"key": ..., "value": {...}} per line after the settings), so
    an interrupted comparison resumes and a rerun with other levels reads the same runs."""

    def __init__(self, path: str | Path | None, settings: dict[str, Any]) -> None:
        self.journal = None if path is None else Journal.open(path, {"settings": settings})
        self.units: dict[str, dict[str, Any]] = {}
        for line, entry in enumerate(self.journal.entries if self.journal else [], start=2):
            if not (isinstance(entry.get("key"), str) and isinstance(entry.get("value"), dict)):
                raise ValueError(f"{path}, line {line}: not a finished run (fields key and "
                                 "value, an object).")
            self.units[entry["key"]] = entry["value"]

    def get(self, key: str) -> dict[str, Any] | None:
        return self.units.get(key)

    def put(self, key: str, value: dict[str, Any]) -> dict[str, Any]:
        """Record a unit (as a rerun will read it back) and return that."""
        stored: dict[str, Any] = json.loads(json.dumps(value))
        self.units[key] = stored
        if self.journal is not None:
            self.journal.append([{"key": key, "value": stored}])
        return stored

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()


def _final_row(seed: int, method: str, optimizer: str, lr: float, steps: int, gate: float,
               metrics: dict[str, float], base: dict[str, float], d_theta: float,
               seconds: float) -> dict[str, Any]:
    names = ("target_loss", "target_acc", "general_loss", "general_acc")
    return {"seed": seed, "method": method, "optimizer": optimizer, "lr": lr, "steps": steps,
            "mean_gate": gate, **{n: metrics[n] for n in names},
            **{f"d_{n}": metrics[n] - base[n] for n in names}, "d_theta": d_theta,
            "train_seconds": seconds}


def compare_methods(loaded: LoadedModel, train_examples: Sequence[FinetuneExample],
                    general: Sequence[FinetuneExample], config: CompareConfig | None = None,
                    target_eval: Sequence[FinetuneExample] | None = None,
                    progress: Progress | None = None,
                    journal: str | Path | None = None) -> CompareResult:
    """Fine-tune a copy per method and seed, evaluate along the way, and compare at matched
    target-loss reduction (module docstring). Without `target_eval`, `config.holdout` of the
    target examples is held out (a different split per seed). With `journal` (a JSONL path)
    every finished base evaluation and run is recorded, and a rerun resumes from it.
    Progress counts training steps and evaluations."""
    config = config or CompareConfig()
    tokenizer = loaded.tokenizer
    checkpoints = config.evaluation_steps
    per_run = config.steps + len(checkpoints)
    total = len(config.seeds) * (1 + len(config.methods) * per_run)
    done = 0

    def tick(count: int = 1) -> None:
        nonlocal done
        done += count
        if progress:
            progress(done, total)

    # the levels to compare at do not change a run: a rerun may read the journal at others
    runs_config = {k: v for k, v in config.as_dict().items() if k != "match_at"}
    settings = {"model": loaded.name, "config": runs_config,
                "data": _fingerprint(train_examples, general, target_eval or [])}
    with loaded.lock:
        reference = copy.deepcopy(loaded.model)  # private frozen base: the shared one stays free
    reference.eval()
    reference.requires_grad_(False)
    final_rows: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    book = _RunBook(journal, settings)
    try:
        for seed in config.seeds:
            data = _seed_data(tokenizer, train_examples, general, target_eval, config, seed)
            base = book.get(f"{seed}/base")
            if base is None:
                base = book.put(f"{seed}/base", evaluate(reference, tokenizer, data.sets, config))
            tick()
            final_rows.append(_final_row(seed, "base", config.optimizer, 0.0, 0, math.nan, base,
                                         base, 0.0, 0.0))
            eaft_gate = None
            for method in config.methods:
                run = book.get(f"{seed}/{method}")
                if run is None:
                    lr = config.learning_rate
                    if method == "sft_lr_matched":
                        lr *= eaft_gate if eaft_gate is not None else 1.0
                    run = book.put(f"{seed}/{method}", _run_method(
                        method, seed, lr, config, reference, tokenizer, data, base, tick))
                    gc.collect()  # the run's model copy
                else:
                    tick(per_run)
                if method == "eaft":
                    eaft_gate = run["final"]["mean_gate"]
                final_rows.append(run["final"])
                curve_rows += [{"seed": seed, "method": method, **point}
                               for point in run["curve"]]
    finally:
        book.close()
    return _result(config, final_rows, curve_rows)


def _run_method(method: str, seed: int, lr: float, config: CompareConfig,
                reference: torch.nn.Module, tokenizer: Any, data: _SeedData,
                base: dict[str, float], tick: Callable[..., None]) -> dict[str, Any]:
    """One fine-tuning run: its curve (step 0 the base) and its final row."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    torch.manual_seed(seed)
    model = trainable_copy(reference, config.lora, config.lora_rank)
    curve = [{"step": 0, "target_loss": base["target_loss"],
              "general_loss": base["general_loss"], "general_acc": base["general_acc"],
              "d_theta": 0.0}]
    last: dict[str, float] = {}

    def checkpoint(step: int) -> None:
        nonlocal last
        end = step == config.steps
        last = evaluate(model, tokenizer, data.sets, config, target_acc=end,
                        general_acc=config.curve_accuracy or end)
        curve.append({"step": step, "target_loss": last["target_loss"],
                      "general_loss": last["general_loss"], "general_acc": last["general_acc"],
                      "d_theta": displacement(model, reference)})
        tick()

    log = train(model, data.encoded, data.schedule, config.loss_config(method), lr, pad_id,
                reference=reference, on_step=lambda _: tick(), optimizer=config.optimizer,
                checkpoints=config.evaluation_steps, on_checkpoint=checkpoint)
    final = _final_row(seed, method, config.optimizer, lr, config.steps, log.mean_gate, last,
                       base, curve[-1]["d_theta"], log.seconds)
    return {"curve": curve, "final": final}


def _result(config: CompareConfig, final_rows: list[dict[str, Any]],
            curve_rows: list[dict[str, Any]]) -> CompareResult:
    final = pd.DataFrame(final_rows, columns=list(TABLE_COLUMNS))
    curves = pd.DataFrame(curve_rows)
    base = {int(row["seed"]): row for row in final_rows if row["method"] == "base"}
    curves["reduction"] = [
        float(relative_reduction(float(base[int(seed)]["target_loss"]), loss))
        for seed, loss in zip(curves["seed"], curves["target_loss"], strict=True)]
    curves = curves[list(CURVE_COLUMNS)]
    levels = tuple(config.match_at)
    if not levels:
        reach = common_reach(curves)
        levels = (reach,) if reach > 0 else ()
    matched = matched_table(curves, base, levels)
    return CompareResult(config=config, final=final, curves=curves, matched=matched,
                         summary=seed_summary(matched) if levels else pd.DataFrame(),
                         differences=paired_differences(matched) if levels else pd.DataFrame(),
                         levels=levels)


__all__ = [
    "DEFAULT_METHODS", "LR_MATCHED_NEEDS_SGD", "METHODS", "OPTIMIZERS", "TABLE_COLUMNS",
    "CompareConfig", "CompareResult", "EvalSets", "compare_methods", "evaluate",
]
