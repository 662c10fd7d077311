"""Chains the model reads: worked solutions written by `core.data.arith`, some with one controlled
error, labelled exactly by construction.

The model's own chains cannot carry a final-level result (a small model is almost never right),
so this set gives the probes chains that end right and chains that end wrong in equal numbers,
read teacher-forced as a process verifier reads another model's work. Per problem two chains:

- one that ends **right**: the clean solution, or (half the time) a solution with one error
  that the next step corrects ("Wait, 7 * 2 = 14.") before going on from the right value;
- one that ends **wrong**: the same solution with one error whose value is carried through
  every later step to a wrong final answer.

An error is one of: a false result ("7 * 2 = 15"), an invented number (an operand that is
neither in the problem nor an earlier result, "7 + 4 = 11" where the problem adds 3; the
arithmetic is right), or a wrong operation ("7 + 2 = 9" where the problem doubles). A
confirmation step that restates an earlier correct line in the same words a correction uses
("Let me check: 4 + 3 = 7.") appears in half the clean chains and three quarters of the
carried ones, so that three quarters of the chains that end right and of those that end wrong
hold a check line: its presence, and the chain's length, are no clue to the outcome. Every
chain ends with an answer line "Answer: N".

Labels, exact by construction (the paper's conventions):
- step label 1 on the error step only (a carried value is not a new error; a correction, a
  confirmation and the answer line are 0);
- prefix label 1 from the error step on while the chain is on its way to the wrong answer:
  to the end for a carried error, only at the error step for a corrected one (0 again from the
  correction on: the chain is back on track); all 0 for a clean chain;
- `is_correct` = the stated answer equals the gold answer; `answered` is true for every chain.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import __version__
from core.data.arith import MAX_VALUE, ArithProblem, cot_prompt, generate_problems
from core.data.atomic import atomic_write_text
from core.data.traces import SCHEMA_VERSION, Trace, trace_from_dict, write_traces

SOURCE = "telltale-read-chains"
ERROR_KINDS = ("false_result", "invented_number", "wrong_operation")
CHECK_LEADS = ("Wait, ", "Let me check: ", "Check: ")
# Chances of a confirmation line: a right chain holds a check line with probability
# (CONFIRM_CLEAN + 1) / 2 (half are corrected, and a correction is a check line), a wrong one
# with CONFIRM_CARRIED; equal, so a check line says nothing about the outcome.
CONFIRM_CLEAN = 0.5
CONFIRM_CARRIED = 0.75
_OPS = "+-*/"

Line = tuple[str, int, int, int]  # (op, a, b, stated result)


def apply_op(op: str, a: int, b: int) -> int | None:
    """a op b when it is a positive integer below MAX_VALUE (exact division only), else None."""
    if op == "+":
        value = a + b
    elif op == "-":
        value = a - b
    elif op == "*":
        value = a * b
    elif op == "/":
        if b == 0 or a % b:
            return None
        value = a // b
    else:
        raise ValueError(f"Unknown operation {op!r}; use one of {_OPS}.")
    return value if 0 < value < MAX_VALUE else None


def calculation(line: Line) -> str:
    """One calculation as the prompt's worked example writes it: "7 * 2 = 14"."""
    op, a, b, result = line
    return f"{a} {op} {b} = {result}"


@dataclass(frozen=True)
class ReadChain:
    """One constructed chain: its lines of text, labels and what was done to it.

    kind: "clean", "corrected" or "carried"; error: the error's kind (None for a clean chain);
    error_step: the index of the error line (None for a clean chain); answer: the stated final
    answer."""

    problem: ArithProblem
    kind: str
    steps: tuple[str, ...]
    step_labels: tuple[int, ...]
    prefix_labels: tuple[int, ...]
    answer: int
    error: str | None = None
    error_step: int | None = None

    @property
    def is_correct(self) -> bool:
        return self.answer == int(self.problem.gold)


def _solution(problem: ArithProblem) -> list[Line]:
    return [(op, int(a), int(b), int(r)) for op, a, b, r in problem.steps]


def _erroneous_line(rng: random.Random, line: Line, kind: str,
                    forbidden: set[int]) -> Line | None:
    """The line with one error of `kind`, or None when this line admits none. `forbidden`:
    numbers an invented operand must avoid (the problem's numbers and earlier results)."""
    op, a, b, result = line
    if kind == "false_result":
        deltas = [d for d in (-10, -2, -1, 1, 2, 10) if 0 < result + d < MAX_VALUE]
        return (op, a, b, result + rng.choice(deltas)) if deltas else None
    if kind == "invented_number":
        candidates = [x for x in range(2, 21) if x not in forbidden
                      and apply_op(op, a, x) is not None]
        if not candidates:
            return None
        invented = rng.choice(candidates)
        return (op, a, invented, apply_op(op, a, invented) or 0)
    if kind == "wrong_operation":
        options = [(o, value) for o in _OPS if o != op
                   and (value := apply_op(o, a, b)) is not None and value != result]
        if not options:
            return None
        other, value = rng.choice(options)
        return (other, a, b, value)
    raise ValueError(f"Unknown error kind {kind!r}; use one of {', '.join(ERROR_KINDS)}.")


