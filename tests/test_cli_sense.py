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
SETTING_KEYS = {"layer", "strength", "concept", "detection", "identification",
                "false_positive", "net", "coherence", "effective_magnitude",
                "relative_magnitude"}


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
    for name in ("concept", "inject", "sweep", "prefill", "logit-lens", "judge-audit"):
        assert parser.parse_args(_minimal(name)).command == name


def _minimal(name: str) -> list[str]:
    return {
        "concept": ["concept", "--words", "w10", "--out", "x"],
        "inject": ["inject", "--concept", "w10", "--layer", "1", "--strength", "2"],
        "sweep": ["sweep", "--concepts", "w10", "--layers", "1", "--strengths", "1"],
        "prefill": ["prefill", "--layers", "1"],
        "logit-lens": ["logit-lens", "--concept", "w10", "--layer", "1", "--strength", "2"],
        "judge-audit": ["judge-audit", "a.jsonl", "--out", "b.jsonl"],
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
                       "--min-none-trials", "3", "--mismatch-with", "w11", "--out", str(csv)],
                      capsys)
    report = json.loads(text)
    assert code == 0
    assert report["layer"] == 2 and report["strength"] == 4.0 and report["partner"] == "w11"
    assert {r["condition"] for r in report["rates"]} == {"injected", "none", "random", "negated"}
    # 2 trials in each of 7 injected arms, 3 in each of the 2 arms without injection
    assert len(report["trials"]) == 7 * 2 + 2 * 3
    assert {"detection", "identification", "false_positive", "net", "coherence"} <= set(
        report["summary"])
    assert report["effective_magnitude"] == pytest.approx(4.0 * report["vector_norm"])
    assert report["relative_magnitude"] == pytest.approx(
        report["effective_magnitude"] / report["mean_residual_norm"])
    assert {r["control"] for r in report["controls"]} == {
        "injected", "none", "random", "negated", "generation_only", "yes_no", "yes_no_none",
        "named", "mismatch"}
    assert csv.read_text().count("\n") == 21  # header + 20 trials (no newline in these replies)


