"""Final answers, read strictly: an answer exists only where the reply states it.

A reply's answer is the value of its first explicit answer statement: `#### N`, `Answer: N`
(also "Final answer:", "**Answer:**"), `The answer is N`, `\\boxed{N}`. A reply without one is
*unanswered*; its last number is never taken instead (with small gold answers that fallback
scores chatter as right by chance). The first statement counts because generation ends there
(`AnswerFormat.reply_end`, the stop rule): what comes after it is text the model was not asked
for. The patterns are configurable (`AnswerFormat`).

Comparison with the gold (`answers_match`): when the gold is a number ("72", "1,234", "3/4",
"\\frac{3}{4}"), the stated value's number (the first number after its last "=", so "12 + 5 =
17 apples" gives 17) must equal it within a relative tolerance; otherwise the normalised
strings must be equal (spaces, `$`, `\\left`/`\\right`, `\\text{}`, `\\dfrac` and a trailing
period ignored; no symbolic algebra).

Chance (`accuracy_with_chance`): the same stated answers scored against golds shuffled across
problems (seeded, several shuffles), so an accuracy can be read against what matching by luck
gives. Chains of one problem keep one gold between them: problems are shuffled, not chains.

    fmt = AnswerFormat()
    answer = fmt.read("7 * 2 = 14\\nAnswer: 14\\n")   # Answer(text="14", value=14.0, ...)
    answers_match(answer.text if answer else None, "14")   # True
    sample(..., stop=fmt.reply_end)   # generation ends after the answer line
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

__all__ = ["DEFAULT_PATTERNS", "AccuracyWithChance", "Answer", "AnswerFormat",
           "accuracy_with_chance", "answers_match", "format_number", "normalise_answer",
           "parse_number", "read_answer", "reply_is_correct", "trace_accuracy"]

# What precedes an answer's value (case-insensitive). A lead ending in "{" takes the balanced
# brace content as the value; any other takes the rest of the line (or the next non-blank line
# when the rest is empty: "**Answer:**\n14").
DEFAULT_PATTERNS: tuple[str, ...] = (
    r"####",
    r"\banswer\s*:",  # "Answer:", "Final answer:", "answer is:" is the next pattern's
    r"\bthe\s+(?:final\s+)?answer\s+is\b\s*:?",
    r"\\boxed\{",
)

_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_SIGNED = re.compile(rf"(?<![\w.^_{{])([-−]?)\s?\$?\s?({_NUMBER})(?![\d^])")
_FRACTION = re.compile(r"^([-−]?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$|^([-−]?\d+)\s*/\s*(\d+)$")
_MATH = re.compile(r"[\d+*/^×÷<>−\\-]")  # left beside the number: an expression
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")  # "Answer: 93. That is 3 more." ends at "93."
_PLACEHOLDER = re.compile(r"^<[^<>]*>$")  # "Answer: <number>" copied from the instruction
_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox|boxed|fbox)\s*\{")


@dataclass(frozen=True)
class Answer:
    """A stated answer: `value`, its number (`answer_number`; None when it is not one), `text`,
    that number written plainly ("12 + 5 = 17 apples" -> "17") or else the value as written
    ("x^2 + 1"), and where the statement lies in the reply ([start, end), lead to value end)."""

    text: str
    value: float | None
    start: int
    end: int
    pattern: str


def _balanced(text: str, start: int) -> int | None:
    """The index of the "}" closing the brace opened just before `start`, or None."""
    depth = 1
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    return None


def _clean(value: str) -> str:
    """Markdown emphasis, a trailing period, surrounding `$` and blank ends removed."""
    value = value.replace("**", "").replace("__", "").strip()
    value = value[:-1].rstrip() if value.endswith(".") else value
    value = value.strip("$").strip()
    return value[:-1].rstrip() if value.endswith(".") else value


def _unwrap(text: str) -> str:
    """`\\boxed{...}`, `\\text{...}` and similar wrappers replaced by their (balanced) content."""
    while found := _WRAPPER.search(text):
        close = _balanced(text, found.end())
        if close is None:
            break
        text = text[:found.start()] + text[found.end():close] + text[close + 1:]
    return text


def normalise_answer(text: str) -> str:
    """The form two answers are compared in when they are not numbers: without spaces, `$`,
    `\\left`/`\\right`, spacing commands, `\\text{...}`/`\\boxed{...}` wrappers (kept: their
    content), degree marks, and a trailing period; `\\dfrac`/`\\tfrac` read as `\\frac`."""
    text = _clean(_unwrap(_clean(text)))
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""),
                     ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("^\\circ", ""),
                     ("^{\\circ}", ""), ("\\$", ""), ("$", "")):
        text = text.replace(old, new)
    return re.sub(r"\s+", "", text).rstrip(".").lower()


def parse_number(text: str) -> float | None:
    """The number a whole answer text is, or None: "72", "-3", "$1,234.50", "12%" (12),
    "3/4", "\\frac{3}{4}", "\\boxed{14}". Words around it make it no number (see
    `answer_number` for the number a stated answer gives)."""
    text = normalise_answer(text).replace("−", "-")
    if text.endswith("%"):
        text = text[:-1]
    if re.fullmatch(rf"-?(?:{_NUMBER})", text):
        return float(text.replace(",", ""))
    found = _FRACTION.match(text)
    if found:
        sign, num, den = (found.group(1), found.group(2), found.group(3)) if found.group(2) \
            else ("", found.group(4), found.group(5))
        numerator, denominator = parse_number(num), parse_number(den)
        if numerator is None or denominator in (None, 0.0):
            return None
        assert denominator is not None
        return (-1 if sign else 1) * numerator / denominator
    return None


def answer_number(text: str) -> float | None:
    """The number a stated answer gives: the whole text when it is a number or a fraction,
    else the one number after its last "=" among words ("12 + 5 = 17 apples" -> 17, "She has
    14 pens" -> 14); None for "x^2 + 1", "14 - 3" or "between 3 and 5"."""
    whole = parse_number(text)
    if whole is not None:
        return whole
    tail = _clean(_unwrap(text)).replace("\\$", "$").rsplit("=", 1)[-1].strip()
    whole = parse_number(tail)
    if whole is not None:
        return whole
    numbers = list(_SIGNED.finditer(tail))
    if len(numbers) != 1:
        return None  # "between 3 and 5": not one number
    found = numbers[0]
    if _MATH.search(tail[:found.start()] + " " + tail[found.end():]):
        return None  # "x^2 + 1", "14 - 3": an expression, not a number
    return (-1.0 if found.group(1) else 1.0) * float(found.group(2).replace(",", ""))


def format_number(value: float) -> str:
    """A number as an answer text: "14", "1234.5", "-0.75" (no exponent for ordinary sizes)."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"


@dataclass(frozen=True)
class AnswerFormat:
    """How answers are stated: `patterns` are regexes (case-insensitive) for what precedes the
    value (see DEFAULT_PATTERNS). It reads a reply's answer (`read`) and says where a reply
    being generated should end (`reply_end`: the end of the line of its first answer
    statement), so generation and reading agree on what the answer is. With `numeric` (a
    problem set whose golds are numbers) a statement without a number ("the answer is the same
    as before") does not count."""

    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    numeric: bool = False  # True: a statement counts only when its value is a number

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ValueError("An answer format needs at least one pattern.")
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"The answer pattern {pattern!r} is not a valid regex: "
                                 f"{error}.") from None

    @classmethod
    def with_lead(cls, lead: str, base: Sequence[str] = DEFAULT_PATTERNS,
                  numeric: bool = False) -> AnswerFormat:
        """The default patterns plus a literal lead, e.g. "Final result:" for an instruction
        that asks for "Final result: <number>"."""
        lead = lead.strip()
        extra = re.escape(lead) + (r"\s*" if not lead.endswith("{") else "")
        return cls(tuple(dict.fromkeys([*base, extra])), numeric)

    def _statements(self, text: str) -> list[tuple[int, int, int, str, str]]:
        """(start, value end, line end, pattern, value) of every statement with a value, in
        order of their start; line end is None-free: len(text) + 1 when no newline follows."""
        found: list[tuple[int, int, int, str, str]] = []
        for pattern in self.patterns:
            for match in re.finditer(pattern, text, re.IGNORECASE):
                lead_end = match.end()
                if pattern.endswith("{"):
                    close = _balanced(text, lead_end)
                    if close is None:
                        continue  # still open: no value yet
                    value, value_end = text[lead_end:close], close + 1
                else:
                    line_end = text.find("\n", lead_end)
                    line_end = len(text) if line_end < 0 else line_end
                    value, value_end = text[lead_end:line_end], line_end
                    if not _clean(value):  # "Answer:\n14": the next non-blank line
                        rest = re.match(r"[ \t*_]*\n\s*([^\n]*)", text[lead_end:])
                        if rest and rest.group(1).strip():
                            value = rest.group(1)
                            value_end = lead_end + rest.end(1)
                value = _clean(_SENTENCE_END.split(value, maxsplit=1)[0])
                if not value or _PLACEHOLDER.match(value) or \
                        (self.numeric and answer_number(value) is None):
                    continue
                newline = text.find("\n", value_end)
                line_end = newline + 1 if newline >= 0 else len(text) + 1
                found.append((match.start(), value_end, line_end, pattern, value))
        return sorted(found)

    def read(self, reply: str) -> Answer | None:
        """The reply's first answer statement, or None when it states no answer."""
        statements = self._statements(reply)
        if not statements:
            return None
        start, end, _, pattern, value = statements[0]
        number = answer_number(value)
        text = format_number(number) if number is not None else value  # "17", "x^2 + 1"
        return Answer(text=text, value=number, start=start, end=end, pattern=pattern)

    def reply_end(self, text: str) -> int | None:
        """Where a reply ends under the stop rule: just after the newline that ends the line of
        its first answer statement; None while there is no complete one (the line has not
        ended). Pass it as the `stop` of generation."""
        statements = self._statements(text)
        if not statements:
            return None
        line_end = statements[0][2]
        return line_end if line_end <= len(text) else None

    def as_dict(self) -> dict[str, Any]:
        return {"patterns": list(self.patterns), "numeric": self.numeric}


DEFAULT_FORMAT = AnswerFormat()


def read_answer(reply: str, answer_format: AnswerFormat = DEFAULT_FORMAT) -> Answer | None:
    """The reply's stated answer (`AnswerFormat.read`); None when it states none."""
    return answer_format.read(reply)


def answers_match(answer: str | None, gold: str | None, rel_tol: float = 1e-6) -> bool:
    """Is a stated answer the gold? False when either is missing. A numeric gold: the answer's
    number (`answer_number`) within rel_tol * max(1, |gold|). Otherwise: equal normalised
    strings (`normalise_answer`)."""
    if answer is None or gold is None:
        return False
    gold_number = parse_number(gold)
    if gold_number is not None:
        number = answer_number(answer)
        return number is not None and abs(number - gold_number) <= \
            rel_tol * max(1.0, abs(gold_number))
    return normalise_answer(answer) == normalise_answer(gold)


def reply_is_correct(reply: str, gold: str | float,
                     answer_format: AnswerFormat = DEFAULT_FORMAT) -> bool:
    """Does the reply state the gold? Its stated answer (`read_answer`) against the gold
    (`answers_match`); False for an unanswered reply."""
    answer = answer_format.read(reply)
    gold_text = gold if isinstance(gold, str) else format_number(float(gold))
    return answer is not None and answers_match(answer.text, gold_text)


# ---------------------------------------------------------------------------- chance


@dataclass(frozen=True)
class AccuracyWithChance:
    """Accuracy over chains with a gold (an unanswered chain counts as wrong), the share that
    stated an answer, and the chance rate: the same answers against golds shuffled across
    problems, mean and sample standard deviation over `n_shuffles` shuffles."""

    n: int
    n_answered: int
    answered_share: float
    accuracy: float
    chance_mean: float
    chance_sd: float
    n_shuffles: int
    n_problems: int = 0
    n_correct: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy_with_chance(answers: Sequence[str | None], golds: Sequence[str | None],
                         problems: Sequence[str] | None = None, n_shuffles: int = 20,
                         seed: int = 0, rel_tol: float = 1e-6) -> AccuracyWithChance:
    """Accuracy and its chance rate (see `AccuracyWithChance`).

    answers[i] is chain i's stated answer (None: unanswered), golds[i] its gold, problems[i]
    its problem (default: each chain its own). Chains without a gold are left out. The golds
    of the problems are permuted (seeded), every chain of a problem gets the gold its problem
    drew, and the same matcher scores them; a problem whose chains carry different golds is a
    ValueError.
    """
    if len(answers) != len(golds) or (problems is not None and len(problems) != len(golds)):
        raise ValueError("answers, golds and problems must have the same length.")
    if n_shuffles < 2:
        raise ValueError(f"Need at least 2 shuffles for a spread, got {n_shuffles}.")
    keep = [i for i, gold in enumerate(golds) if gold is not None]
    groups = [problems[i] if problems is not None else str(i) for i in keep]
    gold_of: dict[str, str] = {}
    for i, group in zip(keep, groups, strict=True):
        gold = golds[i]
        assert gold is not None
        if gold_of.setdefault(group, gold) != gold:
            raise ValueError(f"Problem {group!r} has two golds: {gold_of[group]!r} and "
                             f"{gold!r}.")
    n = len(keep)
    if n == 0:
        return AccuracyWithChance(0, 0, math.nan, math.nan, math.nan, math.nan, n_shuffles)
    chain_answers = [answers[i] for i in keep]
    n_answered = sum(answer is not None for answer in chain_answers)
    n_correct = sum(answers_match(answer, gold_of[group], rel_tol)
                    for answer, group in zip(chain_answers, groups, strict=True))
    names = sorted(gold_of)
    rng = random.Random(seed)
    rates = []
    for _ in range(n_shuffles):
        drawn = [gold_of[name] for name in names]
        rng.shuffle(drawn)
        shuffled = dict(zip(names, drawn, strict=True))
        rates.append(sum(answers_match(answer, shuffled[group], rel_tol)
                         for answer, group in zip(chain_answers, groups, strict=True)) / n)
    mean = sum(rates) / len(rates)
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / (len(rates) - 1))
    return AccuracyWithChance(n=n, n_answered=n_answered, answered_share=n_answered / n,
                              accuracy=n_correct / n, chance_mean=mean, chance_sd=sd,
                              n_shuffles=n_shuffles, n_problems=len(names), n_correct=n_correct)


class _Outcome(Protocol):  # what `trace_accuracy` reads of a `core.data.traces.Trace`
    @property
    def id(self) -> str: ...

    @property
    def problem_id(self) -> str | None: ...

    @property
    def answer(self) -> str | None: ...

    @property
    def gold(self) -> str | None: ...

    @property
    def answered(self) -> bool | None: ...


def trace_accuracy(traces: Sequence[_Outcome], n_shuffles: int = 20, seed: int = 0,
                   rel_tol: float = 1e-6) -> AccuracyWithChance:
    """`accuracy_with_chance` over traces: a trace's stated answer is its `answer` unless it
    records answered = false; its problem is its problem_id (else its id)."""
    answers = [None if trace.answered is False else trace.answer for trace in traces]
    return accuracy_with_chance(answers, [trace.gold for trace in traces],
                                [trace.problem_id or trace.id for trace in traces],
                                n_shuffles=n_shuffles, seed=seed, rel_tol=rel_tol)

