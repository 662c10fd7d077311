"""Gated losses against hand-computed values, the detached gate, and the drop-in for Hugging Face's
Trainer and TRL's SFTTrainer on a tiny random model."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from core.control.eaft import (
    LossConfig,
    eaft_loss,
    gated_loss,
    hard_mask_loss,
    sft_kl_loss,
    sft_loss,
    sigmoid_gate_loss,
    three_way_loss,
)
from core.control.entropy import Thresholds
from core.control.finetune_data import FinetuneCollator, encode_example, example_from_dict
from tests.tiny_models import tiny_model, tiny_tokenizer

X = -100
LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
NEG = -1e4  # a logit whose probability is 0 in float32


def _two_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [1, 3, 4] and labels [1, 3]: targets at positions 1 and 2.

    Row 0 = [ln 3, 0, NEG, NEG], target 1: top-2 q = (3/4, 1/4), p = 1/4, CE = ln 4,
        H_2 = -(3/4 ln 3/4 + 1/4 ln 1/4) = ln 4 - 3/4 ln 3, H~ = H_2 / ln 2.
    Row 1 = [0, 0, 0, 0], target 0: top-2 uniform, H~ = 1, p = 1/4, CE = ln 4.
    """
    logits = torch.tensor([[[LN3, 0.0, NEG, NEG], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[X, 1, 0]])
    return logits, labels


H0 = (LN4 - 0.75 * LN3) / LN2  # 0.8113


def test_sft_and_eaft_by_hand() -> None:
    logits, labels = _two_tokens()
    assert float(sft_loss(logits, labels)) == pytest.approx(LN4)
    assert float(eaft_loss(logits, labels, k=2)) == pytest.approx((H0 * LN4 + LN4) / 2)
    assert float(eaft_loss(logits, labels, k=2, alpha=2.0)) == pytest.approx(
        (H0**2 * LN4 + LN4) / 2)
    code = (LN4 - 0.75 * LN3) / 3.0, LN2 / 3.0
    assert float(eaft_loss(logits, labels, k=2, norm="code")) == pytest.approx(
        (code[0] + code[1]) * LN4 / 2)
    # a trainer's token count of the whole accumulated batch divides instead
    assert float(eaft_loss(logits, labels, k=2, num_items=4)) == pytest.approx(
        (H0 + 1) * LN4 / 4)


def test_hard_mask_and_sigmoid_by_hand() -> None:
    logits, labels = _two_tokens()
    # the median of (H0, 1) lies between them: only the uncertain token is kept
    assert float(hard_mask_loss(logits, labels, percentile=50, k=2)) == pytest.approx(LN4 / 2)
    assert float(hard_mask_loss(logits, labels, percentile=0, k=2)) == pytest.approx(LN4 / 2)
    sigmoid = [1 / (1 + math.exp(-30 * (h - 0.17))) for h in (H0, 1.0)]
    assert float(sigmoid_gate_loss(logits, labels, k=2)) == pytest.approx(
        sum(sigmoid) * LN4 / 2)
    low = [1 / (1 + math.exp(-2 * (h - 0.9))) for h in (H0, 1.0)]
    assert float(sigmoid_gate_loss(logits, labels, scale=2, center=0.9, k=2)) == pytest.approx(
        sum(low) * LN4 / 2)


def test_sft_kl_by_hand() -> None:
    logits = torch.zeros(1, 2, 4)  # model: uniform
    labels = torch.tensor([[X, 2]])
    base = torch.tensor([[[0.0, 0.0, 0.0, LN2], [0.0, 0.0, 0.0, 0.0]]])  # base: 1/5,1/5,1/5,2/5
    kl = 0.75 * math.log(1.25) + 0.25 * math.log(0.625)
    assert float(sft_kl_loss(logits, labels, base, beta=0.5)) == pytest.approx(LN4 + 0.5 * kl)
    assert float(sft_kl_loss(logits, labels, logits, beta=0.5)) == pytest.approx(LN4)
    with pytest.raises(ValueError, match="base model"):
        gated_loss(logits, labels, LossConfig(kind="sft_kl"))


def test_three_way_gate_by_hand() -> None:
    # token 1: a confident conflict (the model is sure of token 0, the target is 1)
    # token 2: the uncertain uniform row
    logits = torch.tensor([[[10.0, 0.0, NEG, NEG], [0.0, 0.0, 0.0, 0.0], [0.0] * 4]])
    labels = torch.tensor([[X, 1, 0]])
    q = 1 / (1 + math.exp(-10))
    h = -(q * math.log(q) + (1 - q) * math.log(1 - q)) / LN2  # ~0.0007
    ce = 10 + math.log(1 + math.exp(-10))  # -log p of the target
    conflict = Thresholds(p=0.1, h=0.2, uncertain=0.5, mode="absolute")
    marked = torch.tensor([[False, True, True]])
    unmarked = torch.zeros_like(marked)
    # marked conflict: overridden with 1 - H~; the uncertain token learns with H~ = 1
    got = three_way_loss(logits, labels, marked, k=2, conflict=conflict)
    assert float(got) == pytest.approx(((1 - h) * ce + LN4) / 2, rel=1e-5)
    got = three_way_loss(logits, labels, marked, k=2, conflict=conflict, override="one")
    assert float(got) == pytest.approx((ce + LN4) / 2, rel=1e-5)
    # unmarked: protected like EAFT
    got = three_way_loss(logits, labels, unmarked, k=2, conflict=conflict)
    assert float(got) == pytest.approx((h * ce + LN4) / 2, rel=1e-4)
    out = gated_loss(logits, labels, LossConfig(kind="three_way", k=2, conflict=conflict),
                     new_fact_mask=marked)
    assert out.conflict_share == 0.5 and out.n_tokens == 2
    assert out.gate_mean == pytest.approx((1 - h + 1) / 2, rel=1e-5)


@pytest.mark.parametrize("kind", ["eaft", "hard_mask", "sigmoid", "three_way"])
def test_gate_is_detached(kind: str) -> None:
    """The gradient equals w * (softmax - onehot) / N with w held constant."""
    gen = torch.Generator().manual_seed(0)
    logits = (2 * torch.randn(2, 6, 11, generator=gen)).requires_grad_(True)
    labels = torch.randint(0, 11, (2, 6), generator=gen)
    labels[:, :2] = X
    facts = torch.rand(2, 6, generator=gen) > 0.5
    config = LossConfig(kind=kind, k=5, mask_percentile=40,
                        conflict=Thresholds(p=0.3, h=0.6, uncertain=0.8, mode="absolute"))
    out = gated_loss(logits, labels, config, new_fact_mask=facts)
    out.loss.backward()
    assert logits.grad is not None
    # recompute the gate by hand and the gradient of the weighted CE with it constant
    from core.control.eaft import token_gate
    from core.control.entropy import normalise_entropy, response_positions, topk_entropy

    rows, pos = response_positions(labels)
    z = logits.detach()[rows, pos - 1]
    target = labels[rows, pos]
    p = torch.softmax(z, -1)
    h = normalise_entropy(topk_entropy(z, 5), 5)
    w = token_gate(config, h, p.gather(-1, target[:, None]).squeeze(-1), facts[rows, pos])
    assert 0 < float(w.min()) or kind == "hard_mask"
    want = torch.zeros_like(logits)
    want[rows, pos - 1] = w[:, None] * (p - torch.nn.functional.one_hot(target, 11)) / len(w)
    torch.testing.assert_close(logits.grad, want, rtol=1e-5, atol=1e-7)


def test_empty_batch_gives_a_zero_loss_that_backpropagates() -> None:
    logits = torch.randn(1, 4, 5, requires_grad=True)
    out = gated_loss(logits, torch.full((1, 4), X))
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0 and out.n_tokens == 0


def test_config_is_checked() -> None:
    for bad, words in (({"kind": "dft"}, "kind"), ({"k": 1}, "K must"), ({"alpha": -1}, "alpha"),
                       ({"norm": "x"}, "norm"), ({"mask_percentile": 100}, "percentile"),
                       ({"beta": -0.1}, "beta"), ({"override": "two"}, "override")):
        with pytest.raises(ValueError, match=words):
            LossConfig(**bad)


# ---------------------------------------------------------------------------- trainers

TEMPLATE = ("{% for m in messages %}<s> "
            "{{ {'user': 'w3', 'assistant': 'w4'}.get(m['role'], 'w5') }} {{ m['content'] }} </s> "
            "{% endfor %}{% if add_generation_prompt %}<s> w4 {% endif %}")


def _rows(n: int = 8) -> list[dict[str, str]]:
    gen = torch.Generator().manual_seed(3)
    rows = []
    for _ in range(n):
        words = torch.randint(10, 90, (7,), generator=gen).tolist()
        rows.append({"prompt": " ".join(f"w{w}" for w in words[:3]),
                     "completion": " ".join(f"w{w}" for w in words[3:])})
    return rows


def _training_args(tmp_path: Path, cls: type | None = None, **extra: object):
    from transformers import TrainingArguments

    cls = cls or TrainingArguments
    return cls(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=4,
               learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no",
               use_cpu=True, seed=0, disable_tqdm=True, **extra)


def _mean_sft(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits
    return float(sft_loss(logits, batch["labels"]))


@pytest.mark.parametrize("kind", ["eaft", "sft_kl", "three_way"])
def test_hf_trainer_drop_in_trains_and_logs(tmp_path: Path, kind: str) -> None:
    from transformers import Trainer

    from core.control.eaft_trainer import GatedLossFunc, GateLogCallback

    tok = tiny_tokenizer(TEMPLATE)
    data = [encode_example(tok, example_from_dict({**r, "new_facts": True}, str(i)))
            for i, r in enumerate(_rows())]
    model = tiny_model("llama", seed=0)
    base = tiny_model("llama", seed=0) if kind == "sft_kl" else None
    loss_fn = GatedLossFunc(LossConfig(kind=kind), base_model=base)
    handle = loss_fn.attach(model)
    callback = GateLogCallback(loss_fn)
    collator = FinetuneCollator(pad_id=0, with_new_facts=kind == "three_way")
    whole = FinetuneCollator(pad_id=0)(data)
    before = _mean_sft(model, whole)
    trainer = Trainer(model=model, args=_training_args(tmp_path), train_dataset=data,
                      data_collator=collator, compute_loss_func=loss_fn, callbacks=[callback])
    trainer.train()
    handle.remove()
    after = _mean_sft(model, whole)
    assert after < before - 0.5, (before, after)
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert len(logged) == 12
    assert all(0 < row["gate_mean"] <= 1 and 0 <= row["conflict_share"] <= 1 for row in logged)
    assert len(callback.history) == 12 and len(loss_fn.records) == 12
    if kind == "sft_kl":
        assert all(row["gate_mean"] == 1.0 for row in logged)
        assert all(not p.requires_grad for p in base.parameters())


def test_three_way_without_marks_is_a_clear_error() -> None:
    from core.control.eaft_trainer import GatedLossFunc

    loss_fn = GatedLossFunc(LossConfig(kind="three_way"))
    out = {"logits": torch.zeros(1, 3, 5)}
    with pytest.raises(RuntimeError, match="new_fact_mask"):
        loss_fn(out, torch.tensor([[X, 1, 2]]))
    with pytest.raises(ValueError, match="base model"):
        GatedLossFunc(LossConfig(kind="sft_kl"))


def test_trl_sft_trainer_drop_in_trains_and_logs(tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from core.control.eaft_trainer import GatedLossFunc, GateLogCallback

    tok = tiny_tokenizer(TEMPLATE)
    rows = _rows()
    model = tiny_model("llama", seed=0)
    loss_fn = GatedLossFunc(LossConfig(kind="eaft"))
    callback = GateLogCallback(loss_fn)
    data = [encode_example(tok, example_from_dict(r, str(i))) for i, r in enumerate(rows)]
    whole = FinetuneCollator(pad_id=0)(data)
    before = _mean_sft(model, whole)
    args = _training_args(tmp_path, trl.SFTConfig, max_length=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # compute_loss_func goes in TRL 2.0
        trainer = trl.SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                 processing_class=tok, compute_loss_func=loss_fn,
                                 callbacks=[callback])
    trainer.train()
    after = _mean_sft(model, whole)
    assert after < before - 0.5, (before, after)
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert len(logged) == 12
    assert all(0 < row["gate_mean"] <= 1 and "conflict_share" in row for row in logged)


# ---------------------------------------------------------------------------- Liger guard


def test_liger_configurations_that_would_bypass_the_loss() -> None:
    from types import SimpleNamespace

    from core.control.eaft_trainer import liger_would_bypass

    assert not liger_would_bypass(SimpleNamespace(use_liger_kernel=False))
    assert liger_would_bypass(SimpleNamespace(use_liger_kernel=True, liger_kernel_config=None))
    assert liger_would_bypass(SimpleNamespace(use_liger_kernel=True,
                                              liger_kernel_config={"rope": True}))
    assert not liger_would_bypass(SimpleNamespace(
        use_liger_kernel=True, liger_kernel_config={"fused_linear_cross_entropy": False}))


def test_the_loss_refuses_outputs_without_logits() -> None:
    from core.control.eaft_trainer import GatedLossFunc, LigerBypassError

    loss_fn = GatedLossFunc(LossConfig(kind="eaft"))
    labels = torch.tensor([[X, 1, 2]])
    with pytest.raises(LigerBypassError, match="no logits"):
        loss_fn({"loss": torch.tensor(1.0), "logits": None}, labels)
    with pytest.raises(LigerBypassError, match="fused_linear_cross_entropy"):
        loss_fn(type("Out", (), {"loss": torch.tensor(1.0)})(), labels)


def test_the_callback_warns_about_liger_at_the_start(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from core.control.eaft_trainer import GatedLossFunc, GateLogCallback

    callback = GateLogCallback(GatedLossFunc(LossConfig(kind="eaft")))
    with pytest.warns(UserWarning, match="fused linear cross-entropy"):
        callback.on_train_begin(SimpleNamespace(use_liger_kernel=True, liger_kernel_config={}),
                                None, None)
    plain = _training_args(tmp_path)  # no Liger
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callback.on_train_begin(plain, None, None)


def test_a_trainer_that_never_calls_the_loss_is_stopped(tmp_path: Path) -> None:
    """As under Liger's fused cross-entropy: the trainer computes the loss inside the model and
    never calls compute_loss_func. The run stops after its first step."""
    from transformers import Trainer

    from core.control.eaft_trainer import GatedLossFunc, GateLogCallback, LigerBypassError

    class FusedLossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)  # the model's own cross-entropy (labels inside)
            return (outputs.loss, outputs) if return_outputs else outputs.loss

    tok = tiny_tokenizer(TEMPLATE)
    data = [encode_example(tok, example_from_dict(r, str(i))) for i, r in enumerate(_rows())]
    loss_fn = GatedLossFunc(LossConfig(kind="eaft"))
    trainer = FusedLossTrainer(model=tiny_model("llama", seed=0), args=_training_args(tmp_path),
                               train_dataset=data, data_collator=FinetuneCollator(pad_id=0),
                               compute_loss_func=loss_fn, callbacks=[GateLogCallback(loss_fn)])
    with pytest.raises(LigerBypassError, match="step 1 never called"):
        trainer.train()
    assert trainer.state.global_step == 1