def test_inject_text_output_and_skipped_controls(model_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, text = _run(["inject", "--model", str(model_dir), "--concept", "w10", "--layer", "-1",
                       "--strength", "1", "--trials", "1", "--max-new-tokens", "2",
                       "--min-none-trials", "2", "--positions", "generated"]
                      + [a for c in ("random", "negated", "yes_no", "mismatch")
                         for a in ("--skip-control", c)], capsys)
    assert code == 0
    assert f"layer {LAYERS - 1}" in text and "net = identification" in text
    assert "x the layer's mean residual norm" in text
    assert "random" not in text and "none #1]" in text and "generation_only" not in text


def test_sweep_json_rows_carry_every_control(model_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vectors"
    _run(["concept", "--model", str(model_dir), "--words", "w10,w11", "--layers", "1,2",
          "--out", str(out)], capsys)
    csv = tmp_path / "sweep.csv"
    code, text = _run(["sweep", "--model", str(model_dir), "--concepts", "w10,w11",
                       "--layers", "1,2", "--strengths", "1,4", "--trials", "1",
                       "--max-new-tokens", "2", "--vectors", str(out), "--json",
                       "--out", str(csv)], capsys)
    report = json.loads(text)
    assert code == 0 and len(report["settings"]) == 8
    assert all(SETTING_KEYS <= set(row) for row in report["settings"])
    assert {(r["layer"], r["strength"], r["concept"]) for r in report["settings"]} == {
        (la, s, c) for la in (1, 2) for s in (1.0, 4.0) for c in ("w10", "w11")}
    rows = report["rows"]
    assert all("control" in row for row in rows)
    none = [r for r in rows if r["control"] == "none"]
    assert len(none) == 1 and none[0]["n"] == 100 and none[0]["layer"] is None
    assert none[0]["rate_lo"] is not None and none[0]["rate_hi"] is not None
    per_setting = {"injected", "random", "negated", "generation_only", "yes_no", "named",
                   "mismatch"}
    assert {r["control"] for r in rows} == per_setting | {"none", "yes_no_none"}
    assert len(rows) == 2 + 8 * len(per_setting)
    injected = [r for r in rows if r["control"] == "injected"]
    assert all(r["reference"] == "none" and r["reference_n"] == 100 for r in injected)
    assert not Path(f"{csv}.journal.jsonl").exists()  # removed once the table is written


def test_sweep_text_in_relative_strengths(model_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """--scale relative: the strength is the push in mean residual norms, so each row's push
    reads 'E (S.SSx)' with S the strength; the shared arms are printed with their n."""
    code, text = _run(["sweep", "--model", str(model_dir), "--concepts", "w10", "--layers", "2",
                       "--strengths", "0.25,1", "--scale", "relative", "--trials", "1",
                       "--max-new-tokens", "2", "--min-none-trials", "3",
                       "--mismatch-with", "w11"], capsys)
    assert code == 0
    assert "1 per injected arm, 3 per arm without injection, scale relative" in text
    assert "no injection: detection (false positives)" in text and "(n 3)" in text
    assert "unrelated yes/no questions, no injection: yes" in text
    rows = [line for line in text.splitlines() if line.split()[:3] in (
        ["2", "0.25", "w10"], ["2", "1", "w10"])]
    assert len(rows) == 2
    assert "(0.25x)" in rows[0] and "(1.00x)" in rows[1]


def test_prefill_text_gives_each_rate_beside_no_injection(
        model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = _run(["prefill", "--model", str(model_dir), "--layers", "2", "--trials", "1",
                       "--max-new-tokens", "2", "--scale", "relative", "--strength", "0.5"],
                      capsys)
    assert code == 0 and "strength 0.5 (relative)" in text
    lines = [line.split() for line in text.splitlines()]
    conditions = [parts[1] for parts in lines if parts[:1] == ["2"]]
    assert conditions == ["none", "matching", "random"]


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
    """SmolLM2-135M: one short trial per arm at layer 15 (a smoke run, not a result)."""
    code, text = _run(["inject", "--concept", "bread", "--layer", "15", "--strength", "4",
                       "--trials", "1", "--min-none-trials", "1", "--max-new-tokens", "12",
                       "--json"], capsys)
    report = json.loads(text)
    assert code == 0 and report["model"] == "SmolLM2-135M-Instruct"
    assert len(report["trials"]) == 9 and report["partner"] == "ocean"
    assert 0 < report["vector_norm"] < report["mean_residual_norm"]
    assert all(isinstance(t["reply"], str) for t in report["trials"])


def test_judge_audit_puts_the_judges_verdicts_in(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    from core.data.label_audit import read_audit, write_audit
    from core.sense.grader_audit import hand_items
    from tests.test_introspection import _judge_tokenizer

    judge_dir = tmp_path / "judge"
    tiny_model("llama", seed=4).save_pretrained(judge_dir)
    _judge_tokenizer().save_pretrained(judge_dir)
    audit = tmp_path / "audit.jsonl"
    items = hand_items([{"reply": "Yes, I detect a thought about bread.", "concept": "bread"},
                        {"reply": "It was an accident.", "sentence": "A line.", "word": "w"}])
    write_audit([replace(i, human=dict.fromkeys(i.human, True)) for i in items], audit)
    out = tmp_path / "judged.jsonl"
    code, text = _run(["judge-audit", str(audit), "--model", str(judge_dir), "--out", str(out)],
                      capsys)
    judged = read_audit(out)
    assert code == 0 and "1 items" in text and len(judged) == 1
    assert judged[0].info["grader"].startswith("judge ")
    assert set(judged[0].machine) == {"coherent", "affirmative", "identified"}
    assert judged[0].human == dict.fromkeys(judged[0].human, True)
    with pytest.raises(CliError, match="does not exist"):
        _run(["judge-audit", str(tmp_path / "none.jsonl"), "--out", str(out)], capsys)
