"""The gated losses of `core.control.eaft` as a drop-in for Hugging Face's `Trainer` and TRL's
`SFTTrainer`, with the gate's mean and the conflict share logged every step.

    loss_fn = GatedLossFunc(LossConfig(kind="eaft"))
    trainer = Trainer(model=model, args=args, train_dataset=encoded,        # list[EncodedExample]
                      data_collator=FinetuneCollator(pad_id),
                      compute_loss_func=loss_fn, callbacks=[GateLogCallback(loss_fn)])
    trainer.train()       # trainer.state.log_history rows gain "gate_mean", "conflict_share"

`Trainer` calls `compute_loss_func(outputs, labels, num_items_in_batch=...)` (transformers 5.x)
with unshifted labels; TRL's `SFTTrainer` (1.x) calls it the same way (it warns that the
argument will go in TRL 2.0, where subclassing `SFTTrainer.compute_loss` replaces it).

Liger: its fused linear cross-entropy computes the loss inside the model from the hidden states
and returns no logits, so a trainer under it may never call `compute_loss_func`, or call it with
no logits, and the run is plain SFT without a word (LLaMA-Factory's own EAFT falls back exactly
so). This drop-in refuses: the loss raises `LigerBypassError` when it gets no logits, and
`GateLogCallback` warns at the start when the arguments turn the fused kernel on
(`liger_would_bypass`) and raises `LigerBypassError` after any training step in which the loss
was not called. TRL 1.16 turns the fused kernel off itself and calls the loss, so it trains.
Two losses need more than the outputs and labels: "sft_kl" runs the frozen base model on the
same inputs, and "three_way" needs each token's new-fact mark. For those, `loss_fn.attach(model)`
adds a forward pre-hook that keeps the batch's input_ids / attention_mask and takes
`new_fact_mask` out of the model's inputs (collate with `FinetuneCollator(pad_id,
with_new_facts=True)`); remove it with the returned handle.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback

from core.control.eaft import LossConfig, LossOutput, gated_loss

NO_LOGITS = ("The model returned no logits, so EAFT cannot weight its tokens: Liger's fused "
             "linear cross-entropy computes the loss without them. Set use_liger_kernel=False, "
             "or liger_kernel_config={'fused_linear_cross_entropy': False}.")


class LigerBypassError(RuntimeError):
    """The trainer computed the loss without Telltale's gated loss: the run would be plain SFT."""


def liger_would_bypass(args: Any) -> bool:
    """Do these training arguments turn on Liger's fused linear cross-entropy? (use_liger_kernel
    without liger_kernel_config={"fused_linear_cross_entropy": False}; Liger's default is on.)"""
    if not getattr(args, "use_liger_kernel", False):
        return False
    config = getattr(args, "liger_kernel_config", None) or {}
    return bool(config.get("fused_linear_cross_entropy", True))


@dataclass(frozen=True)
class GateRecord:
    """What one loss call saw (training calls only: those with gradient enabled)."""

    n_tokens: int
    gate_mean: float
    conflict_share: float
    sft_loss: float


