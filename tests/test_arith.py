"""Arithmetic problems and step labels, checked against hand-computed answers."""

from __future__ import annotations

import operator
import re

import pytest

from core.data.answers import reply_is_correct
from core.data.arith import (
    ArithProblem,
    StepCheck,
    cot_prompt,
    find_numbers,
    generate_problems,
    label_steps,
    worked_solution,
)
from core.data.problems import gold_from_answer

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


# ------------------------------------------------------------------ generator


def test_same_seed_same_problems_and_prefix_stable() -> None:
    first = generate_problems(20, seed=7)
    assert first == generate_problems(20, seed=7)
    assert generate_problems(5, seed=7) == first[:5]
    assert first[3].problem_id == "arith-s7-00003"


def test_different_seeds_differ() -> None:
    a = [p.question for p in generate_problems(20, seed=0)]
    b = [p.question for p in generate_problems(20, seed=1)]
    assert a != b
    assert len(set(a) & set(b)) < 3


@pytest.mark.parametrize(("min_ops", "max_ops"), [(2, 8), (3, 3), (1, 2)])
def test_op_counts_within_range(min_ops: int, max_ops: int) -> None:
    problems = generate_problems(200, seed=3, min_ops=min_ops, max_ops=max_ops)
    counts = {p.n_ops for p in problems}
    assert counts == set(range(min_ops, max_ops + 1))  # every count occurs in 200 draws
    assert all(len(p.steps) == p.n_ops for p in problems)


def test_gold_recomputed_from_steps_and_intermediates_are_small_positive_integers() -> None:
    for p in generate_problems(300, seed=11):
        value = p.numbers[0]
        for i, (op, a, b, result) in enumerate(p.steps):
            assert a == value
            assert b == p.numbers[i + 1]
            exact = OPS[op](a, b)
            assert exact == result  # exact division: truediv gives the integer result
            assert result == int(result) and 0 < result < 10_000
            value = exact
        assert p.gold == value
        assert len(p.numbers) == p.n_ops + 1


def test_numbers_are_exactly_the_numbers_in_the_question() -> None:
    for p in generate_problems(100, seed=5):
        written = [float(m.replace(",", "")) for m in re.findall(r"\d[\d,]*", p.question)]
        assert written == list(p.numbers)
        assert find_numbers(p.question) == list(p.numbers)
        assert p.question.endswith("?")


def test_all_operations_and_several_themes_occur() -> None:
    problems = generate_problems(200, seed=2)
    assert {op for p in problems for op, *_ in p.steps} == {"+", "-", "*", "/"}
    openings = {p.question.split(".")[0].split()[-1] for p in problems}
    assert len(openings) >= 6


def test_cot_prompt_holds_question_and_format() -> None:
    p = generate_problems(1, seed=0)[0]
    prompt = cot_prompt(p)
    assert p.question in prompt
    assert "Answer:" in prompt and "one calculation per line" in prompt


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"n": 3, "min_ops": 0},
                                    {"n": 3, "min_ops": 5, "max_ops": 4}])
