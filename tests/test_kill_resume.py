"""Long jobs survive a kill: each command is SIGKILLed at random moments in a real subprocess,
then run again with the same arguments; the result equals an uninterrupted run's, and no file
that a later command reads is ever half-written (every JSON, CSV, Parquet and safetensors file
present right after a kill reads whole).

Commands: capture, make-traces, train, finetune-compare and sweep, on a tiny random model saved
to a folder (the real local-path loader). Kill points are drawn uniformly over the middle of an
uninterrupted run's duration, so some land in the work and some before it; both must hold.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAT = ("{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
        "{% if add_generation_prompt %}w5 {% endif %}")
KILLS_PER_COMMAND = 2
# timings, and what one run did itself (replies sampled now rather than read from the journal)
VOLATILE = {"train_seconds", "seconds", "load_seconds", "created", "elapsed_s", "n_sampled"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("kill-inputs")
    tiny_model("llama").save_pretrained(folder / "model")
    tiny_tokenizer(CHAT).save_pretrained(folder / "model")
    lines = []
    for i in range(240):
        steps = [{"text": f"w{10 + (i + j) % 20} w{30 + j} w{40 + i % 7}",
                  "label": int((i + j) % 3 == 0)} for j in range(4)]
        lines.append(json.dumps({"id": f"c{i}", "problem_id": f"p{i // 3}",
                                 "prompt": f"w{10 + i % 7} w11", "steps": steps,
                                 "is_correct": bool(i % 3)}))
    (folder / "traces.jsonl").write_text("\n".join(lines) + "\n")
    rows = [{"id": i, "prompt": f"w{10 + i} w{20 + i}",
             "completion": f"w{30 + i} w{40 + i} w{50 + i}", "answer": f"w{50 + i}"}
            for i in range(16)]
    (folder / "ft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "general.jsonl").write_text(
        "".join(json.dumps({**r, "id": 100 + r["id"]}) + "\n" for r in rows))
    return folder


def commands(inputs: Path) -> dict[str, list[str]]:
    model = ["--model", str(inputs / "model")]
    traces = str(inputs / "traces.jsonl")
    return {
        "capture": ["capture", *model, "--traces", traces, "--layers", "0-3", "--out", "cap",
                    "--batch-size", "4"],
        "make-traces": ["make-traces", *model, "--problems", "arith", "--n-problems", "24",
                        "--n", "2", "--max-new-tokens", "40", "--batch-size", "4",
                        "--out", "chains.jsonl"],
        "train": ["train", *model, "--traces", traces, "--out", "probe", "--sweep",
                  "--sweep-layers", "1,2,3", "--epochs", "3", "--capture", "features"],
        "finetune-compare": ["finetune-compare", *model, "--train", str(inputs / "ft.jsonl"),
                             "--general", str(inputs / "general.jsonl"), "--steps", "6",
                             "--batch-size", "2", "--methods", "sft,eaft", "--repeats", "2",
                             "--target-new-tokens", "3", "--general-new-tokens", "3",
                             "--out", "compare.csv", "--journal", "compare.journal.jsonl"],
        "sweep": ["sweep", *model, "--concepts", "w10,w12", "--layers", "1,2",
                  "--strengths", "1,2", "--trials", "3", "--min-none-trials", "6",
                  "--max-new-tokens", "8", "--out", "sweep.csv",
                  "--journal", "sweep.journal.jsonl"],
    }


def run(argv: list[str], cwd: Path, kill_after: float | None = None) -> tuple[int, float]:
    """Run `telltale ARGV` in `cwd`; with `kill_after`, SIGKILL it then (if still running)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "core.cli.main", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        proc.wait(timeout=kill_after if kill_after is not None else 300)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            raise
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode, time.monotonic() - start


def check_whole(folder: Path) -> None:
    """Every file a later command reads is whole: it parses."""
    from safetensors.torch import load_file

    for path in folder.rglob("*"):
        if path.name.startswith(".") or ".tmp" in path.name or not path.is_file():
            continue  # atomic writes' temporary files are never read
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".parquet":
            pd.read_parquet(path)
        elif path.suffix == ".safetensors":
            load_file(str(path))
        elif path.suffix == ".jsonl" and "journal" not in path.name \
                and not path.name.endswith(".replies.jsonl"):
            for line in path.read_text().splitlines():
                if line.strip():
                    json.loads(line)


def results(folder: Path) -> dict[str, object]:
    """What an uninterrupted run leaves, minus timings: parsed files by relative path."""
    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or "journal" in path.name or path.name.endswith(".replies.jsonl") \
                or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue  # journals, and temporary files of killed atomic writes (never read)
        name = str(path.relative_to(folder))
        if path.suffix == ".csv":
            table = pd.read_csv(path)
            table = table.drop(columns=[c for c in table if c in VOLATILE])
            out[name] = table.astype(object).where(table.notna(), None).to_dict("list")
        elif path.suffix == ".json":
            out[name] = _without_volatile(json.loads(path.read_text()))
        elif path.suffix == ".parquet":
            table = pd.read_parquet(path)
            out[name] = table.astype(object).where(table.notna(), None).to_dict("list")
        else:
            out[name] = path.read_bytes()
    return out


def _without_volatile(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


@pytest.mark.parametrize("name", ["capture", "make-traces", "train", "finetune-compare",
                                  "sweep"])
def test_a_killed_command_run_again_gives_the_uninterrupted_result(
        name: str, inputs: Path, tmp_path: Path) -> None:
    argv = commands(inputs)[name]
    reference = tmp_path / "reference"
    reference.mkdir()
    code, seconds = run(argv, reference)
    assert code == 0
    expected = results(reference)
    rng = random.Random(name)
    for attempt in range(KILLS_PER_COMMAND):
        folder = tmp_path / f"killed-{attempt}"
        folder.mkdir()
        for kill_at in sorted(rng.uniform(0.3, 0.9) * seconds for _ in range(2)):
            run(argv, folder, kill_after=kill_at)  # killed (or finished) twice in a row
            check_whole(folder)
        code, _ = run(argv, folder)
        assert code == 0
        assert results(folder) == expected, f"{name}: a rerun after kills differs"

