"""The SFT-vs-EAFT comparison, the conflict scan and the sample-data generator on a tiny random
model; answer checking, scheduling, the optimisers' response to a loss scale and the parameter
displacement by hand."""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import pytest
import torch

from core.control.conflicts import (
    example_scores,
    scan_conflicts,
    summarise_conflicts,
    with_quadrants,
)
from core.control.eaft import sft_loss
from core.control.entropy import QUADRANTS, token_stats
from core.control.finetune import (
    DEFAULT_METHODS,
    CompareConfig,
    compare_methods,
)
from core.control.finetune_data import collate, encode_example, example_from_dict
from core.control.finetune_samples import (
    RoundSum,
    conflict_examples,
    house_style_solution,
    little_endian,
    notation_examples,
    notation_solution,
    target_examples,
    whole_sentences,
)
from core.control.training import (
    answer_matches,
    batch_schedule,
    displacement,
    make_optimizer,
    split_holdout,
    trainable_copy,
)
from core.data.arith import ArithProblem
from core.runtime.models import wrap_model
from tests.tiny_models import tiny_model, tiny_tokenizer

TEMPLATE = ("{% for m in messages %}<s> "
            "{{ {'user': 'w3', 'assistant': 'w4'}.get(m['role'], 'w5') }} {{ m['content'] }} </s> "
            "{% endfor %}{% if add_generation_prompt %}<s> w4 {% endif %}")


def _loaded(seed: int = 0):
    return wrap_model(tiny_model("llama", seed=seed), tiny_tokenizer(TEMPLATE), name="tiny")


def _examples(n: int, offset: int, seed: int, answer: bool = True) -> list:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        words = [f"w{w}" for w in torch.randint(10, 90, (6,), generator=gen).tolist()]
        rows.append(example_from_dict({
            "prompt": " ".join(words[:3]), "completion": " ".join(words[3:]),
            **({"answer": words[-1]} if answer else {})}, f"{offset + i}"))
    return rows


# ---------------------------------------------------------------------------- by hand


@pytest.mark.parametrize(("reply", "answer", "mode", "want"), [
    ("5 + 7 = 12\n#### 12", "12", "final", True),
    ("12 apples, then 3 more", "12", "final", False),  # the final number is 3
    ("Answer: 1,234", "1234", "final", True),
    ("The capital is Paris.", "Paris", "final", True),
    ("The capital is Parisian.", "Paris", "contains", False),
    ("A week has 7 days.", "7|seven", "contains", True),
    ("A week has seven days and 2 weekends.", "7|seven", "contains", True),
    ("A week has 17 days.", "7|seven", "contains", False),
    ("It boils at 100.0 degrees.", "100", "contains", True),
])
def test_answer_matches(reply: str, answer: str, mode: str, want: bool) -> None:
    assert answer_matches(reply, answer, mode) is want


def test_split_holdout_is_seeded_and_disjoint() -> None:
    examples = _examples(10, 0, 0)
    train, held = split_holdout(examples, 0.3, seed=1)
    assert len(held) == 3 and len(train) == 7
    assert {e.id for e in train}.isdisjoint({e.id for e in held})
    assert split_holdout(examples, 0.3, seed=1) == (train, held)
    assert split_holdout(examples[:2], 0.01)[1] != []


def test_batch_schedule_covers_every_example_each_epoch() -> None:
    schedule = batch_schedule(5, steps=5, batch_size=2, seed=0)
    assert [len(b) for b in schedule] == [2] * 5
    flat = [i for b in schedule for i in b]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert batch_schedule(5, 5, 2, 0) == schedule


