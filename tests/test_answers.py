"""Strict answers: only an explicit statement counts, the stop rule ends a reply at its answer
line, golds compare numerically or as normalised strings, and chance shuffles problems."""

from __future__ import annotations

import math

import pytest

from core.data.answers import (
    AnswerFormat,
    accuracy_with_chance,
    answer_number,
    answers_match,
    normalise_answer,
    parse_number,
    read_answer,
    reply_is_correct,
    trace_accuracy,
)
from core.data.traces import trace_from_dict


@pytest.mark.parametrize(("reply", "text"), [
    ("4 + 3 = 7\n7 * 2 = 14\nAnswer: 14\n", "14"),
    ("Natalia sold 72 clips.\n#### 72", "72"),
    ("so she has 9.\nThe answer is: 368\nQuestion: Tom has 3", "368"),
    ("The final answer is $\\boxed{\\frac{1}{2}}$.", "0.5"),
    ("**Answer:**\n14\n", "14"),
    ("Final answer: $1,234.50", "1234.5"),
    ("Answer: 12 + 5 = 17 apples", "17"),
    ("Answer: She has 14 pens.", "14"),
    ("Answer: -3", "-3"),
    ("\\boxed{x^2 + 1}", "x^2 + 1"),
    ("Answer: 5\\pi", "5\\pi"),
    ("Answer: 9\nmore text\nAnswer: 12\n", "9"),  # the first statement: generation ends there
])
def test_an_answer_is_read_only_from_its_statement(reply: str, text: str) -> None:
    answer = read_answer(reply)
    assert answer is not None and answer.text == text
    assert reply[answer.start:answer.end].lower().lstrip("*\\").startswith(
        ("answer", "####", "the", "final", "boxed"))


@pytest.mark.parametrize("reply", [
    "4 + 3 = 7\n7 * 2 = 14",  # the last number is 14, but nothing states it
    "She has 14 pens left.",
    "Answer: <number>\n",  # the instruction's placeholder copied
    "Answer:",
    "\\boxed{14",  # never closed
    "",
])
def test_a_reply_without_a_statement_is_unanswered(reply: str) -> None:
    assert read_answer(reply) is None


def test_stop_rule_ends_the_reply_after_the_answer_line() -> None:
    fmt = AnswerFormat()
    reply = "4 + 3 = 7\nAnswer: 7\nQuestion: Tom has 3 cats."
    end = fmt.reply_end(reply)
    assert end is not None and reply[:end] == "4 + 3 = 7\nAnswer: 7\n"
    for partial in ("4 + 3 = 7\nAnswer: 7", "Answer: ", "Answer: <number>\n", "\\boxed{7"):
        assert fmt.reply_end(partial) is None  # the line (or the brace) has not ended yet
    assert fmt.reply_end("The answer is \\boxed{7}.\n") == len("The answer is \\boxed{7}.\n")
    # each prefix of a reply: no stop until the newline after the statement has arrived
    text = "2 + 2 = 4\n#### 4\nmore"
    stops = [fmt.reply_end(text[:n]) for n in range(len(text) + 1)]
    first = next(n for n, stop in enumerate(stops) if stop is not None)
    assert text[:first] == "2 + 2 = 4\n#### 4\n" and stops[first] == first


def test_configurable_patterns() -> None:
    fmt = AnswerFormat.with_lead("Result =")
    assert fmt.read("x\nResult = 12\n").text == "12"  # type: ignore[union-attr]
    assert AnswerFormat((r"####",)).read("Answer: 3") is None
    with pytest.raises(ValueError, match="not a valid regex"):
        AnswerFormat(("(",))
    with pytest.raises(ValueError, match="at least one"):
        AnswerFormat(())


