"""The suitability verdict on hand-built token tables, and the trainer config fragments (read
back as YAML and Python; the TRL one run as written on a tiny model)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml  # PyYAML: a transformers dependency

from core.control.eaft import LossConfig
from core.control.export import EXPORT_FORMATS, FILE_NAMES, trainer_fragment
from core.control.suitability import suitability, verdict_for


def _tokens(rows: list[tuple[float, float, float, int]]) -> pd.DataFrame:
    """(p, H~, grad_norm, count) groups -> a token table with CE = -ln p."""
    p, h, g = [], [], []
    for prob, entropy, grad, count in rows:
        p += [prob] * count
        h += [entropy] * count
        g += [grad] * count
    return pd.DataFrame({"p": p, "entropy_norm": h, "ce": -np.log(p), "grad_norm": g,
                         "new_fact": [False] * len(p)})


def test_verdict_bounds() -> None:
    assert verdict_for(0.35) == "suits" and verdict_for(0.20) == "suits"
    assert verdict_for(0.15) == "partly" and verdict_for(0.10) == "partly"
    assert verdict_for(0.0999) == "does_not_suit" and verdict_for(0.0) == "does_not_suit"


def test_a_conflict_heavy_file_suits_eaft_by_hand() -> None:
    # 10 conflicts (p 0.01, H~ 0.1), 10 confident-right tokens (p 0.9, H~ 0.05), 20 uncertain
    # (p 0.2, H~ 0.8)
    tokens = _tokens([(0.01, 0.1, 1.0, 10), (0.9, 0.05, 0.1, 10), (0.2, 0.8, 0.8, 20)])
    ce = {"c": -np.log(0.01) * 10, "r": -np.log(0.9) * 10, "u": -np.log(0.2) * 20}
    total = sum(ce.values())
    got = suitability(tokens)
    assert got.conflict_token_share == pytest.approx(0.25)
    assert got.conflict_loss_share == pytest.approx(ce["c"] / total)  # 0.58
    assert got.uncertain_loss_share == pytest.approx(ce["u"] / total)
    assert got.verdict == "suits" and got.reason.startswith("EAFT suits this file")
    # gradient pressure on conflicts: SFT sum g, EAFT sum H~ g
    sft = 10 * 1.0 / (10 * 1.0 + 10 * 0.1 + 20 * 0.8)
    eaft = 10 * 0.1 / (10 * 0.1 + 10 * 0.1 * 0.05 + 20 * 0.8 * 0.8)
    assert got.conflict_sft_grad_share == pytest.approx(sft)
    assert got.conflict_eaft_grad_share == pytest.approx(eaft)
    assert f"{sft:.0%} under SFT to {eaft:.0%}" in got.reason
    assert (got.p_cut, got.h_cut, got.uncertain_cut) == (0.1, 0.2, 0.5)
    assert set(got.to_dict()) >= {"verdict", "reason", "conflict_loss_share"}


def test_a_file_of_uncertain_novelty_does_not_suit_eaft() -> None:
    tokens = _tokens([(0.05, 0.15, 1.0, 1), (0.9, 0.05, 0.1, 30), (0.1, 0.9, 0.9, 30)])
    got = suitability(tokens)
    assert got.conflict_loss_share < 0.1 and got.verdict == "does_not_suit"
    assert got.reason.startswith("EAFT has little to protect here")
    # the cuts are absolute: the same tokens with every p a little lower stay the same verdict,
    # whereas percentile cuts would call the bottom 15% conflicts whatever they are
    assert suitability(tokens.assign(p=tokens["p"] * 0.99)).verdict == "does_not_suit"


def test_fragments_for_each_trainer() -> None:
    verdict = suitability(_tokens([(0.01, 0.1, 1.0, 10), (0.2, 0.8, 0.8, 20)]))
    config = LossConfig(kind="eaft", k=20, alpha=0.5)
    llama = trainer_fragment("llamafactory", config, verdict, data="notation.jsonl")
    assert yaml.safe_load(llama) == {"use_eaft_loss": True, "eaft_alpha": 0.5,
                                     "enable_liger_kernel": False}
    assert "notation.jsonl: suits" in llama and "Liger" in llama
    axolotl = trainer_fragment("axolotl", LossConfig(kind="eaft", k=10, alpha=2.0))
    assert yaml.safe_load(axolotl) == {"use_eaft": True, "eaft_alpha": 2.0, "eaft_k": 10}
    trl = trainer_fragment("trl", LossConfig(kind="eaft", k=10, alpha=1.5, norm="code"))
    tree = ast.parse(trl)  # valid Python
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "LossConfig")
    assert {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords} == {
        "kind": "eaft", "k": 10, "alpha": 1.5, "norm": "code"}
    assert "use_liger_kernel=False" in trl and "GateLogCallback(loss_fn)" in trl
    assert set(FILE_NAMES) == set(EXPORT_FORMATS)


def test_fragments_refuse_what_the_trainer_cannot_express() -> None:
    with pytest.raises(ValueError, match="no K setting"):
        trainer_fragment("llamafactory", LossConfig(kind="eaft", k=10))
    with pytest.raises(ValueError, match="Only the eaft loss"):
        trainer_fragment("axolotl", LossConfig(kind="sft"))
    with pytest.raises(ValueError, match="export format"):
        trainer_fragment("unsloth", LossConfig(kind="eaft"))


def test_the_trl_fragment_trains_through_telltales_loss(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The TRL fragment as written, with `model` (a local folder) and `dataset` defined: it
    trains, and every step's loss is Telltale's gated loss (the loss records one call per step,
    the trainer logs its gate). Only the hardware and length settings are added to SFTConfig
    (TRL defaults to bf16, which a CPU lacks)."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from tests.tiny_models import tiny_model, tiny_tokenizer

    template = ("{% for m in messages %}<s> {{ {'user': 'w3', 'assistant': 'w4'}.get(m['role'], "
                "'w5') }} {{ m['content'] }} </s> {% endfor %}"
                "{% if add_generation_prompt %}<s> w4 {% endif %}")
    folder = tmp_path / "model"
    tiny_model("llama", seed=0).save_pretrained(folder)
    tiny_tokenizer(template).save_pretrained(folder)
    rows = [{"prompt": f"w{10 + i} w{20 + i}", "completion": f"w{30 + i} w{40 + i} w{50 + i}"}
            for i in range(8)]
    monkeypatch.setattr(trl, "SFTConfig", functools.partial(
        trl.SFTConfig, use_cpu=True, bf16=False, max_steps=3, per_device_train_batch_size=4,
        logging_steps=1, report_to=[], save_strategy="no", max_length=32, disable_tqdm=True))
    monkeypatch.chdir(tmp_path)  # the fragment's output_dir
    scope = {"model": str(folder), "dataset": Dataset.from_list(rows)}
    exec(compile(trainer_fragment("trl", LossConfig(kind="eaft", k=10)), "eaft_trl.py", "exec"),
         scope)
    trainer, loss_fn = scope["trainer"], scope["loss_fn"]
    assert trainer.state.global_step == 3 and len(loss_fn.records) == 3
    assert loss_fn.config == LossConfig(kind="eaft", k=10)
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert len(logged) == 3 and all(0 < row["gate_mean"] <= 1 for row in logged)