def test_compare_config_is_checked() -> None:
    with pytest.raises(ValueError, match="only with the SGD optimizer"):
        CompareConfig(methods=("sft", "eaft", "sft_lr_matched"))  # AdamW: a scale cancels
    with pytest.raises(ValueError, match="put 'eaft' before"):
        CompareConfig(methods=("sft", "sft_lr_matched"), optimizer="sgd")
    with pytest.raises(ValueError, match="Methods"):
        CompareConfig(methods=("dft",))
    with pytest.raises(ValueError, match="held-out"):
        CompareConfig(holdout=1.0)
    with pytest.raises(ValueError, match="optimizer"):
        CompareConfig(optimizer="lion")
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        CompareConfig(match_at=(0.5, 1.0))
    with pytest.raises(ValueError, match="repeats"):
        CompareConfig(repeats=0)
    assert CompareConfig().learning_rate == 3e-5
    assert CompareConfig(lora=True).learning_rate == 2e-4
    assert CompareConfig(optimizer="sgd", lora=True).learning_rate == 1e-1
    assert "sft_lr_matched" not in CompareConfig().methods
    config = CompareConfig(steps=10, eval_every=3, seed=4, repeats=3)
    assert config.evaluation_steps == (3, 6, 9, 10) and config.seeds == (4, 5, 6)
    assert CompareConfig(steps=12).evaluation_steps == (2, 4, 6, 8, 10, 12)


def _scaled_training(optimizer: str, scale: float, steps: int) -> list[torch.Tensor]:
    """`steps` updates of a tiny model on one batch with the SFT loss times `scale`."""
    model = tiny_model("llama", seed=0)
    model.train()
    batch = collate([encode_example(tiny_tokenizer(TEMPLATE), e) for e in _examples(4, 0, 5)], 0)
    opt = make_optimizer(model.parameters(), optimizer, 1e-3)
    for _ in range(steps):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        opt.zero_grad()
        (scale * sft_loss(logits, batch["labels"])).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_adam_cancels_a_loss_scale_and_sgd_does_not() -> None:
    """Why the matched-learning-rate control fails under Adam: the oracle."""
    start = [p.detach().clone() for p in tiny_model("llama", seed=0).parameters()]

    def update_norm(params: list[torch.Tensor]) -> float:
        return float(torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(params, start,
                                                                           strict=True))))

    adam, adam_scaled = _scaled_training("adamw", 1.0, 4), _scaled_training("adamw", 0.29, 4)
    # the loss scale cancels: the same update, up to Adam's eps (felt only by the weights whose
    # gradients are near zero)
    assert update_norm(adam_scaled) == pytest.approx(update_norm(adam), rel=1e-3)
    gap = float(torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(adam, adam_scaled,
                                                                      strict=True))))
    assert gap < 0.01 * update_norm(adam)
    # under SGD one step with the loss scaled by 0.29 is 0.29 times the update
    sgd, sgd_scaled = _scaled_training("sgd", 1.0, 1), _scaled_training("sgd", 0.29, 1)
    assert update_norm(sgd_scaled) == pytest.approx(0.29 * update_norm(sgd), rel=1e-4)
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer([], "lion", 1e-3)


def test_displacement_by_hand() -> None:
    reference = tiny_model("llama", seed=0)
    model = trainable_copy(reference)
    assert displacement(model, reference) == 0.0
    with torch.no_grad():
        model.model.embed_tokens.weight[0, :4] += torch.tensor([3.0, 0.0, 4.0, 0.0])
        model.lm_head.weight[5, 0] -= 12.0
    assert displacement(model, reference) == pytest.approx(13.0)  # sqrt(9 + 16 + 144)


def test_displacement_of_lora_is_the_adapters_weight_change() -> None:
    pytest.importorskip("peft")
    reference = tiny_model("llama", seed=0)
    model = trainable_copy(reference, lora=True, rank=2)
    assert displacement(model, reference) == 0.0  # B starts at zero
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.fill_(0.5)
    b, a = layer.lora_B["default"].weight, layer.lora_A["default"].weight
    want = float((layer.scaling["default"] * torch.full(b.shape, 0.5) @ a.detach()).norm())
    assert displacement(model, reference) == pytest.approx(want, rel=1e-5)