def test_numbers_and_comparison() -> None:
    assert parse_number("1,234") == 1234 and parse_number("$5") == 5
    assert parse_number("\\dfrac{3}{4}") == 0.75 and parse_number("-3/4") == -0.75
    assert parse_number("12%") == 12 and parse_number("14 pens") is None
    assert answer_number("14 - 3") is None and answer_number("between 3 and 5") is None
    assert answers_match("17", "17.0") and answers_match("17.0000000001", "17")
    assert not answers_match("17.5", "17") and not answers_match(None, "17")
    assert not answers_match("17", None) and not answers_match("x^2", "2")
    assert answers_match("0.5", "\\frac{1}{2}") and answers_match("1,000", "1000")
    assert answers_match("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}")
    assert answers_match("\\text{(A)}", "(a)") and not answers_match("(B)", "(A)")
    assert normalise_answer(" $x ^ 2$. ") == "x^2"


def test_accuracy_and_answered_share() -> None:
    result = accuracy_with_chance(["1", "2", None, "9"], ["1", "2", "3", "4"])
    assert (result.n, result.n_answered, result.n_correct) == (4, 3, 2)
    assert result.answered_share == 0.75 and result.accuracy == 0.5
    assert result.as_dict()["n_shuffles"] == 20


def test_chance_shuffles_problems_not_chains() -> None:
    # two problems, two chains each, every chain right: a shuffle either keeps both golds
    # (rate 1) or swaps them (rate 0); a chain-level shuffle could give 0.5
    result = accuracy_with_chance(["1", "1", "2", "2"], ["1", "1", "2", "2"],
                                  ["a", "a", "b", "b"], n_shuffles=50, seed=3)
    assert result.accuracy == 1.0 and result.n_problems == 2
    # the mean of 50 rates that are each 0 or 1, and their spread
    assert result.chance_mean * 50 == pytest.approx(round(result.chance_mean * 50))
    ones = round(result.chance_mean * 50)
    expected_sd = math.sqrt((ones * (1 - result.chance_mean) ** 2
                             + (50 - ones) * result.chance_mean ** 2) / 49)
    assert result.chance_sd == pytest.approx(expected_sd)
    again = accuracy_with_chance(["1", "1", "2", "2"], ["1", "1", "2", "2"],
                                 ["a", "a", "b", "b"], n_shuffles=50, seed=3)
    assert again == result
    with pytest.raises(ValueError, match="two golds"):
        accuracy_with_chance(["1", "2"], ["1", "2"], ["a", "a"])


def test_chance_is_low_with_many_distinct_golds() -> None:
    golds = [str(i) for i in range(200)]
    result = accuracy_with_chance(golds, golds, n_shuffles=10)
    assert result.accuracy == 1.0 and result.chance_mean < 0.05


def test_trace_accuracy_reads_answered_and_problems() -> None:
    traces = [trace_from_dict({"id": f"t{i}", "problem_id": f"p{i // 2}", "prompt": "q",
                               "response": "x", "answer": answer, "gold": gold,
                               "answered": answered, "is_correct": None})
              for i, (answer, gold, answered) in enumerate(
                  [("3", "3", True), ("3", "3", False), ("4", "5", True), (None, "5", None)])]
    result = trace_accuracy(traces)
    assert (result.n, result.n_answered, result.n_correct, result.n_problems) == (4, 2, 1, 2)


def test_reply_is_correct_reads_strictly() -> None:
    assert reply_is_correct("5 + 7 = 12\n#### 12", 12.0)
    assert not reply_is_correct("5 + 7 = 12", 12.0)  # nothing states it
    assert reply_is_correct("Answer: \\frac{1}{2}", "0.5")


def test_numeric_format_skips_statements_without_a_number() -> None:
    reply = "The answer is the same as before.\n2 + 2 = 4\nAnswer: 4\n"
    assert read_answer(reply).text == "the same as before"  # type: ignore[union-attr]
    numeric = AnswerFormat(numeric=True)
    assert numeric.read(reply).text == "4"  # type: ignore[union-attr]
    assert numeric.reply_end(reply) == len(reply)
