"""Problem sets: GSM8K, MATH and custom shapes in JSONL, JSON, CSV and Parquet; one-sentence
errors naming file, line and field; the arithmetic set in GSM8K's shape and back."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from core.data.problems import (
    Problem,
    ProblemFileError,
    arith_problem_set,
    gold_from_answer,
    read_problems,
    write_problems,
)

GSM8K = [{"question": "Natalia sold 48 clips in April and half as many in May. How many?",
          "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\n48+24 = <<48+24=72>>72\n#### 72"},
         {"question": "What is 1,000 + 234?", "answer": "1,000 + 234 = 1,234\n#### 1,234"}]
MATH = [{"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?",
         "solution": "We add: $\\frac{2}{4} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$."}]


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_gsm8k_shape_in_every_format(tmp_path: Path, suffix: str) -> None:
    problems = read_problems(write(tmp_path / f"gsm{suffix}", GSM8K))
    assert [p.gold for p in problems] == ["72", "1,234"]
    first_line = 2 if suffix == ".csv" else 1  # CSV: line 1 is the header
    assert problems[0].question.startswith("Natalia") and problems[0].id == f"gsm-{first_line}"
    assert problems[0].solution is not None and problems[0].solution.endswith("#### 72")
    assert read_problems(tmp_path / f"gsm{suffix}", limit=1) == problems[:1]


def test_math_and_custom_shapes(tmp_path: Path) -> None:
    [problem] = read_problems(write(tmp_path / "math.jsonl", MATH))
    assert problem.gold == "\\frac{3}{4}" and "\\boxed" in (problem.solution or "")
    rows = [{"id": 7, "problem": "2 + 2?", "answer": "4"}]  # MATH-500's shape
    [plain] = read_problems(write(tmp_path / "m500.jsonl", rows))
    assert (plain.id, plain.gold, plain.solution) == ("7", "4", None)
    custom = [{"prompt_text": "3 * 3?", "target": 9, "uid": "a"}]
    [mine] = read_problems(write(tmp_path / "c.jsonl", custom), "prompt_text", "target",
                           id_field="uid")
    assert mine == Problem("a", "3 * 3?", "9", None)


@pytest.mark.parametrize(("content", "message"), [
    ('{"question": "q"}\n', r"p\.jsonl, line 1: cannot tell the question and answer fields "
                            r"\(the record's fields: question"),
    ('{"question": "q", "answer": "#### 1"}\n{"question": "r"}\n',
     r"p\.jsonl, line 2, field 'answer': missing"),
    ('{"question": "q", "answer": "#### 1"}\n\n{"question": "", "answer": "#### 2"}\n',
     r"line 3, field 'question': empty"),
    ('{"question": "q", "answer": "so\\n####"}\n', r"line 1, field 'answer': has no final"),
    ('{"question": "q", "answer": "#### 1"}\n{not json\n', r"line 2: not valid JSON"),
    ('[1, 2]\n', r"line 1: expected an object"),
    ('{"id": 1, "question": "q", "answer": "1"}\n{"id": 1, "question": "r", "answer": "2"}\n',
     r"line 2, field 'id': the id '1' is also on line 1"),
])
def test_bad_files_are_one_sentence(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ProblemFileError, match=message):
        read_problems(path)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ProblemFileError, match="no such file"):
        read_problems(tmp_path / "none.jsonl")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(ProblemFileError, match="cannot tell the format"):
        read_problems(tmp_path / "p.txt")
    (tmp_path / "p.parquet").write_bytes(b"not parquet")
    with pytest.raises(ProblemFileError, match="not a readable Parquet"):
        read_problems(tmp_path / "p.parquet")
    (tmp_path / "b.jsonl").write_bytes(b'{"question": "q", "answer": "1"}\n\xff\n')
    with pytest.raises(ProblemFileError, match="line 2: not valid UTF-8"):
        read_problems(tmp_path / "b.jsonl")
    write(tmp_path / "c.csv", [{"x": "q", "y": "1"}])
    with pytest.raises(ProblemFileError, match=r"c\.csv, line 2: cannot tell"):
        read_problems(tmp_path / "c.csv")


def test_gold_from_answer() -> None:
    assert gold_from_answer("a\n#### 12\n") == "12"
    assert gold_from_answer("x = \\boxed{2} or \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert gold_from_answer("  42 ") == "42" and gold_from_answer("####") is None


def test_arith_set_round_trips_through_gsm8k_shape(tmp_path: Path) -> None:
    problems = arith_problem_set(5, seed=3, min_ops=2, max_ops=4, max_number=9)
    write_problems(tmp_path / "a.jsonl", problems)
    back = read_problems(tmp_path / "a.jsonl")
    assert [(p.id, p.question, p.gold, p.solution) for p in back] == \
        [(p.id, p.question, p.gold, p.solution) for p in problems]
    first = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "question", "answer"} and "####" in first["answer"]


def test_the_shipped_problem_file_is_what_its_command_writes() -> None:
    path = Path(__file__).resolve().parents[1] / "sample_traces" / "arith_problems.jsonl"
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    arguments = meta["arguments"]
    expected = arith_problem_set(arguments["n"], seed=arguments["seed"],
                                 min_ops=arguments["min_ops"], max_ops=arguments["max_ops"],
                                 max_number=arguments["max_number"])
    assert len(expected) == 200 and read_problems(path) == [
        Problem(p.id, p.question, p.gold, p.solution) for p in expected]
    assert meta["regenerate"].startswith("telltale make-problems --out "
                                         "sample_traces/arith_problems.jsonl")
