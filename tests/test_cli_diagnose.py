"""`telltale train` and `evaluate` end to end on a tiny random model: the baselines a probe faces
(text-only, last-token, global-mean), intervals over problems, dynamics at 0.5 and at the
calibrated threshold, the answers with their chance rate, a capture folder that resumes, and a
probe file written before the text baseline existed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.cli.main import main
from core.diagnose.probes import load_probe, probe_paths
from tests.tiny_models import tiny_model, tiny_tokenizer

CHAT = ("{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
        "{% if add_generation_prompt %}w5 {% endif %}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer(CHAT).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two chains per problem, one ending right and one wrong; broken steps often say "w77"."""
    rng = np.random.default_rng(0)
    lines = []
    for problem in range(24):
        for wrong in (0, 1):
            n_steps = int(rng.integers(3, 6))
            bad = int(rng.integers(0, n_steps - 1)) if wrong else -1
            steps = []
            for t in range(n_steps):
                words = " ".join(f"w{int(x)}" for x in rng.integers(6, 60, 3))
                if t == bad and rng.random() < 0.7:
                    words += " w77"
                steps.append({"text": words, "label": int(t == bad),
                              "prefix_label": int(wrong and t >= bad)})
            answered = bool(rng.random() < 0.9)
            lines.append(json.dumps({
                "id": f"p{problem}-c{wrong}", "problem_id": f"p{problem}",
                "prompt": f"w{10 + problem % 7} w11", "steps": steps,
                "answer": (str(problem) if not wrong else str(problem + 1)) if answered
                else None, "answered": answered, "gold": str(problem),
                "is_correct": answered and not wrong}))
    path = tmp_path_factory.mktemp("traces") / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def probe(model_dir: Path, traces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "p"
    assert main(["train", "--model", str(model_dir), "--traces", str(traces), "--out", str(out),
                 "--layer", "1", "--epochs", "2"]) == 0
    return out


def test_train_writes_every_baseline_and_how_its_fits_ended(probe: Path) -> None:
    bundle = load_probe(probe)
    assert bundle.text is not None and bundle.text.step is not None
    assert bundle.last_token_step is not None and bundle.baseline_step is not None
    sidecar = json.loads(probe_paths(probe)[1].read_text())
    assert sidecar["probe_version"] == 2 and "vocabulary" in json.dumps(
        sidecar["text_baseline"])
    assert {"step", "tracker_start", "last_token_step"} <= set(sidecar["fits"])
    assert all(isinstance(fit["converged"], bool) for fit in sidecar["fits"].values())


def test_evaluate_json_has_the_new_keys_and_the_old_shape(model_dir: Path, traces: Path,
                                                          probe: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    args = ["evaluate", "--model", str(model_dir), "--traces", str(traces), "--probe",
            str(probe), "--json", "--bootstrap", "100", "--capture", str(tmp_path / "cap")]
    code, out, err = _run(args, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert set(report["baselines"]) == {"mean_entropy", "mean_nll", "max_nll", "min_prob",
                                        "global_mean_probe", "last_token", "text"}
    assert set(report["baselines"]["text"]) == set(report["baselines"]["max_nll"])
    assert report["baselines"]["text"]["step_auroc"] > 0.6  # "w77" is in the words
    intervals = report["intervals"]
    assert intervals["unit"] == "problem" and intervals["n_problems"] == 24
    assert set(intervals["lead"]["text"]) == {"step_auroc", "final_auroc"}
    assert set(report["dynamic_at_0_5"]) == set(report["dynamic"])
    answers = report["answers"]
    assert report["answered"] == answers["n_answered"] / 48 and answers["n_problems"] == 24
    assert report["accuracy"] == answers["n_correct"] / 48
    assert 0 <= report["chance_accuracy"] < report["accuracy"]
    # the capture folder resumes: a second run reads it and gives the same report
    code, again, _ = _run(args, capsys)
    assert code == 0 and json.loads(again) == report


def test_evaluate_prints_the_tables_in_words(model_dir: Path, traces: Path, probe: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["evaluate", "--model", str(model_dir), "--traces", str(traces),
                           "--probe", str(probe), "--bootstrap", "50"], capsys)
    assert code == 0, err
    for phrase in ("text-only classifier", "last-token probe", "global-mean-pooled probe",
                   "bootstrap over 24 problems", "lead of the probes", "at the paper's 0.5",
                   "censored (the chain ended with the alarm up", "answers: ", "chance "):
        assert phrase in out, phrase
    assert "SAPLMA" not in out


def test_a_probe_file_without_the_new_parts_still_evaluates(model_dir: Path, traces: Path,
                                                           probe: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    from safetensors.torch import load_file, save_file

    weights, sidecar_path = probe_paths(probe)
    sidecar = json.loads(sidecar_path.read_text())
    for key in ("text_baseline", "fits"):
        sidecar.pop(key)
    sidecar["probe_version"] = 1
    sidecar["extra_inputs"] = {k: v for k, v in sidecar["extra_inputs"].items()
                               if not k.startswith("last_token")}
    tensors = {k: v for k, v in load_file(str(weights)).items()
               if not k.startswith(("text.", "last_token"))}
    old = tmp_path / "old"
    save_file(tensors, str(old) + ".safetensors")
    Path(str(old) + ".json").write_text(json.dumps(sidecar))
    code, out, err = _run(["evaluate", "--model", str(model_dir), "--traces", str(traces),
                           "--probe", str(old), "--json", "--bootstrap", "0"], capsys)
    assert code == 0, err
    assert set(json.loads(out)["baselines"]) == {"mean_entropy", "mean_nll", "max_nll",
                                                 "min_prob", "global_mean_probe"}
