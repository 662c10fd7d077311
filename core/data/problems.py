"""Problem sets: the questions a model answers with chains of thought, and their gold answers.

`read_problems` reads JSONL, JSON (an array of objects), CSV or Parquet files in any of these
shapes:
- GSM8K: `question`, `answer` = the worked solution ending in a line "#### N" (gold: N);
- MATH: `problem`, `solution` with the final answer in `\\boxed{...}` (gold: the last box);
- MATH-500 and the like: `problem`, `answer` (gold: the answer, or its box or "####" line);
- any other: name the fields (`question_field`, `answer_field`); the gold is read from the
  answer field the same way ("#### N" line, else the last `\\boxed{}`, else the whole text).
An `id` field, when present, names the problem (else "<file stem>-<line>"). A file that cannot
be read, or a record without the fields, raises `ProblemFileError`: one sentence naming the
file, the line (the row for CSV and Parquet) and the field.

`arith_problem_set` gives Telltale's own arithmetic problems in the same record, with their
worked solutions, and `write_problems` writes any problem set in GSM8K's shape.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data.answers import format_number
from core.data.arith import generate_problems, worked_solution
from core.data.atomic import atomic_write_text

FORMATS = ("jsonl", "json", "csv", "parquet")
_SHAPES = (("question", "answer"), ("problem", "solution"), ("problem", "answer"))


class ProblemFileError(ValueError):
    """A problem file that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class Problem:
    """A question, its gold answer (None when the file has none), its worked solution when the
    file gives one, and the numbers it gives (None: read from the question by whoever needs
    them, e.g. the rule labeller)."""

    id: str
    question: str
    gold: str | None
    solution: str | None = None
    numbers: tuple[float, ...] | None = None


