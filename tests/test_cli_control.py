"""`telltale eaft-stats`, `finetune-compare` and `make-finetune-data` through
`core.cli.main.main`, on a tiny random model (the model loader is replaced), plus one end-to-end
run on the default model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import core.cli.common
from core.cli.main import main
from core.runtime.models import wrap_model
from tests.tiny_models import tiny_model, tiny_tokenizer

TEMPLATE = ("{% for m in messages %}<s> "
            "{{ {'user': 'w3', 'assistant': 'w4'}.get(m['role'], 'w5') }} {{ m['content'] }} </s> "
            "{% endfor %}{% if add_generation_prompt %}<s> w4 {% endif %}")


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch):
    loaded = wrap_model(tiny_model("llama", seed=0), tiny_tokenizer(TEMPLATE), name="tiny")
    monkeypatch.setattr(core.cli.common, "load", lambda args: loaded)
    return loaded


def _write(path: Path, n: int, offset: int = 0) -> Path:
    rows = [{"id": offset + i, "prompt": f"w{10 + i} w{20 + i}",
             "completion": f"w{30 + i} w{40 + i} w{50 + i}", "answer": f"w{50 + i}"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eaft_stats_json(tmp_path: Path, tiny, monkeypatch, capsys) -> None:
    data = _write(tmp_path / "ft.jsonl", 6)
    tokens = tmp_path / "tokens.csv"
    code = main(["eaft-stats", "--data", str(data), "--k", "5", "--json",
                    "--tokens-out", str(tokens)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert {"n_tokens", "conflict_fraction", "quadrants", "thresholds"} <= set(report)
    assert report["n_tokens"] == 6 * 4  # three reply words and the end token
    quadrants = report["quadrants"]
    assert set(quadrants) == {"confident_conflict", "confident_right", "uncertain", "other"}
    for column in ("token_share", "loss_share", "sft_grad_share", "eaft_grad_share"):
        assert sum(q[column] for q in quadrants.values()) == pytest.approx(1.0)
    assert report["conflict_fraction"] == quadrants["confident_conflict"]["token_share"]
    assert report["thresholds"]["mode"] == "percentile" and report["k"] == 5
    table = pd.read_csv(tokens)
    assert len(table) == 24 and {"weight_sft", "weight_eaft", "p", "top_token"} <= set(table)
    assert (table["weight_sft"] == 1.0).all()
    assert table["weight_eaft"].to_numpy() == pytest.approx(table["entropy_norm"].to_numpy(),
                                                            rel=1e-5)


def test_eaft_stats_text_and_absolute_thresholds(tmp_path: Path, tiny, monkeypatch,
                                                 capsys) -> None:
    data = _write(tmp_path / "ft.jsonl", 3)
    code = main(["eaft-stats", "--data", str(data), "--absolute", "--p-threshold", "1",
                    "--h-threshold", "1.01", "--uncertain-threshold", "1.5"])
    out = capsys.readouterr().out
    assert code == 0
    # p <= 1 and H~ <= 1.01 hold for every token: all are conflicts
    assert "confident conflicts: 100.00%" in out
    assert "confident_conflict" in out and "EAFT grad" in out


def test_eaft_stats_errors_are_one_sentence(tmp_path: Path, tiny, monkeypatch, capsys) -> None:
    assert main(["eaft-stats", "--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "w1"}\n')
    assert main(["eaft-stats", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl, line 1, field 'completion'" in err and "holds no valid" in err
    data = _write(tmp_path / "ft.jsonl", 2)
    assert main(["eaft-stats", "--data", str(data), "--h-threshold", "80"]) == 2
    assert "must lie above" in capsys.readouterr().err


def test_finetune_compare_json_and_csv(tmp_path: Path, tiny, monkeypatch, capsys) -> None:
    train = _write(tmp_path / "train.jsonl", 8)
    general = _write(tmp_path / "general.jsonl", 4, offset=100)
    out = tmp_path / "table.csv"
    code = main(["finetune-compare", "--train", str(train), "--general", str(general),
                    "--steps", "2", "--batch-size", "2", "--lr", "1e-2",
                    "--methods", "sft,eaft,sft_lr_matched", "--target-new-tokens", "3",
                    "--general-new-tokens", "3", "--json", "--out", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["method"] for row in report["rows"]] == ["base", "sft", "eaft",
                                                          "sft_lr_matched"]
    assert report["rows"][0]["mean_gate"] is None  # NaN for the base, null in JSON
    eaft = report["rows"][2]
    assert report["rows"][3]["lr"] == pytest.approx(1e-2 * eaft["mean_gate"])
    table = pd.read_csv(out)
    assert table["method"].tolist() == ["base", "sft", "eaft", "sft_lr_matched"]
    assert table["target_loss"].to_numpy() == pytest.approx(
        [row["target_loss"] for row in report["rows"]])


def test_parser_building_imports_no_torch_and_lists_every_method() -> None:
    import subprocess
    import sys

    from core.cli.control import COMPARE_METHODS
    from core.control.finetune import METHODS

    assert COMPARE_METHODS == ",".join(METHODS)
    code = ("import argparse, sys; from core.cli.control import register; "
            "p = argparse.ArgumentParser(); register(p.add_subparsers()); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def test_finetune_compare_rejects_bad_methods(tmp_path: Path, tiny, monkeypatch,
                                              capsys) -> None:
    train = _write(tmp_path / "train.jsonl", 4)
    code = main(["finetune-compare", "--train", str(train), "--general", str(train),
                    "--methods", "sft,sft_lr_matched"])
    assert code == 2
    assert "put 'eaft' before it" in capsys.readouterr().err


def test_make_finetune_data(tmp_path: Path, tiny, monkeypatch, capsys) -> None:
    import core.control.finetune

    # the tiny model knows nothing: with no right answer there is no general set
    code = main(["make-finetune-data", "--out-dir", str(tmp_path), "--target", "4",
                    "--max-new-tokens", "2"])
    assert code == 2 and "answered none" in capsys.readouterr().err

    from core.control.finetune_samples import GENERAL_QUESTIONS

    answers = [f"It is {answer.split('|')[0]}." for _, answer in GENERAL_QUESTIONS]
    monkeypatch.setattr(core.control.finetune, "greedy_replies", lambda *a, **k: answers)
    code = main(["make-finetune-data", "--out-dir", str(tmp_path), "--target", "4"])
    assert code == 0
    from core.control.finetune_data import read_finetune

    target = read_finetune(tmp_path / "finetune_target.jsonl", strict=True).examples
    general = read_finetune(tmp_path / "finetune_general.jsonl", strict=True).examples
    assert len(target) == 4 and len(general) == len(GENERAL_QUESTIONS)
    conflicts = read_finetune(tmp_path / "finetune_conflicts.jsonl", strict=True).examples
    assert len(conflicts) == sum(q.startswith("What is the capital") for q, _ in GENERAL_QUESTIONS)
    meta = json.loads((tmp_path / "finetune_target.meta.json").read_text())
    assert meta["schema_version"] == 1 and "make-finetune-data" in meta["command"]
    assert "Wrote 4 target examples" in capsys.readouterr().out


@pytest.mark.e2e
def test_default_model_end_to_end(tmp_path: Path, monkeypatch, capsys) -> None:
    rows = [{"prompt": "What is 3 + 4?", "completion": "Plan: start 3, then +4.\n[1] 3 + 4 = 7\n"
                                                       "#### 7", "answer": "7"},
            {"prompt": "What is 6 × 2?", "completion": "Plan: start 6, then ×2.\n[1] 6 × 2 = 12\n"
                                                       "#### 12", "answer": "12"},
            {"prompt": "What is 9 - 5?", "completion": "Plan: start 9, then -5.\n[1] 9 - 5 = 4\n"
                                                       "#### 4", "answer": "4"}]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    general = tmp_path / "general.jsonl"
    general.write_text(json.dumps({"prompt": "What is the capital of France?",
                                   "completion": "The capital of France is Paris.",
                                   "answer": "Paris"}) + "\n")
    assert main(["eaft-stats", "--data", str(train), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_tokens"] > 30 and 0 <= report["conflict_fraction"] <= 1
    code = main(["finetune-compare", "--train", str(train), "--general", str(general),
                    "--steps", "1", "--batch-size", "2", "--methods", "sft,eaft", "--lora",
                    "--target-new-tokens", "24", "--general-new-tokens", "12", "--json"])
    assert code == 0
    table = json.loads(capsys.readouterr().out)
    assert table["model"] == "SmolLM2-135M-Instruct"
    base = table["rows"][0]
    assert base["general_acc"] == 1.0  # the base model knows the capital of France
    assert [row["method"] for row in table["rows"]] == ["base", "sft", "eaft"]
