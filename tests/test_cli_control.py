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
    verdict = report["suitability"]
    assert verdict["verdict"] in {"suits", "partly", "does_not_suit"} and verdict["reason"]
    assert (verdict["p_cut"], verdict["h_cut"]) == (0.1, 0.2)  # absolute, whatever is shown
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
    assert "Suitability: " in out


def test_eaft_stats_exports_trainer_fragments(tmp_path: Path, tiny, monkeypatch,
                                              capsys) -> None:
    yaml = pytest.importorskip("yaml")
    data = _write(tmp_path / "ft.jsonl", 3)
    monkeypatch.chdir(tmp_path)
    assert main(["eaft-stats", "--data", str(data), "--export", "axolotl", "--k", "8",
                 "--alpha", "2"]) == 0
    assert "Wrote the axolotl config fragment to eaft_axolotl.yaml" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "eaft_axolotl.yaml").read_text()) == {
        "use_eaft": True, "eaft_alpha": 2.0, "eaft_k": 8}
    out = tmp_path / "lf.yaml"
    assert main(["eaft-stats", "--data", str(data), "--export", "llamafactory",
                 "--export-out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["export"] == {"format": "llamafactory", "path": str(out)}
    assert yaml.safe_load(out.read_text())["use_eaft_loss"] is True
    assert f"{data}: " in out.read_text()  # the verdict is recorded with the data
    assert main(["eaft-stats", "--data", str(data), "--export", "trl"]) == 0
    compile((tmp_path / "eaft_trl.py").read_text(), "eaft_trl.py", "exec")
    # a K that LLaMA-Factory cannot take fails before the model loads, as one sentence
    assert main(["eaft-stats", "--data", str(data), "--export", "llamafactory",
                 "--k", "10"]) == 2
    assert "no K setting" in capsys.readouterr().err


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
    journal = tmp_path / "runs.jsonl"
    code = main(["finetune-compare", "--train", str(train), "--general", str(general),
                 "--steps", "4", "--eval-every", "2", "--batch-size", "2", "--lr", "1e-2",
                 "--methods", "sft,eaft", "--repeats", "2", "--target-new-tokens", "3",
                 "--general-new-tokens", "3", "--json", "--out", str(out),
                 "--journal", str(journal)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["method"] for row in report["rows"]] == ["base", "sft", "eaft"] * 2
    assert report["rows"][0]["mean_gate"] is None  # NaN for the base, null in JSON
    assert report["config"]["seeds"] == [0, 1] and report["config"]["learning_rate"] == 1e-2
    assert len(report["curves"]) == 2 * 2 * 3  # seeds x methods x (steps 0, 2, 4)
    assert len(report["levels"]) == 1
    summary = {row["method"]: row for row in report["summary"]}
    assert set(summary) == {"sft", "eaft"} and summary["eaft"]["n_seeds"] == 2
    assert {"d_general_loss_mean", "d_general_loss_sd", "d_theta_mean"} <= set(summary["sft"])
    assert report["differences"][0]["method"] == "eaft"
    table = pd.read_csv(out)
    assert table["method"].tolist() == ["base", "sft", "eaft"] * 2
    assert table["target_loss"].to_numpy() == pytest.approx(
        [row["target_loss"] for row in report["rows"]])
    assert len(journal.read_text().splitlines()) == 1 + 2 * 3
    # text output: the matched table first
    assert main(["finetune-compare", "--train", str(train), "--general", str(general),
                 "--steps", "4", "--eval-every", "2", "--batch-size", "2", "--lr", "1e-2",
                 "--methods", "sft,eaft", "--repeats", "2", "--target-new-tokens", "3",
                 "--general-new-tokens", "3", "--journal", str(journal)]) == 0
    text = capsys.readouterr().out
    assert "target-loss reduction (mean ± sd [min, max] over seeds" in text
    assert "eaft - sft, seed by seed: d general loss" in text and "of 2 seeds" in text
    assert "After the last step" in text


def test_parser_building_imports_no_torch_and_lists_every_method() -> None:
    import subprocess
    import sys

    from core.cli.control import (
        COMPARE_METHODS,
        DEFAULT_COMPARE_METHODS,
        EXPORT_FORMATS,
        OPTIMIZERS,
    )
    from core.control.export import EXPORT_FORMATS as CORE_FORMATS
    from core.control.finetune import DEFAULT_METHODS, METHODS
    from core.control.finetune import OPTIMIZERS as CORE_OPTIMIZERS

    assert COMPARE_METHODS == ",".join(METHODS)
    assert DEFAULT_COMPARE_METHODS == ",".join(DEFAULT_METHODS)
    assert (EXPORT_FORMATS, OPTIMIZERS) == (CORE_FORMATS, CORE_OPTIMIZERS)
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
                 "--methods", "sft,eaft,sft_lr_matched"])
    assert code == 2
    assert "only with the SGD optimizer" in capsys.readouterr().err
    code = main(["finetune-compare", "--train", str(train), "--general", str(train),
                 "--methods", "sft,sft_lr_matched", "--optimizer", "sgd"])
    assert code == 2
    assert "put 'eaft' before it" in capsys.readouterr().err
    code = main(["finetune-compare", "--train", str(train), "--general", str(train),
                 "--match-at", "half"])
    assert code == 2 and "--match-at" in capsys.readouterr().err


def test_lr_matched_runs_under_sgd(tmp_path: Path, tiny, monkeypatch, capsys) -> None:
    train = _write(tmp_path / "train.jsonl", 8)
    code = main(["finetune-compare", "--train", str(train), "--general", str(train),
                 "--steps", "2", "--batch-size", "2", "--optimizer", "sgd", "--lr", "0.5",
                 "--methods", "sft,eaft,sft_lr_matched", "--target-new-tokens", "2",
                 "--general-new-tokens", "2", "--no-curve-accuracy", "--json"])
    assert code == 0
    rows = {row["method"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["sft_lr_matched"]["lr"] == pytest.approx(0.5 * rows["eaft"]["mean_gate"])


def test_make_finetune_data(tmp_path: Path, tiny, monkeypatch, capsys) -> None:
    import core.control.training

    # the tiny model knows nothing: with no right answer there is no general set
    code = main(["make-finetune-data", "--out-dir", str(tmp_path), "--target", "4",
                    "--max-new-tokens", "2"])
    assert code == 2 and "answered none" in capsys.readouterr().err

    from core.control.finetune_samples import GENERAL_QUESTIONS

    answers = [f"It is {answer.split('|')[0]}." for _, answer in GENERAL_QUESTIONS]
    monkeypatch.setattr(core.control.training, "greedy_replies", lambda *a, **k: answers)
    code = main(["make-finetune-data", "--out-dir", str(tmp_path), "--target", "4"])
    assert code == 0
    from core.control.finetune_data import read_finetune

    target = read_finetune(tmp_path / "finetune_target.jsonl", strict=True).examples
    general = read_finetune(tmp_path / "finetune_general.jsonl", strict=True).examples
    notation = read_finetune(tmp_path / "finetune_notation.jsonl", strict=True).examples
    assert len(target) == 4 and len(general) == len(GENERAL_QUESTIONS) and len(notation) == 64
    assert (tmp_path / "finetune_notation.meta.json").exists()
    conflicts = read_finetune(tmp_path / "finetune_conflicts.jsonl", strict=True).examples
    assert len(conflicts) == sum(q.startswith("What is the capital") for q, _ in GENERAL_QUESTIONS)
    meta = json.loads((tmp_path / "finetune_target.meta.json").read_text())
    assert meta["schema_version"] == 1 and "make-finetune-data" in meta["command"]
    assert "Wrote 4 house-style and 64 little-endian target examples" in capsys.readouterr().out


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
    assert report["suitability"]["verdict"] in {"suits", "partly", "does_not_suit"}
    code = main(["finetune-compare", "--train", str(train), "--general", str(general),
                 "--steps", "1", "--batch-size", "2", "--methods", "sft,eaft", "--lora",
                 "--target-new-tokens", "24", "--general-new-tokens", "12", "--json"])
    assert code == 0
    table = json.loads(capsys.readouterr().out)
    assert table["model"] == "SmolLM2-135M-Instruct"
    base = table["rows"][0]
    assert base["general_acc"] == 1.0  # the base model knows the capital of France
    assert [row["method"] for row in table["rows"]] == ["base", "sft", "eaft"]