def gold_from_answer(text: str) -> str | None:
    """The gold answer in an answer field: the text after the last "####", else the content
    of the last `\\boxed{...}`, else the whole text (stripped); None when that is empty."""
    if "####" in text:
        gold = text.rsplit("####", 1)[1].strip().splitlines()
        return gold[0].strip() if gold and gold[0].strip() else None
    box = text.rfind("\\boxed{")
    if box >= 0:
        depth, start = 1, box + len("\\boxed{")
        for index in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0:
                return text[start:index].strip() or None
        return None
    return text.strip() or None


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix in FORMATS:
        return suffix
    raise ProblemFileError(f"{path}: cannot tell the format from the name; use a .jsonl, "
                           f".json, .csv or .parquet file.")


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line or row number, record) for each record of the file."""
    fmt = _format_of(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as error:  # noqa: BLE001 - pyarrow raises many kinds
            raise ProblemFileError(f"{path}: not a readable Parquet file ({error}).") from None
        yield from enumerate(table.to_pylist(), start=1)
        return
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        bad_line = path.read_bytes().count(b"\n", 0, error.start) + 1
        raise ProblemFileError(f"{path}, line {bad_line}: not valid UTF-8.") from None
    if fmt == "csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, [])
            while True:
                start = reader.line_num + 1  # a record may span lines: name its first
                row = next(reader, None)
                if row is None:
                    return
                if row:
                    yield start, dict(zip(header, row, strict=False))
        except csv.Error as error:
            raise ProblemFileError(f"{path}, line {reader.line_num}: not valid CSV "
                                   f"({error}).") from None
    if fmt == "json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ProblemFileError(f"{path}, line {error.lineno}: not valid JSON "
                                   f"({error.msg}).") from None
        if not isinstance(data, list):
            raise ProblemFileError(f"{path}, line 1: expected a JSON array of problems, got "
                                   f"a {type(data).__name__}.")
        yield from enumerate(data, start=1)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise ProblemFileError(f"{path}, line {number}: not valid JSON ({error.msg}, "
                                   f"column {error.colno}).") from None


def _field_text(record: Mapping[str, Any], name: str, where: str) -> str:
    value = record.get(name)
    if isinstance(value, bool) or value is None or (isinstance(value, str) and
                                                      not value.strip()):
        state = "missing" if name not in record else "empty"
        raise ProblemFileError(f"{where}, field '{name}': {state} (the record's fields: "
                               f"{', '.join(map(str, record)) or 'none'}).")
    if isinstance(value, int | float):
        return format_number(float(value))
    if not isinstance(value, str):
        raise ProblemFileError(f"{where}, field '{name}': must be text, got "
                               f"{type(value).__name__}.")
    return value


def _shape(record: Mapping[str, Any], question_field: str | None,
           answer_field: str | None, where: str) -> tuple[str, str]:
    """The question and answer fields: those given, else the first known shape that fits."""
    if question_field and answer_field:
        return question_field, answer_field
    for question, answer in _SHAPES:
        if (question_field in (None, question) and answer_field in (None, answer)
                and question in record and answer in record):
            return question, answer
    known = "; ".join(f"'{q}' with '{a}'" for q, a in _SHAPES)
    raise ProblemFileError(f"{where}: cannot tell the question and answer fields (the "
                           f"record's fields: {', '.join(map(str, record)) or 'none'}; known "
                           f"shapes: {known}); name them with --question-field and "
                           f"--answer-field.")


def read_problems(path: str | Path, question_field: str | None = None,
                  answer_field: str | None = None, id_field: str = "id",
                  limit: int | None = None) -> list[Problem]:
    """The problems of a file (see the module docstring), in file order; the first `limit`."""
    path = Path(path)
    if not path.is_file():
        raise ProblemFileError(f"{path}: no such file.")
    problems: list[Problem] = []
    fields: tuple[str, str] | None = None
    seen: dict[str, int] = {}
    for number, record in _rows(path):
        if limit is not None and len(problems) >= limit:
            break
        where = f"{path}, {'row' if path.suffix.lower() == '.parquet' else 'line'} {number}"
        if not isinstance(record, Mapping):
            raise ProblemFileError(f"{where}: expected an object with the problem's fields, "
                                   f"got a {type(record).__name__}.")
        fields = fields or _shape(record, question_field, answer_field, where)
        question = _field_text(record, fields[0], where)
        answer = _field_text(record, fields[1], where)
        gold = gold_from_answer(answer)
        if gold is None:
            raise ProblemFileError(f"{where}, field '{fields[1]}': has no final answer "
                                   f"(its '####' line or its \\boxed{{}} is empty).")
        raw_id = record.get(id_field)
        problem_id = str(raw_id) if raw_id not in (None, "") else f"{path.stem}-{number}"
        if problem_id in seen:
            raise ProblemFileError(f"{where}, field '{id_field}': the id '{problem_id}' is "
                                   f"also on line {seen[problem_id]}.")
        seen[problem_id] = number
        solution = answer if answer.strip() != gold else None
        problems.append(Problem(problem_id, question.strip(), gold, solution))
    if not problems:
        raise ProblemFileError(f"{path}: holds no problem.")
    return problems


def arith_problem_set(n: int, seed: int = 0, min_ops: int = 2, max_ops: int = 8,
                      max_number: int = 99) -> list[Problem]:
    """`core.data.arith.generate_problems` as problem records, with worked solutions."""
    return [Problem(p.problem_id, p.question, format_number(p.gold), worked_solution(p),
                    p.numbers)
            for p in generate_problems(n, seed=seed, min_ops=min_ops, max_ops=max_ops,
                                       max_number=max_number)]


def problems_to_jsonl(problems: Sequence[Problem]) -> str:
    """GSM8K's shape, one problem per line: {"id", "question", "answer"}, the answer being the
    worked solution (ending in "#### N") or, without one, "#### N" alone."""
    lines = []
    for problem in problems:
        answer = problem.solution if problem.solution is not None else f"#### {problem.gold}"
        lines.append(json.dumps({"id": problem.id, "question": problem.question,
                                 "answer": answer}, ensure_ascii=False) + "\n")
    return "".join(lines)


def write_problems(path: str | Path, problems: Sequence[Problem]) -> None:
    """Write a problem set as JSONL in GSM8K's shape, atomically."""
    atomic_write_text(path, problems_to_jsonl(problems))
