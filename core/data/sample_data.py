"""The project's own labelled data: the model writes chains of thought for arithmetic word problems
that `core.data.arith` generates, and `core.data.arith`'s rules label every step.

Writes a trace file (JSONL) and a `.meta.json` sidecar with the schema version, the versions that
produced it and the exact arguments, so `telltale make-traces` regenerates it.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import __version__
from core.data.arith import (
    answers_match,
    cot_prompt,
    extract_answer,
    generate_problems,
    label_steps,
    prefix_labels,
    split_lines,
)
from core.data.atomic import atomic_write_text
from core.data.traces import SCHEMA_VERSION, Trace, trace_from_dict, write_traces
from core.progress import Progress
from core.runtime.generate import SamplingConfig, sample_responses
from core.runtime.models import LoadedModel

SOURCE = "telltale-arith"


@dataclass(frozen=True)
class MakeTracesSummary:
    files: tuple[str, ...]
    n_problems: int
    n_chains: int
    n_empty: int
    step_label_rate: float
    accuracy: float

    def __str__(self) -> str:
        return (f"Wrote {self.n_chains} chains for {self.n_problems} problems to "
                f"{', '.join(self.files)} (empty replies dropped: {self.n_empty}; "
                f"hallucinated-step rate {self.step_label_rate:.1%}; final answers correct "
                f"{self.accuracy:.1%}).")


def label_reply(problem_id: str, index: int, problem: Any, reply: str) -> dict[str, Any] | None:
    """The trace record (as a dict) for one reply, labelled; None for a reply with no step."""
    lines = split_lines(reply)
    if not lines:
        return None
    checks = label_steps(problem, lines)
    answer = extract_answer(reply)
    correct = answers_match(answer, problem.gold)
    step_labels = [c.label for c in checks]
    prefix = prefix_labels(step_labels, correct)
    return {
        "id": f"{problem_id}-c{index}",
        "problem_id": problem_id,
        "prompt": cot_prompt(problem),
        "steps": [{"text": text, "label": lab, "prefix_label": pre}
                  for text, lab, pre in zip(lines, step_labels, prefix, strict=True)],
        "answer": None if answer is None else f"{answer:g}",
        "gold": f"{problem.gold:g}",
        "is_correct": correct,
        "source": SOURCE,
        "label_reasons": [c.reason for c in checks],
    }


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"telltale": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def make_arith_traces(loaded: LoadedModel, out: str | Path, n_problems: int = 40,
                      samples: int = 2, seed: int = 0, max_new_tokens: int = 200,
                      temperature: float = 0.7, batch_size: int = 16,
                      progress: Progress | None = None, split_test: float = 0.0,
                      min_ops: int = 2, max_ops: int = 8,
                      max_number: int = 99) -> MakeTracesSummary:
    """Generate problems, sample `samples` chains each, label them and write the trace file(s).

    Replies are journaled batch by batch beside OUT (OUT.replies.jsonl): an interrupted run
    resumes where it stopped and writes the same files.

    With `split_test` > 0 the problems are split (never a problem in both) into OUT_train.jsonl
    and OUT_test.jsonl beside OUT instead of one file.
    """
    if n_problems < 1 or samples < 1:
        raise ValueError("Need at least one problem and one sample per problem.")
    if not 0.0 <= split_test < 1.0:
        raise ValueError(f"The test share must be in [0, 1), got {split_test}.")
    problems = generate_problems(n_problems, seed=seed, min_ops=min_ops, max_ops=max_ops,
                                 max_number=max_number)
    questions = [cot_prompt(p) for p in problems for _ in range(samples)]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    arguments = {"n_problems": n_problems, "samples": samples, "seed": seed,
                 "max_new_tokens": max_new_tokens, "temperature": temperature,
                 "batch_size": batch_size, "split_test": split_test, "min_ops": min_ops,
                 "max_ops": max_ops, "max_number": max_number}
    out = Path(out)
    journal = out.with_name(out.stem + ".replies.jsonl")
    done = _read_journal(journal, {**arguments, "model": loaded.name})
    with journal.open("a", encoding="utf-8") as handle:
        if handle.tell() == 0:  # a new journal starts with the settings it belongs to
            handle.write(json.dumps({"arguments": {**arguments, "model": loaded.name}}) + "\n")

        def journal_batch(first: int, batch: list[str]) -> None:
            for offset, reply in enumerate(batch):
                handle.write(json.dumps({"index": first + offset, "reply": reply}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

        replies = sample_responses(loaded, questions, sampling, batch_size=batch_size,
                                   progress=progress, done=done, on_batch=journal_batch)
    records: list[dict[str, Any]] = []
    n_empty = 0
    for i, reply in enumerate(replies):
        problem = problems[i // samples]
        record = label_reply(problem.problem_id, i % samples, problem, reply)
        if record is None:
            n_empty += 1
        else:
            records.append(record)
    traces = [trace_from_dict(r) for r in records]
    groups: dict[str, list[Trace]]
    if split_test > 0:
        ids = sorted({t.problem_id or t.id for t in traces})
        random.Random(seed).shuffle(ids)
        test_ids = set(ids[: max(1, round(len(ids) * split_test))])
        groups = {
            str(out.with_name(f"{out.stem}_train.jsonl")):
                [t for t in traces if (t.problem_id or t.id) not in test_ids],
            str(out.with_name(f"{out.stem}_test.jsonl")):
                [t for t in traces if (t.problem_id or t.id) in test_ids],
        }
    else:
        groups = {str(out): traces}
    labels = [lab for t in traces for lab in t.step_labels if lab is not None]
    summary = MakeTracesSummary(
        files=tuple(groups), n_problems=n_problems, n_chains=len(traces), n_empty=n_empty,
        step_label_rate=sum(labels) / max(len(labels), 1),
        accuracy=sum(bool(t.is_correct) for t in traces) / max(len(traces), 1))
    for path, group in groups.items():
        write_traces(path, group)
        meta = {
            "schema_version": SCHEMA_VERSION, "source": SOURCE, "model": loaded.name,
            "versions": _versions(), "arguments": arguments, "n_chains": len(group),
            "summary": asdict(summary),
            "regenerate": "telltale make-traces --out {} --problems {} --samples {} --seed {} "
                          "--max-new-tokens {} --temperature {} --batch-size {} --min-ops {} "
                          "--max-ops {} --max-number {}{}".format(
                              out, n_problems, samples, seed, max_new_tokens, temperature,
                              batch_size, min_ops, max_ops, max_number,
                              f" --test-share {split_test}" if split_test else ""),
        }
        atomic_write_text(Path(path).with_suffix(".meta.json"), json.dumps(meta, indent=2) + "\n")
    journal.unlink()  # every output is written: the journal of replies has served its purpose
    return summary


def _read_journal(path: Path, arguments: dict[str, Any]) -> dict[int, str]:
    """Replies an interrupted run already sampled with the same arguments (index -> reply)."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0]) if lines else {}
    if header.get("arguments") != arguments:
        raise ValueError(f"{path} holds replies sampled with other settings; delete it to start "
                         "over, or rerun with the settings it records.")
    done: dict[int, str] = {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut off by an interruption: sample from there again
        done[int(entry["index"])] = str(entry["reply"])
    return done
