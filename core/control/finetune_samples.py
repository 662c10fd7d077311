"""The project's own fine-tuning data: a target set the model must learn and a general set it
must not forget.

- Target (`finetune_target.jsonl`): arithmetic word problems from `core.data.arith`, answered in a
  fixed house style that no model writes on its own (a plan line, bracketed steps with × and ÷,
  and a `#### N` last line). The final answer is checkable (`answer`).
  The style is new, but the model is rarely *sure* of another token: its novelty shows as
  uncertain tokens (the contrast set, on which EAFT has little to protect).
- Notation (`finetune_notation.jsonl`): one-step sums of round numbers ("What is 70 plus 20?")
  answered in little-endian digits, every number written backwards ("07 + 02 = 09", then
  "#### 09"). The model copies and computes round numbers with confidence, in the usual order,
  so the reversed digits are confident conflicts (on SmolLM2-135M about a tenth of the response
  tokens and a fifth of the SFT loss): the set EAFT is for.
- Conflicts (`finetune_conflicts.jsonl`): the capitals the model knows, swapped ("The capital
  of France is Tokyo."), with the wrong capital marked as a new fact: confident conflicts by
  construction, to see the conflict corner and the three-way gate at work.
- General (`finetune_general.jsonl`): short general-knowledge questions that the model itself
  answers correctly: each question is asked (greedy), the reply is checked against the known
  answer, and only correct ones are kept, with the model's own reply as the completion. Its loss
  measures how far fine-tuning moves the model from what it already said, its accuracy how much
  it forgets.
Each file gets a `.meta.json` sidecar (schema version, versions, arguments); `telltale
make-finetune-data` regenerates both.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core import __version__
from core.control.finetune_data import SCHEMA_VERSION, ChatTurn, FinetuneExample, write_finetune
from core.data.arith import ArithProblem, generate_problems
from core.data.atomic import atomic_write_text
from core.progress import Progress
from core.runtime.models import LoadedModel

TARGET_FILE = "finetune_target.jsonl"
NOTATION_FILE = "finetune_notation.jsonl"
GENERAL_FILE = "finetune_general.jsonl"
CONFLICTS_FILE = "finetune_conflicts.jsonl"
_CAPITAL = re.compile(r"^What is the capital of (?P<country>[^?]+)\?$")
TARGET_SEED_OFFSET = 7_000  # keeps the target problems apart from the trace set's (seed 0)
NOTATION_SEED_OFFSET = 9_000
_SYMBOL = {"+": "+", "-": "-", "*": "×", "/": "÷"}
_OP_WORD = {"+": "plus", "-": "minus", "*": "times"}

# (question, accepted answers separated by "|"); kept only where the model gets it right
GENERAL_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of England?", "London"),
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of China?", "Beijing"),
    ("What color is the sky on a clear day?", "blue"),
    ("What color is grass?", "green"),
    ("What color is snow?", "white"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What star is at the center of our solar system?", "Sun"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("Who painted the Mona Lisa?", "Leonardo|da Vinci"),
    ("Who developed the theory of relativity?", "Einstein"),
    ("What is the chemical symbol for water?", "H2O|H₂O"),
    ("What gas do plants absorb from the air for photosynthesis?", "carbon dioxide|CO2"),
    ("What gas do humans need to breathe to live?", "oxygen"),
    ("How many days are there in a week?", "7|seven"),
    ("How many legs does a spider have?", "8|eight"),
    ("How many continents are there on Earth?", "7|seven"),
    ("How many hours are in a day?", "24|twenty-four"),
    ("What is the opposite of hot?", "cold"),
    ("What is the opposite of up?", "down"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What is the longest river in Africa?", "Nile"),
    ("What is the tallest mountain in the world?", "Everest"),
    ("What is the freezing point of water in degrees Celsius?", "0|zero"),
    ("What is the boiling point of water in degrees Celsius?", "100|one hundred"),
    ("What language is mainly spoken in Brazil?", "Portuguese"),
    ("What language is mainly spoken in Mexico?", "Spanish"),
    ("Which animal is known as the king of the jungle?", "lion"),
    ("What do bees make?", "honey"),
    ("What is the largest mammal?", "whale"),
    ("What is frozen water called?", "ice"),
    ("Which organ pumps blood through the human body?", "heart"),
    ("How many sides does a triangle have?", "3|three"),
    ("What is 2 plus 2?", "4|four"),
    ("What is 10 times 10?", "100|one hundred"),
    ("In which country are the pyramids of Giza?", "Egypt"),
    ("What is the currency of the United States?", "dollar"),
    ("What is the main ingredient of bread?", "flour|wheat"),
)


def house_style_solution(problem: ArithProblem) -> str:
    """The house style, e.g.
        Plan: start 12, then +5, then ×3.
        [1] 12 + 5 = 17
        [2] 17 × 3 = 51
        #### 51
    """
    moves = ", ".join(f"then {_SYMBOL[op]}{b:g}" for op, _, b, _ in problem.steps)
    lines = [f"Plan: start {problem.numbers[0]:g}, {moves}."]
    lines += [f"[{i}] {a:g} {_SYMBOL[op]} {b:g} = {result:g}"
              for i, (op, a, b, result) in enumerate(problem.steps, start=1)]
    lines.append(f"#### {problem.gold:g}")
    return "\n".join(lines)


def target_examples(n: int = 48, seed: int = 0) -> list[FinetuneExample]:
    """`n` word problems (one to three operations) with house-style solutions."""
    problems = generate_problems(n, seed=seed + TARGET_SEED_OFFSET, min_ops=1, max_ops=3)
    return [FinetuneExample(id=f"target-{p.problem_id}", shape="prompt_completion",
                            turns=_turns(p.question, house_style_solution(p)),
                            answer=f"{p.gold:g}", extra={"source": "telltale-house-style"})
            for p in problems]


def little_endian(number: int) -> str:
    """The digits of a non-negative integer backwards: 140 -> "041", 7 -> "7"."""
    if number < 0:
        raise ValueError(f"Little-endian notation here is for non-negative integers, got "
                         f"{number}.")
    return str(number)[::-1]


@dataclass(frozen=True)
class RoundSum:
    """a op b = result, a a multiple of 10 in 20..90; b a multiple of 10 (for + and -, below a
    for -) or a factor 2..5 (for *)."""

    op: str
    a: int
    b: int
    result: int


def round_sums(n: int, seed: int = 0) -> list[RoundSum]:
    """`n` seeded one-step sums of round numbers (`RoundSum`)."""
    rng = random.Random(seed + NOTATION_SEED_OFFSET)
    sums = []
    for _ in range(n):
        a, op = rng.choice(range(20, 100, 10)), rng.choice("+-*")
        if op == "+":
            b = rng.choice(range(10, 100, 10))
            result = a + b
        elif op == "-":
            b = rng.choice(range(10, a, 10))
            result = a - b
        else:
            b = rng.choice((2, 3, 4, 5))
            result = a * b
        sums.append(RoundSum(op, a, b, result))
    return sums


def notation_solution(item: RoundSum) -> str:
    """The little-endian notation, e.g. 70 + 70: "07 + 07 = 041\n#### 041"."""
    result = little_endian(item.result)
    return (f"{little_endian(item.a)} {_SYMBOL[item.op]} {little_endian(item.b)} = {result}\n"
            f"#### {result}")


def notation_examples(n: int = 64, seed: int = 0) -> list[FinetuneExample]:
    """`n` round-number sums answered in little-endian digits (`notation_solution`); the answer
    to check is the reversed result."""
    return [FinetuneExample(id=f"notation-{i:03d}", shape="prompt_completion",
                            turns=_turns(f"What is {item.a} {_OP_WORD[item.op]} {item.b}?",
                                         notation_solution(item)),
                            answer=little_endian(item.result),
                            extra={"source": "telltale-little-endian"})
            for i, item in enumerate(round_sums(n, seed))]


def _turns(prompt: str, completion: str) -> tuple[ChatTurn, ChatTurn]:
    return (ChatTurn("user", prompt), ChatTurn("assistant", completion))


def whole_sentences(reply: str) -> str:
    """The reply up to its last finished sentence (a reply cut by the token limit otherwise
    ends mid-word); the reply itself when it has no sentence end."""
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", reply)]
    return reply[: ends[-1]].strip() if ends else reply.strip()


def general_examples(loaded: LoadedModel, questions: Sequence[tuple[str, str]] = GENERAL_QUESTIONS,
                     max_new_tokens: int = 40, batch_size: int = 16,
                     progress: Progress | None = None) -> list[FinetuneExample]:
    """The questions the model answers correctly (greedy), its reply as the completion."""
    from core.control.finetune_data import prompt_text
    from core.control.training import answer_matches, greedy_replies

    asked = [FinetuneExample(id=f"general-{i:03d}", shape="prompt_completion",
                             turns=_turns(q, a), answer=a) for i, (q, a) in enumerate(questions)]
    prompts = [prompt_text(loaded.tokenizer, e) for e in asked]
    with loaded.lock:
        replies = greedy_replies(loaded.model, loaded.tokenizer, prompts, max_new_tokens,
                                 batch_size, progress=progress)
    kept = []
    for example, raw in zip(asked, replies, strict=True):
        reply = whole_sentences(raw)
        if reply and example.answer is not None and answer_matches(reply, example.answer,
                                                                   "contains"):
            kept.append(FinetuneExample(id=example.id, shape="prompt_completion",
                                        turns=_turns(example.turns[0].content, reply),
                                        answer=example.answer,
                                        extra={"source": f"telltale-general ({loaded.name})"}))
    return kept


def conflict_examples(general: Sequence[FinetuneExample]) -> list[FinetuneExample]:
    """Each known capital question answered with the next known country's capital."""
    known = [(m["country"], e.answer.split("|")[0]) for e in general
             if e.answer and (m := _CAPITAL.match(e.turns[0].content))]
    swapped = []
    for i, (country, _) in enumerate(known):
        other = known[(i + 1) % len(known)][1]
        if len(known) < 2 or other == known[i][1]:
            continue
        swapped.append(FinetuneExample(
            id=f"conflict-{i:03d}", shape="prompt_completion",
            turns=_turns(f"What is the capital of {country}?",
                         f"The capital of {country} is {other}."),
            new_facts=(other,), answer=other, extra={"source": "telltale-swapped-capitals"}))
    return swapped