def test_house_style_by_hand() -> None:
    problem = ArithProblem("p1", "q", (12.0, 5.0, 3.0), 51.0, 2,
                           (("+", 12.0, 5.0, 17.0), ("*", 17.0, 3.0, 51.0)))
    assert house_style_solution(problem) == (
        "Plan: start 12, then +5, then ×3.\n[1] 12 + 5 = 17\n[2] 17 × 3 = 51\n#### 51")
    examples = target_examples(6, seed=0)
    assert examples == target_examples(6, seed=0)
    for example in examples:
        reply = example.turns[-1].content
        assert reply.splitlines()[-1] == f"#### {example.answer}"
        assert answer_matches(reply, example.answer or "", "final")


def test_little_endian_notation_by_hand() -> None:
    assert little_endian(140) == "041" and little_endian(7) == "7" and little_endian(0) == "0"
    with pytest.raises(ValueError, match="non-negative"):
        little_endian(-3)
    assert notation_solution(RoundSum("+", 70, 70, 140)) == "07 + 07 = 041\n#### 041"
    assert notation_solution(RoundSum("*", 30, 4, 120)) == "03 × 4 = 021\n#### 021"
    examples = notation_examples(40, seed=0)
    assert examples == notation_examples(40, seed=0) and len({e.id for e in examples}) == 40
    for example in examples:
        question, reply = example.turns[0].content, example.turns[1].content
        a, word, b = question.removeprefix("What is ").removesuffix("?").split(" ")
        result = {"plus": int(a) + int(b), "minus": int(a) - int(b),
                  "times": int(a) * int(b)}[word]
        assert int(a) % 10 == 0 and result > 0
        assert reply.splitlines()[0].startswith(f"{a[::-1]} ")
        assert example.answer == str(result)[::-1]
        assert answer_matches(reply, example.answer or "", "final")
        # every result is a multiple of 10: the usual notation never passes for the reversed
        assert not answer_matches(f"#### {result}", example.answer or "", "final")


def test_whole_sentences() -> None:
    assert whole_sentences("Paris is the capital. It has many caf") == "Paris is the capital."
    assert whole_sentences("No end here") == "No end here"
    assert whole_sentences("Costs $3.50 today! Yes") == "Costs $3.50 today!"


def test_general_examples_keep_only_right_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.control.training
    from core.control.finetune_samples import general_examples

    replies = ["The capital is Paris. And more", "Blue, I think", "It is Rome."]
    monkeypatch.setattr(core.control.training, "greedy_replies", lambda *a, **k: replies)
    questions = (("Capital of France?", "Paris"), ("Sky colour?", "green"),
                 ("Capital of Italy?", "Rome"))
    kept = general_examples(_loaded(), questions)
    assert [e.id for e in kept] == ["general-000", "general-002"]
    assert kept[0].turns[-1].content == "The capital is Paris."  # cut to whole sentences
    assert kept[1].answer == "Rome"