def test_bad_arguments_raise(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        generate_problems(**kwargs)


# ------------------------------------------------------------------ labeller

PROBLEM = ArithProblem("t", "Mia has 24 apples, gets 12, eats 5, then triples them (3).",
                       (24.0, 12.0, 5.0, 3.0), 93.0, 3, ())


def labels(steps: list[str], problem: ArithProblem | list[float] = PROBLEM) -> list[int]:
    return [c.label for c in label_steps(problem, steps)]


def test_correct_chain_is_all_zero() -> None:
    checks = label_steps(PROBLEM, ["24 + 12 = 36", "36 - 5 = 31", "31 * 3 = 93", "Answer: 93"])
    assert checks == [StepCheck(0, "")] * 4


def test_generated_gold_chain_is_clean_and_a_corrupted_step_is_caught() -> None:
    for p in generate_problems(50, seed=9):
        lines = [f"{a:g} {op} {b:g} = {r:g}" for op, a, b, r in p.steps] + [f"Answer: {p.gold:g}"]
        assert labels(lines, p) == [0] * len(lines)
        assert reply_is_correct("\n".join(lines), p.gold)
        op, a, b, r = p.steps[-1]
        lines[-2] = f"{a:g} {op} {b:g} = {r + 1:g}"
        assert labels(lines, p)[-2] == 1


def test_false_calculation_flags_that_step_only() -> None:
    checks = label_steps(PROBLEM, ["24 + 12 = 36", "36 - 5 = 30", "30 * 3 = 90", "Answer: 90"])
    assert [c.label for c in checks] == [0, 1, 0, 0]  # 30 and 90 were stated earlier
    assert checks[1].reason == "false calculation: 36 - 5 = 30 (is 31)"


def test_invented_number_is_flagged() -> None:
    checks = label_steps(PROBLEM, ["24 + 12 = 36", "36 + 42 = 78"])
    assert [c.label for c in checks] == [0, 1]
    assert checks[1].reason == "unsupported number 42"


def test_an_invented_operand_is_flagged_each_time_it_is_used() -> None:
    # 1 is in neither the problem nor any earlier result: operands are not results
    steps = ["24 + 1 = 25", "25 + 1 = 26", "So she has 26 apples.", "26 - 25 = 1", "1 + 1 = 2"]
    assert labels(steps) == [1, 1, 0, 0, 0]  # after "= 1", 1 is an earlier result


def test_restated_numbers_and_answer_line() -> None:
    assert labels(["24 + 12 = 36", "So she has 36 apples.", "She has 50 apples."]) == [0, 0, 1]
    assert labels(["24 + 12 = 36", "Answer: 77"]) == [0, 1]
    assert labels(["She has 36 apples, since 24 + 12 = 36."]) == [0]


def test_step_numbering_is_not_an_operand() -> None:
    steps = ["1. 24 + 12 = 36", "Step 7: 36 - 5 = 31", "8) 31 * 3 = 93", "**Step 9:** 93 / 3 = 31"]
    assert labels(steps) == [0, 0, 0, 0]


def test_commas_and_dollars() -> None:
    problem = ArithProblem("t", "q", (1200.0, 35.0, 2.0), 2330.0, 2, ())
    assert labels(["$1,200 - $35 = $1,165", "1,165 x 2 = 2,330", "Answer: $2,330"], problem) \
        == [0, 0, 0]
    assert labels(["$1,200 - $35 = $1,175"], problem) == [1]


def test_chained_expressions_follow_precedence() -> None:
    assert labels(["24 + 12 * 3 = 60"]) == [0]
    assert labels(["24 + 12 * 3 = 108"]) == [1]  # left-to-right is wrong
    assert labels(["(24 + 12) * 3 = 108"]) == [0]
    assert labels(["24 + 12 * 3 = 24 + 36 = 60"]) == [0]  # 36 = 12 * 3 restated
    assert labels(["24 + 12 = 36 - 5 = 31"]) == [0]  # running chain
    assert labels(["24 + 12 = 36 - 5 = 30"]) == [1]
    assert labels(["36 = 24 + 12", "36 = 20 + 16"]) == [0, 1]


def test_words_units_and_no_numbers() -> None:
    assert labels(["24 plus 12 equals 36", "36 minus 5 = 31", "31 times 3 = 93"]) == [0, 0, 0]
    assert labels(["24 divided by 3 = 8", "8 multiplied by 3 = 24"]) == [0, 0]
    assert labels(["24 apples + 12 apples = 36 apples", "3 times as many: 36 * 3 = 108"]) \
        == [0, 0]
    assert labels(["Let's think step by step.", "First we add."]) == [0, 0]


def test_rounding_tolerance_follows_written_precision() -> None:
    problem = ArithProblem("t", "q", (10.0, 3.0), 0.0, 1, ())
    assert labels(["10 / 3 = 3.33", "10 / 3 = 3.3", "10 / 3 = 3.34"], problem) == [0, 0, 1]
    assert labels(["10 * 3 = 31"], problem) == [1]


def test_worked_solution_is_clean_and_ends_in_the_gold() -> None:
    for p in generate_problems(50, seed=4):
        solution = worked_solution(p)
        lines = solution.splitlines()
        assert lines[-1] == f"#### {p.gold:g}" and gold_from_answer(solution) == f"{p.gold:g}"
        assert labels(lines[:-1], p) == [0] * p.n_ops
        assert labels(lines[:-1], find_numbers(p.question)) == [0] * p.n_ops