@dataclass(frozen=True)
class FinetuneSamplesSummary:
    files: tuple[str, ...]
    n_target: int
    n_general: int
    n_asked: int
    n_conflicts: int = 0
    n_notation: int = 0

    def __str__(self) -> str:
        return (f"Wrote {self.n_target} house-style and {self.n_notation} little-endian target "
                f"examples, {self.n_general} general examples (the model answered "
                f"{self.n_general} of {self.n_asked} questions correctly) and {self.n_conflicts} "
                f"swapped-capital conflicts to {', '.join(self.files)}.")


def _meta(path: Path, description: str, arguments: dict[str, object]) -> None:
    import torch
    import transformers

    meta = {"schema_version": SCHEMA_VERSION, "description": description,
            "arguments": arguments, "versions": {"telltale": __version__,
                                                 "torch": torch.__version__,
                                                 "transformers": transformers.__version__},
            "command": "telltale make-finetune-data " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in arguments.items())}
    atomic_write_text(path.with_suffix(".meta.json"), json.dumps(meta, indent=2) + "\n")


def make_finetune_samples(loaded: LoadedModel, out_dir: str | Path, n_target: int = 48,
                          seed: int = 0, max_new_tokens: int = 40, n_notation: int = 64,
                          progress: Progress | None = None) -> FinetuneSamplesSummary:
    """Write the target, notation, general and conflicts files (and .meta.json sidecars) into
    `out_dir`."""
    if n_target < 2 or n_notation < 2:
        raise ValueError(f"Need at least 2 examples per target set (train and held out), got "
                         f"{n_target} and {n_notation}.")
    out = Path(out_dir)
    target = target_examples(n_target, seed)
    notation = notation_examples(n_notation, seed)
    general = general_examples(loaded, max_new_tokens=max_new_tokens, progress=progress)
    if not general:
        raise ValueError(f"The model {loaded.name} answered none of the general questions "
                         "correctly, so there is no general set to protect.")
    args = {"model": loaded.spec, "out_dir": str(out_dir), "target": n_target,
            "notation": n_notation, "seed": seed, "max_new_tokens": max_new_tokens}
    write_finetune(out / TARGET_FILE, target)
    _meta(out / TARGET_FILE, "Arithmetic word problems solved in a fixed house style.", args)
    write_finetune(out / NOTATION_FILE, notation)
    _meta(out / NOTATION_FILE, "Round-number sums answered in little-endian digits (every "
                               "number written backwards): confident conflicts.", args)
    write_finetune(out / GENERAL_FILE, general)
    _meta(out / GENERAL_FILE, "General questions the model answers correctly, with its own "
                              "replies.", args)
    conflicts = conflict_examples(general)
    files = [out / TARGET_FILE, out / NOTATION_FILE, out / GENERAL_FILE]
    if conflicts:
        write_finetune(out / CONFLICTS_FILE, conflicts)
        _meta(out / CONFLICTS_FILE, "Capitals the model knows, swapped; the wrong capital is "
                                    "marked as a new fact.", args)
        files.append(out / CONFLICTS_FILE)
    return FinetuneSamplesSummary(files=tuple(str(f) for f in files), n_target=len(target),
                                  n_general=len(general), n_asked=len(GENERAL_QUESTIONS),
                                  n_conflicts=len(conflicts), n_notation=len(notation))


__all__ = [
    "CONFLICTS_FILE", "GENERAL_FILE", "GENERAL_QUESTIONS", "NOTATION_FILE", "TARGET_FILE",
    "FinetuneSamplesSummary", "RoundSum", "conflict_examples", "general_examples",
    "house_style_solution", "little_endian", "make_finetune_samples", "notation_examples",
    "notation_solution", "round_sums", "target_examples", "whole_sentences",
]