def _carry(solution: Sequence[Line], start: int, value: int) -> list[Line] | None:
    """The lines after `start` recomputed from a wrong `value`, or None when a later operation
    stops being valid (a negative result, an inexact division)."""
    out = []
    for op, _, b, _ in solution[start + 1:]:
        result = apply_op(op, value, b)
        if result is None:
            return None
        out.append((op, value, b, result))
        value = result
    return out


@dataclass(frozen=True)
class _Error:
    step: int
    kind: str
    line: Line
    carried: list[Line]


def _draw_error(rng: random.Random, problem: ArithProblem) -> _Error | None:
    """An error at a random line, of a random kind, whose carried value stays valid to the end
    and gives a wrong final answer; None when the problem admits none."""
    solution = _solution(problem)
    options = [(step, kind) for step in range(len(solution)) for kind in ERROR_KINDS]
    rng.shuffle(options)
    for step, kind in options:
        forbidden = {int(n) for n in problem.numbers} | {line[3] for line in solution[:step]}
        line = _erroneous_line(rng, solution[step], kind, forbidden)
        if line is None:
            continue
        carried = _carry(solution, step, line[3])
        final = carried[-1][3] if carried else line[3]
        if carried is not None and final != int(problem.gold):
            return _Error(step, kind, line, carried)
    return None


def _check_line(rng: random.Random, line: Line) -> str:
    return f"{rng.choice(CHECK_LEADS)}{calculation(line)}."


def _assemble(problem: ArithProblem, kind: str, lines: list[tuple[str, int, int]],
              answer: int, error: _Error | None) -> ReadChain:
    """`lines`: (text, step label, prefix label) per step; adds the answer line."""
    final_prefix = 0 if answer == int(problem.gold) else 1
    texts = [text for text, _, _ in lines] + [f"Answer: {answer}"]
    step_labels = [label for _, label, _ in lines] + [0]
    prefix_labels = [prefix for _, _, prefix in lines] + [final_prefix]
    error_step = None
    if error is not None:
        error_step = next(i for i, (_, label, _) in enumerate(lines) if label == 1)
    return ReadChain(problem, kind, tuple(texts), tuple(step_labels), tuple(prefix_labels),
                     answer, None if error is None else error.kind, error_step)


def _with_confirmation(rng: random.Random, lines: list[tuple[str, int, int]],
                       calcs: list[Line | None]) -> list[tuple[str, int, int]]:
    """A confirmation of a random correct line, right after it (same labels as that line)."""
    candidates = [(i, calc) for i, calc in enumerate(calcs)
                  if calc is not None and lines[i][1] == 0]
    if not candidates:
        return lines
    at, calc = rng.choice(candidates)
    return [*lines[: at + 1], (_check_line(rng, calc), 0, lines[at][2]), *lines[at + 1:]]


def clean_chain(rng: random.Random, problem: ArithProblem, confirm: bool) -> ReadChain:
    """The worked solution, optionally with one confirmation step."""
    solution = _solution(problem)
    lines = [(calculation(line), 0, 0) for line in solution]
    if confirm:
        lines = _with_confirmation(rng, lines, list(solution))
    return _assemble(problem, "clean", lines, int(problem.gold), None)


def carried_chain(rng: random.Random, problem: ArithProblem, error: _Error,
                  confirm: bool) -> ReadChain:
    """The solution with `error`, its value carried to a wrong final answer."""
    solution = _solution(problem)
    calcs: list[Line | None] = [*solution[: error.step], None, *error.carried]
    lines = ([(calculation(line), 0, 0) for line in solution[: error.step]]
             + [(calculation(error.line), 1, 1)]
             + [(calculation(line), 0, 1) for line in error.carried])
    if confirm:
        lines = _with_confirmation(rng, lines, calcs)
    answer = error.carried[-1][3] if error.carried else error.line[3]
    return _assemble(problem, "carried", lines, answer, error)


def corrected_chain(rng: random.Random, problem: ArithProblem, error: _Error) -> ReadChain:
    """The solution with `error`, corrected by the next step, then on to the right answer."""
    solution = _solution(problem)
    lines = ([(calculation(line), 0, 0) for line in solution[: error.step]]
             + [(calculation(error.line), 1, 1), (_check_line(rng, solution[error.step]), 0, 0)]
             + [(calculation(line), 0, 0) for line in solution[error.step + 1:]])
    return _assemble(problem, "corrected", lines, int(problem.gold), error)


