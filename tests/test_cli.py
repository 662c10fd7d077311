"""The `telltale` command line on a tiny local model folder (the local-path loader for real),
plus one end-to-end call of the installed console script on the default model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.cli.main import main
from core.diagnose.feature_store import load_capture
from core.runtime.pooling import span_weights
from tests.tiny_models import tiny_model, tiny_tokenizer

CHAT = ("{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
        "{% if add_generation_prompt %}w5 {% endif %}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer(CHAT).save_pretrained(folder)
    return folder


def _traces(path: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        steps = []
        bad_from = int(rng.integers(1, 6))
        for t in range(int(rng.integers(2, 6))):
            words = " ".join(f"w{int(x)}" for x in rng.integers(6, 90, int(rng.integers(1, 5))))
            steps.append({"text": words, "label": int(t == bad_from)})
        lines.append(json.dumps({"id": f"c{i}", "problem_id": f"p{i // 2}",
                                 "prompt": f"w{10 + i % 7} w11", "steps": steps,
                                 "is_correct": bool(i % 3)}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json_keys(model_dir, capsys) -> None:
    code, out, _ = _run(["info", "--model", str(model_dir), "--json"], capsys)
    info = json.loads(out)
    assert code == 0
    assert set(info) == {"model", "n_layers", "hidden_size", "n_params", "dtype", "device"}
    assert info["n_layers"] == 4 and info["hidden_size"] == 32 and info["dtype"] == "float32"


def test_unloadable_model_is_one_sentence(tmp_path, capsys) -> None:
    code, out, err = _run(["info", "--model", str(tmp_path / "nope.gguf")], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err and "nope.gguf" in err


def test_capture_matches_the_hidden_states_and_resumes(model_dir, tmp_path, capsys) -> None:
    traces = _traces(tmp_path / "t.jsonl")
    out = tmp_path / "cap"
    code, stdout, _ = _run(["capture", "--model", str(model_dir), "--traces", str(traces),
                            "--layers", "1,-1", "--out", str(out), "--batch-size", "3"], capsys)
    assert code == 0 and "1 chunks written" in stdout
    cap = load_capture(out)
    assert sorted({k[0] for k in cap.features}) == [1, 3]
    assert len(cap.index) == cap.features[(1, "exp")].shape[0]
    assert {"mean_entropy", "mean_nll", "max_nll", "min_prob"} <= set(cap.index.columns)
    # oracle: the first chain's pooled vectors from output_hidden_states of a plain forward
    from core.data.traces import read_traces
    from core.diagnose.encode import encode_trace
    from core.runtime.models import load_model

    loaded = load_model(str(model_dir))
    first = read_traces(traces).traces[0]
    enc = encode_trace(loaded.tokenizer, first)
    with torch.no_grad():
        hidden = loaded.model(torch.tensor([enc.input_ids]),
                              output_hidden_states=True).hidden_states[2][0]
    expected = (span_weights(list(enc.step_spans), enc.n_tokens, "exp").float() @ hidden).numpy()
    np.testing.assert_allclose(cap.features[(1, "exp")][: len(enc.step_spans)], expected,
                               atol=1e-5)
    code, stdout, _ = _run(["capture", "--model", str(model_dir), "--traces", str(traces),
                            "--layers", "1,-1", "--out", str(out)], capsys)
    assert "0 chunks written, 1 already there" in stdout
    code, _, err = _run(["capture", "--model", str(model_dir), "--traces", str(traces),
                         "--layers", "2", "--out", str(out)], capsys)
    assert code == 2 and "other settings (layers)" in err


def test_shards_read_back_as_one(model_dir, tmp_path, capsys) -> None:
    traces = _traces(tmp_path / "t.jsonl")
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    common = ["--model", str(model_dir), "--traces", str(traces), "--layers", "2",
              "--poolings", "exp,causal"]
    assert _run(["capture", *common, "--out", str(whole)], capsys)[0] == 0
    for shard in ("0/2", "1/2"):
        assert _run(["capture", *common, "--out", str(sharded), "--shard", shard], capsys)[0] == 0
    a, b = load_capture(whole), load_capture(sharded)
    assert b.manifest["n_chains"] == 24 and len(b.manifest["shards"]) == 2
    order_a = a.index.sort_values(["trace_id", "step"]).index
    order_b = b.index.sort_values(["trace_id", "step"]).index
    np.testing.assert_allclose(a.features[(2, "causal")][order_a],
                               b.features[(2, "causal")][order_b], atol=1e-5)
    shutil.rmtree(sharded / "shard-00001-of-00002")
    (sharded / "stray").mkdir()
    with pytest.raises(FileNotFoundError):
        load_capture(sharded / "stray")


def test_validate_names_line_and_field(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "q", "steps": ["a"]}\nnot json\n'
                    b'{"prompt": "q", "steps": [{"text": "a", "label": 3}]}\n\xff\xfe\n')
    code, out, _ = _run(["validate", "--traces", str(bad)], capsys)
    assert code == 1
    assert "line 2" in out and "line 3" in out and "steps[0].label" in out and "line 4" in out
    assert "1 valid traces, 3 skipped" in out


def test_signals_csv(model_dir, tmp_path, capsys) -> None:
    traces = _traces(tmp_path / "t.jsonl", n=4)
    out = tmp_path / "s.csv"
    assert _run(["signals", "--model", str(model_dir), "--traces", str(traces), "--out",
                 str(out)], capsys)[0] == 0
    table = pd.read_csv(out)
    assert len(table) == sum(len(json.loads(x)["steps"]) for x in traces.read_text().split(
        "\n") if x)
    assert (table["min_prob"].between(0, 1)).all() and (table["mean_entropy"] >= 0).all()


def test_train_evaluate_score(model_dir, tmp_path, capsys) -> None:
    traces = _traces(tmp_path / "t.jsonl", n=40)
    probe = tmp_path / "probe"
    common = ["--model", str(model_dir), "--traces", str(traces)]
    code, out, err = _run(["train", *common, "--out", str(probe), "--sweep", "--sweep-layers",
                           "1-2", "--epochs", "2"], capsys)
    assert code == 0, err
    assert (tmp_path / "probe.safetensors").exists() and "Layer " in out
    code, out, _ = _run(["evaluate", *common, "--probe", str(probe), "--json"], capsys)
    report = json.loads(out)
    for key in ("n_chains", "n_steps", "step_auroc", "step_auprc", "prefix_auroc",
                "final_auroc", "baselines", "dynamic", "residual_time", "recovery"):
        assert key in report
    assert report["n_chains"] == 40
    assert set(report["baselines"]) == {"mean_entropy", "mean_nll", "max_nll", "min_prob",
                                        "global_mean_probe", "last_token", "text"}
    assert report["intervals"]["unit"] == "problem" and "text" in report["intervals"]["lead"]
    assert set(report["dynamic_at_0_5"]) == set(report["dynamic"])
    assert report["accuracy"] is None  # these traces carry no gold answer
    scored = tmp_path / "scored.jsonl"
    assert _run(["score", *common, "--probe", str(probe), "--out", str(scored)], capsys)[0] == 0
    first = json.loads(scored.read_text().splitlines()[0])
    assert len(first["telltale_scores"]["prefix"]) == len(first["steps"])


def test_probe_for_another_model_is_refused(model_dir, tmp_path, capsys) -> None:
    from core.diagnose.probes import LinearProbe, ProbeBundle, ProbeMeta, save_probe

    meta = ProbeMeta(model="x", model_name="x", hidden_size=64, layer=1, step_pooling="exp",
                     tracker_pooling="causal", baseline_pooling="prefix_mean",
                     step_input=False, threshold=0.5, step_threshold=0.5, data_hash="h")
    save_probe(tmp_path / "other", ProbeBundle(meta=meta, tracker=LinearProbe(np.zeros(64), 0)))
    code, _, err = _run(["evaluate", "--model", str(model_dir), "--traces",
                         str(_traces(tmp_path / "t.jsonl", 4)), "--probe",
                         str(tmp_path / "other")], capsys)
    assert code == 2 and "hidden size 64" in err and "hidden size 32" in err


@pytest.mark.e2e
def test_console_script_on_the_default_model() -> None:
    exe = Path(sys.executable).with_name("telltale")
    result = subprocess.run([str(exe), "info", "--model", "default", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["n_layers"] == 30 and info["hidden_size"] == 576
    assert 100e6 < info["n_params"] < 200e6