class GatedLossFunc:
    """Callable for `Trainer(compute_loss_func=...)`: the gated loss of `config`."""

    def __init__(self, config: LossConfig | None = None,
                 base_model: torch.nn.Module | None = None) -> None:
        self.config = config or LossConfig()
        if self.config.kind == "sft_kl" and base_model is None:
            raise ValueError("The sft_kl loss needs the frozen base model (base_model=...).")
        self.base_model = base_model
        if base_model is not None:
            base_model.eval()
            base_model.requires_grad_(False)
        self.records: list[GateRecord] = []
        self._inputs: dict[str, torch.Tensor] = {}

    def attach(self, model: torch.nn.Module) -> torch.utils.hooks.RemovableHandle:
        """Hook `model` so the loss sees its inputs and the model never sees new_fact_mask."""

        def keep_inputs(_module: Any, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            kwargs = dict(kwargs)
            facts = kwargs.pop("new_fact_mask", None)
            self._inputs = {name: kwargs[name] for name in ("input_ids", "attention_mask")
                            if isinstance(kwargs.get(name), torch.Tensor)}
            if facts is not None:
                self._inputs["new_fact_mask"] = facts
            return args, kwargs

        return model.register_forward_pre_hook(keep_inputs, with_kwargs=True)

    def _base_logits(self) -> torch.Tensor | None:
        if self.config.kind != "sft_kl" or self.base_model is None:
            return None
        if "input_ids" not in self._inputs:
            raise RuntimeError("The sft_kl loss did not see the batch: call "
                               "loss_fn.attach(model) before training.")
        with torch.no_grad():
            inputs = {k: v for k, v in self._inputs.items() if k != "new_fact_mask"}
            return self.base_model(**inputs, use_cache=False).logits

    def __call__(self, outputs: Any, labels: torch.Tensor,
                 num_items_in_batch: int | torch.Tensor | None = None,
                 **_: Any) -> torch.Tensor:
        logits = (outputs.get("logits") if isinstance(outputs, dict)
                  else getattr(outputs, "logits", None))
        if logits is None:
            raise LigerBypassError(NO_LOGITS)
        facts = self._inputs.get("new_fact_mask")
        if self.config.kind == "three_way" and facts is None:
            raise RuntimeError("The three_way loss needs new_fact_mask: collate with "
                               "FinetuneCollator(pad_id, with_new_facts=True) and call "
                               "loss_fn.attach(model).")
        result: LossOutput = gated_loss(logits, labels, self.config,
                                        base_logits=self._base_logits(), new_fact_mask=facts,
                                        num_items=num_items_in_batch)
        if torch.is_grad_enabled():
            self.records.append(GateRecord(result.n_tokens, result.gate_mean,
                                           result.conflict_share, result.sft_loss))
        return result.loss


def _weighted(records: list[GateRecord]) -> dict[str, float]:
    total = sum(r.n_tokens for r in records)
    if total == 0:
        return {}
    return {name: sum(getattr(r, name) * r.n_tokens for r in records) / total
            for name in ("gate_mean", "conflict_share", "sft_loss")}


class GateLogCallback(TrainerCallback):
    """Adds the token-weighted gate mean, conflict share and plain SFT loss of every optimizer
    step to `history`, and their averages since the last log to the trainer's logs. Guards the
    run: a warning at the start when Liger's fused cross-entropy is configured, and
    `LigerBypassError` after a training step that never called the loss."""

    def __init__(self, loss_func: GatedLossFunc) -> None:
        self.loss_func = loss_func
        self.history: list[dict[str, float]] = []
        self._seen = 0
        self._logged = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if liger_would_bypass(args):
            warnings.warn("use_liger_kernel is on with Liger's fused linear cross-entropy: if "
                          "the trainer lets it compute the loss, EAFT never runs (the run "
                          "stops with LigerBypassError at the first such step). Set "
                          "liger_kernel_config={'fused_linear_cross_entropy': False}.",
                          UserWarning, stacklevel=2)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        new = self.loss_func.records[self._seen:]
        self._seen = len(self.loss_func.records)
        if not new:
            raise LigerBypassError(
                f"Training step {state.global_step} never called Telltale's loss: the trainer "
                "computed the loss another way (Liger's fused cross-entropy, or a compute_loss "
                "that ignores compute_loss_func), so the run would be plain SFT.")
        means = _weighted(new)
        if means:
            self.history.append({"step": float(state.global_step), **means})

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        steps = self.history[self._logged:]
        self._logged = len(self.history)
        if not steps or logs is None or "loss" not in logs:
            return
        means = {name: sum(s[name] for s in steps) / len(steps)
                 for name in ("gate_mean", "conflict_share", "sft_loss")}
        logs.update(means)
        # Trainer.log appended its row to log_history before calling the callbacks
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(means)


__all__ = ["GateLogCallback", "GateRecord", "GatedLossFunc", "LigerBypassError", "NO_LOGITS",
           "liger_would_bypass"]
