"""The Sense subcommands (concept, inject, sweep, prefill, logit-lens) through a parser built here,
on a tiny local model folder (the real local-path loader), plus one e2e run on the default
model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from core.cli.common import CliError
from core.cli.sense import register
from core.runtime.models import load_model
from core.sense.concepts import load_library
from tests.tiny_models import LAYERS, tiny_model, tiny_tokenizer

CHAT = ("{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
        "{% if add_generation_prompt %}w5 {% endif %}")
SWEEP_ROW_KEYS = {"layer", "strength", "concept", "detection", "identification",
                  "false_positive", "net", "coherence"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer(CHAT).save_pretrained(folder)
    return folder


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telltale")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    args = _parser().parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def test_register_adds_the_subcommands() -> None:
    parser = _parser()
    for name in ("concept", "inject", "sweep", "prefill", "logit-lens"):
        assert parser.parse_args(_minimal(name)).command == name


def _minimal(name: str) -> list[str]:
    return {
        "concept": ["concept", "--words", "w10", "--out", "x"],
        "inject": ["inject", "--concept", "w10", "--layer", "1", "--strength", "2"],
        "sweep": ["sweep", "--concepts", "w10", "--layers", "1", "--strengths", "1"],
        "prefill": ["prefill", "--layers", "1"],
        "logit-lens": ["logit-lens", "--concept", "w10", "--layer", "1", "--strength", "2"],
    }[name]


def test_concept_writes_a_library(model_dir: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "concepts"
    caps = tmp_path / "caps.txt"
    caps.write_text("w30 w31\nw32\n")
    code, text = _run(["concept", "--model", str(model_dir), "--words", "w10,w11",
                       "--layers", "1,3", "--out", str(out), "--contrastive", "caps",
                       "--caps-file", str(caps)], capsys)
    assert code == 0 and "3 concepts x 2 layers" in text
    library = load_library(out, load_model(str(model_dir)))
    assert library.concepts == ["w10", "w11", "caps"] and library.layers == (1, 3)
    assert library.recipes["caps"].positive == ("W30 W31", "W32")


def test_inject_json(model_dir: Path, capsys: pytest.CaptureFixture[str],
                     tmp_path: Path) -> None:
    csv = tmp_path / "trials.csv"
    code, text = _run(["inject", "--model", str(model_dir), "--concept", "w10", "--layer", "2",
                       "--strength", "4", "--trials", "2", "--max-new-tokens", "3", "--json",
                       "--out", str(csv)], capsys)
    report = json.loads(text)
    assert code == 0
    assert report["layer"] == 2 and report["strength"] == 4.0
    assert {r["condition"] for r in report["rates"]} == {"injected", "none", "random", "negated"}
    assert len(report["trials"]) == 8
    assert {"detection", "identification", "false_positive", "net", "coherence"} <= set(
        report["summary"])
    assert csv.read_text().count("\n") == 9  # header + 8 trials (replies here have no newline)


def test_inject_text_output_and_skipped_controls(model_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, text = _run(["inject", "--model", str(model_dir), "--concept", "w10", "--layer", "-1",
                       "--strength", "1", "--trials", "1", "--max-new-tokens", "2",
                       "--skip-control", "random", "--skip-control", "negated"], capsys)
    assert code == 0
    assert f"layer {LAYERS - 1}" in text and "net = identification" in text
    assert "random" not in text and "none #0" in text


def test_sweep_json_rows(model_dir: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vectors"
    _run(["concept", "--model", str(model_dir), "--words", "w10,w11", "--layers", "1,2",
          "--out", str(out)], capsys)
    code, text = _run(["sweep", "--model", str(model_dir), "--concepts", "w10,w11",
                       "--layers", "1,2", "--strengths", "1,4", "--trials", "1",
                       "--max-new-tokens", "2", "--vectors", str(out), "--json"], capsys)
    report = json.loads(text)
    assert code == 0 and len(report["rows"]) == 8
    assert all(SWEEP_ROW_KEYS <= set(row) for row in report["rows"])
    assert {(r["layer"], r["strength"], r["concept"]) for r in report["rows"]} == {
        (la, s, c) for la in (1, 2) for s in (1.0, 4.0) for c in ("w10", "w11")}


def test_sweep_text_table(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = _run(["sweep", "--model", str(model_dir), "--concepts", "w10",
                       "--layers", "1", "--strengths", "2", "--trials", "1",
                       "--max-new-tokens", "2"], capsys)
    assert code == 0 and "detect" in text and "w10" in text


def test_prefill_and_logit_lens_json(model_dir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, text = _run(["prefill", "--model", str(model_dir), "--layers", "1,2",
                       "--trials", "1", "--max-new-tokens", "2", "--json"], capsys)
    rows = json.loads(text)["rows"]
    assert code == 0 and [(r["layer"], r["condition"]) for r in rows] == [
        (1, "none"), (1, "matching"), (1, "random"), (2, "none"), (2, "matching"),
        (2, "random")]
    code, text = _run(["logit-lens", "--model", str(model_dir), "--concept", "w10",
                       "--layer", "2", "--strength", "4", "--json"], capsys)
    rows = json.loads(text)["rows"]
    assert code == 0 and len(rows) == 2 * LAYERS
    assert {"layer", "condition", "token", "prob", "rank"} <= set(rows[0])
    code, text = _run(["logit-lens", "--model", str(model_dir), "--concept", "w10",
                       "--layer", "2", "--strength", "4"], capsys)
    assert code == 0 and "p(injected)" in text


def test_user_errors_are_clear(model_dir: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CliError, match="'x' is not a number"):
        _run(["sweep", "--model", str(model_dir), "--concepts", "w10", "--layers", "1",
              "--strengths", "1,x"], capsys)
    with pytest.raises(CliError, match="does not exist"):
        _run(["inject", "--model", str(model_dir), "--concept", "w10", "--layer", "1",
              "--strength", "1", "--vectors", str(tmp_path / "nowhere")], capsys)
    with pytest.raises(CliError, match="--words"):
        _run(["concept", "--model", str(model_dir), "--out", str(tmp_path / "c")], capsys)
    with pytest.raises(ValueError, match="out of range"):
        _run(["inject", "--model", str(model_dir), "--concept", "w10", "--layer", "99",
              "--strength", "1"], capsys)


# ------------------------------------------------------------------ e2e: the default model


@pytest.mark.e2e
def test_default_model_inject_one_trial_per_condition(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    """SmolLM2-135M: one short trial per condition at layer 15 (a smoke run, not a result)."""
    code, text = _run(["inject", "--concept", "bread", "--layer", "15", "--strength", "4",
                       "--trials", "1", "--max-new-tokens", "12", "--json"], capsys)
    report = json.loads(text)
    assert code == 0 and report["model"] == "SmolLM2-135M-Instruct"
    assert len(report["trials"]) == 4
    assert 0 < report["vector_norm"] < report["mean_residual_norm"]
    assert all(isinstance(t["reply"], str) for t in report["trials"])