def chains_for_problem(problem: ArithProblem, seed: int) -> list[ReadChain]:
    """Two chains of one problem: one ending right (clean or corrected, even odds) and one
    ending wrong (a carried error); [] when the problem admits no error (never seen in
    practice: every line admits a false result). Deterministic in (seed, problem id)."""
    rng = random.Random(f"read-{seed}-{problem.problem_id}")
    wrong_error = _draw_error(rng, problem)
    right_error = _draw_error(rng, problem)
    if wrong_error is None or right_error is None:
        return []
    if rng.random() < 0.5:
        right = corrected_chain(rng, problem, right_error)
    else:
        right = clean_chain(rng, problem, confirm=rng.random() < CONFIRM_CLEAN)
    wrong = carried_chain(rng, problem, wrong_error, confirm=rng.random() < CONFIRM_CARRIED)
    return [right, wrong]


def chain_record(chain: ReadChain, index: int) -> dict[str, Any]:
    """The trace record (a dict in the trace file format) of one chain."""
    problem = chain.problem
    return {
        "id": f"{problem.problem_id}-r{index}", "problem_id": problem.problem_id,
        "prompt": cot_prompt(problem), "response": "\n".join(chain.steps),
        "steps": [{"text": text, "label": label, "prefix_label": prefix}
                  for text, label, prefix in zip(chain.steps, chain.step_labels,
                                                 chain.prefix_labels, strict=True)],
        "answer": str(chain.answer), "gold": f"{problem.gold:g}",
        "is_correct": chain.is_correct, "answered": True, "source": SOURCE,
        "construction": {"kind": chain.kind, "error": chain.error,
                         "error_step": chain.error_step},
    }


@dataclass(frozen=True)
class ReadChainsSummary:
    files: tuple[str, ...]
    n_problems: int
    n_chains: int
    n_right: int
    kinds: dict[str, int]
    errors: dict[str, int]

    def __str__(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.kinds.items()))
        return (f"Wrote {self.n_chains} read chains of {self.n_problems} problems to "
                f"{', '.join(self.files)} ({kinds}; {self.n_right} end with the right answer).")


def make_read_chains(out: str | Path, n_problems: int = 500, seed: int = 2,
                     test_share: float = 0.2, min_ops: int = 2, max_ops: int = 4,
                     max_number: int = 20) -> ReadChainsSummary:
    """Write OUT_train.jsonl and OUT_test.jsonl beside OUT (split by problem; with
    `test_share` 0, OUT itself), each with a .meta.json sidecar saying how to regenerate it.
    No model is involved: the same arguments always give the same files."""
    if n_problems < 1:
        raise ValueError("Need at least one problem.")
    if not 0.0 <= test_share < 1.0:
        raise ValueError(f"The test share must be in [0, 1), got {test_share}.")
    problems = generate_problems(n_problems, seed=seed, min_ops=min_ops, max_ops=max_ops,
                                 max_number=max_number)
    traces: list[Trace] = []
    chains: list[ReadChain] = []
    for problem in problems:
        for index, chain in enumerate(chains_for_problem(problem, seed)):
            chains.append(chain)
            traces.append(trace_from_dict(chain_record(chain, index)))
    out = Path(out)
    groups: dict[str, list[Trace]]
    if test_share > 0:
        ids = sorted({p.problem_id for p in problems})
        random.Random(seed).shuffle(ids)
        test_ids = set(ids[: max(1, round(len(ids) * test_share))])
        groups = {str(out.with_name(f"{out.stem}_train.jsonl")):
                  [t for t in traces if t.problem_id not in test_ids],
                  str(out.with_name(f"{out.stem}_test.jsonl")):
                  [t for t in traces if t.problem_id in test_ids]}
    else:
        groups = {str(out): traces}
    summary = ReadChainsSummary(
        files=tuple(groups), n_problems=n_problems, n_chains=len(chains),
        n_right=sum(c.is_correct for c in chains), kinds=dict(Counter(c.kind for c in chains)),
        errors=dict(Counter(c.error for c in chains if c.error is not None)))
    arguments = {"n_problems": n_problems, "seed": seed, "test_share": test_share,
                 "min_ops": min_ops, "max_ops": max_ops, "max_number": max_number}
    for path, group in groups.items():
        write_traces(path, group)
        meta = {
            "schema_version": SCHEMA_VERSION, "source": SOURCE, "telltale": __version__,
            "arguments": arguments, "n_chains": len(group),
            "n_right": sum(bool(t.is_correct) for t in group),
            "kinds": dict(Counter(t.extra["construction"]["kind"] for t in group)),
            "summary": {"n_chains": summary.n_chains, "n_right": summary.n_right,
                        "kinds": summary.kinds, "errors": summary.errors},
            "regenerate": f"telltale make-read-chains --out {out} --problems {n_problems} "
                          f"--seed {seed} --test-share {test_share} --min-ops {min_ops} "
                          f"--max-ops {max_ops} --max-number {max_number}",
        }
        atomic_write_text(Path(path).with_suffix(".meta.json"), json.dumps(meta, indent=2) + "\n")
    return summary