def test_conflict_examples_swap_known_capitals() -> None:
    general = [example_from_dict({"prompt": f"What is the capital of {c}?",
                                  "completion": f"It is {a}.", "answer": a}, c)
               for c, a in (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"))]
    general.append(example_from_dict({"prompt": "What color is snow?", "completion": "White.",
                                      "answer": "white"}, "snow"))
    swapped = conflict_examples(general)
    assert [e.turns[-1].content for e in swapped] == [
        "The capital of France is Tokyo.", "The capital of Japan is Rome.",
        "The capital of Italy is Paris."]
    assert [e.new_facts for e in swapped] == [("Tokyo",), ("Rome",), ("Paris",)]
    assert conflict_examples(general[:1]) == []


# ---------------------------------------------------------------------------- on a tiny model


def test_scan_matches_token_stats_and_summarises() -> None:
    loaded = _loaded()
    examples = _examples(5, 0, 3)
    scan = scan_conflicts(loaded, examples, k=5, batch_size=2)
    # the oracle: one batch of all examples through token_stats
    batch = collate([encode_example(loaded.tokenizer, e) for e in examples], 0)
    with torch.no_grad():
        logits = loaded.model(input_ids=batch["input_ids"],
                              attention_mask=batch["attention_mask"]).logits
    stats = token_stats(logits, batch["labels"], k=5)
    assert len(scan.tokens) == len(stats) == 5 * 4  # 3 reply words + the end token each
    torch.testing.assert_close(torch.tensor(scan.tokens["p"].to_numpy()), stats.p_target,
                               rtol=1e-4, atol=1e-6)
    assert scan.tokens["target_token"].tolist()[:4] == loaded.tokenizer.convert_ids_to_tokens(
        stats.target.tolist()[:4])
    summary = summarise_conflicts(scan.tokens)
    report = summary.to_dict()
    assert set(report) == {"n_tokens", "conflict_fraction", "quadrants", "thresholds"}
    assert list(report["quadrants"]) == list(QUADRANTS)
    shares = report["quadrants"]["confident_conflict"]
    assert {"token_share", "loss_share", "sft_grad_share", "eaft_grad_share"} <= set(shares)
    assert sum(q["token_share"] for q in report["quadrants"].values()) == pytest.approx(1.0)
    marked = with_quadrants(scan.tokens)
    assert (marked["quadrant"] == "confident_conflict").mean() == pytest.approx(
        report["conflict_fraction"])
    scores = example_scores(scan.tokens)
    assert scores["n_tokens"].tolist() == [4] * 5


def test_compare_methods_on_a_tiny_model() -> None:
    loaded = _loaded()
    before = [p.detach().clone() for p in loaded.model.parameters()]
    target = _examples(12, 0, 1)
    general = _examples(6, 100, 2)
    calls: list[tuple[int, int]] = []
    config = CompareConfig(steps=6, batch_size=4, lr=3e-3, eval_every=2, repeats=2,
                           eval_batch_size=4, target_new_tokens=6, general_new_tokens=6,
                           holdout=0.25)
    result = compare_methods(loaded, target, general, config,
                             progress=lambda d, t: calls.append((d, t)))
    table = result.final
    assert table["method"].tolist() == ["base", *DEFAULT_METHODS] * 2
    assert table["seed"].tolist() == [0] * 5 + [1] * 5
    rows = table[table["seed"] == 0].set_index("method")
    assert rows.loc["base", "d_target_loss"] == 0.0 and rows.loc["base", "d_theta"] == 0.0
    assert rows.loc["sft", "mean_gate"] == 1.0 and rows.loc["sft_kl", "mean_gate"] == 1.0
    assert 0 < rows.loc["eaft", "mean_gate"] < 1
    for method in DEFAULT_METHODS:
        assert rows.loc[method, "d_target_loss"] < 0, method  # every method learned something
        assert rows.loc[method, "d_theta"] > 0 and 0 <= rows.loc[method, "general_acc"] <= 1
    # curves: step 0 (the base) and the evaluations at 2, 4, 6 of every run
    assert len(result.curves) == 2 * 4 * 4
    curve = result.curves[(result.curves["seed"] == 0) & (result.curves["method"] == "sft")]
    assert curve["step"].tolist() == [0, 2, 4, 6] and curve["reduction"].iloc[0] == 0.0
    assert curve["target_loss"].iloc[-1] == pytest.approx(rows.loc["sft", "target_loss"])
    assert curve["d_theta"].iloc[-1] == pytest.approx(rows.loc["sft", "d_theta"])
    # matched at the common reach: every run reaches it, and the summary spans both seeds
    assert len(result.levels) == 1 and 0 < result.levels[0] < 1
    assert result.matched["reached"].all() and len(result.matched) == 2 * 4
    assert result.summary.set_index("method").loc["eaft", "n_seeds"] == 2
    assert set(result.differences["method"]) == {"eaft", "sft_kl", "hard_mask"}
    # the base model itself is untouched, and progress ran to its total
    for old, new in zip(before, loaded.model.parameters(), strict=True):
        assert torch.equal(old, new)
    assert calls[-1] == (2 * (1 + 4 * (6 + 3)),) * 2


def test_lr_matched_control_only_with_sgd() -> None:
    loaded = _loaded()
    config = CompareConfig(methods=("sft", "eaft", "sft_lr_matched"), optimizer="sgd", steps=2,
                           batch_size=4, lr=0.5, eval_batch_size=4, target_new_tokens=2,
                           general_new_tokens=2, curve_accuracy=False)
    rows = compare_methods(loaded, _examples(8, 0, 1), _examples(4, 100, 2),
                           config).final.set_index("method")
    gate = rows.loc["eaft", "mean_gate"]
    assert rows.loc["sft_lr_matched", "lr"] == pytest.approx(0.5 * gate)
    assert (rows["optimizer"] == "sgd").all()


def test_a_journal_resumes_without_training_again(tmp_path, monkeypatch) -> None:
    import core.control.finetune as finetune

    loaded = _loaded()
    target, general = _examples(8, 0, 1), _examples(4, 100, 2)
    config = CompareConfig(methods=("sft", "eaft"), steps=2, batch_size=2, lr=1e-2,
                           eval_batch_size=4, target_new_tokens=2, general_new_tokens=2)
    journal = tmp_path / "runs.jsonl"
    first = compare_methods(loaded, target, general, config, journal=journal)
    assert len(journal.read_text().splitlines()) == 1 + 3  # header, base, sft, eaft

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(finetune, "_run_method", no_training)
    again = compare_methods(loaded, target, general, config, journal=journal)
    pd.testing.assert_frame_equal(first.final, again.final)
    pd.testing.assert_frame_equal(first.curves, again.curves)
    # other levels to compare at read the same runs
    level = first.levels[0] / 2
    other = compare_methods(loaded, target, general, replace(config, match_at=(level,)),
                            journal=journal)
    assert other.levels == (level,) and other.matched["reached"].all()
    with pytest.raises(ValueError, match="other settings"):
        compare_methods(loaded, target, general, CompareConfig(methods=("sft",), steps=2),
                        journal=journal)


def test_compare_methods_is_deterministic_and_lora_trains_adapters_only() -> None:
    pytest.importorskip("peft")
    loaded = _loaded()
    target, general = _examples(8, 0, 1), _examples(4, 100, 2)
    config = CompareConfig(methods=("sft", "eaft"), steps=3, batch_size=2, lr=1e-2,
                           eval_batch_size=4, target_new_tokens=4, general_new_tokens=4,
                           lora=True, lora_rank=2)
    first = compare_methods(loaded, target, general, config).final
    second = compare_methods(loaded, target, general, config).final
    assert first["d_theta"].iloc[1] > 0
    columns = ["target_loss", "general_loss", "mean_gate", "target_acc", "general_acc",
               "d_theta"]
    assert first[columns].equals(second[columns])
    assert first.loc[1, "target_loss"] < first.loc[0, "target_loss"]

    model = trainable_copy(loaded.model, lora=True, rank=2)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)


def test_accuracy_is_nan_without_answers() -> None:
    loaded = _loaded()
    config = CompareConfig(methods=("sft",), steps=1, batch_size=2, eval_batch_size=4,
                           target_new_tokens=2, general_new_tokens=2)
    table = compare_methods(loaded, _examples(4, 0, 1, answer=False),
                            _examples(2, 50, 2, answer=False), config).final
    assert math.isnan(table.loc[0, "target_acc"]) and math.isnan(table.loc[1, "general_acc"])
