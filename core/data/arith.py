"""Arithmetic word problems with automatically labelled chains of thought.

Two halves:
- a seeded generator of multi-step word problems (+, -, *, / with exact division; every
  intermediate value a positive integer below 10,000), each carrying its operations as a
  structured record so the gold answer can be recomputed independently;
- a labeller for a model's "one calculation per line" answer. Step label 1 when a line states
  a false calculation or uses a number that is neither in the problem nor an earlier
  result; 0 otherwise. It needs only the numbers the problem gives, so it labels any
  problem's steps (`find_numbers` reads them from the question text); numbers written in
  words ("twice", "a dozen") are not known to it.

Why rule-based: a small model's arithmetic is checkable exactly, so every step gets a label
without a judge model. Final answers are read by `core.data.answers` (strictly), prefix labels
derived by `core.data.prefix_labels`.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.data.prompting import DEFAULT_PROMPT

MAX_VALUE = 10_000  # every intermediate value stays a positive integer below this

# ---------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class ArithProblem:
    """One word problem. `steps` holds (op, a, b, result) per operation, op in "+-*/";
    steps[0] starts from numbers[0], and numbers[i + 1] is the b of steps[i]."""

    problem_id: str
    question: str
    numbers: tuple[float, ...]
    gold: float
    n_ops: int
    steps: tuple[tuple[str, float, float, float], ...]


@dataclass(frozen=True)
class _Theme:
    """Sentence templates for one story; fields: {name} {He} {he} {His} {his} {him} {n} {thing}
    {item}."""

    things: tuple[str, ...]
    start: tuple[str, ...]
    ops: dict[str, tuple[str, ...]]
    questions: tuple[str, ...]
    items: tuple[str, ...] = ("a book", "a kite", "a snack")


_THEMES: tuple[_Theme, ...] = (
    _Theme(  # shopping
        ("dollars",), ("{name} has ${n} in {his} wallet.", "{name} goes to the market with ${n}."),
        {"+": ("{He} earns ${n} more helping a neighbour.", "A friend gives {him} ${n}."),
         "-": ("{He} spends ${n} on {item}.", "{He} pays ${n} for {item}."),
         "*": ("A lucky prize makes {his} money {n} times as much.",
               "{His} aunt pays {him} enough that {his} money becomes {n} times as much."),
         "/": ("{He} splits {his} money equally into {n} envelopes and keeps one envelope.",)},
        ("How many dollars does {name} have now?", "How many dollars does {name} have in the end?"),
        ("a scarf", "some fruit", "a lamp", "a board game")),
    _Theme(  # baking
        ("cookies", "muffins", "cupcakes"),
        ("{name} bakes {n} {thing}.", "There are {n} {thing} on {name}'s tray."),
        {"+": ("{He} bakes {n} more {thing}.", "{His} friend brings {n} extra {thing}."),
         "-": ("{He} gives {n} {thing} to the neighbours.", "{He} eats {n} {thing}."),
         "*": ("{He} repeats the recipe until there are {n} times as many {thing} as before.",
               "{He} bakes more batches, making {n} times as many {thing}."),
         "/": ("{He} shares the {thing} equally among {n} boxes and keeps one box.",)},
        ("How many {thing} does {name} have now?", "How many {thing} are left for {name}?")),
    _Theme(  # travel
        ("passengers",), ("{name} drives a bus that starts with {n} passengers.",),
        {"+": ("At the next stop, {n} people get on.", "{n} more passengers board at the station."),
         "-": ("At the market stop, {n} passengers get off.", "{n} people leave at the park."),
         "*": ("At the stadium the crowd grows to {n} times as many passengers as before.",),
         "/": ("The passengers split equally into {n} groups and only one group stays on.",)},
        ("How many passengers are on {name}'s bus now?",)),
    _Theme(  # savings
        ("coins",), ("{name} has {n} coins in a piggy bank.", "{name} has saved {n} coins."),
        {"+": ("{He} saves {n} more coins.", "{His} grandmother gives {him} {n} coins."),
         "-": ("{He} takes out {n} coins to buy {item}.", "{He} spends {n} coins on {item}."),
         "*": ("{His} parents reward {him}, and {his} savings become {n} times as large.",
               "Interest makes {his} coins grow to {n} times as many."),
         "/": ("{He} divides the coins equally into {n} jars and keeps only one jar.",
               "{He} shares the coins equally among {n} people, {him}self included, and keeps "
               "{his} share.")},
        ("How many coins does {name} have now?", "How many coins are in {name}'s piggy bank?"),
        ("a kite", "a comic", "a yo-yo")),
    _Theme(  # farm animals
        ("sheep", "goats", "chickens", "cows"), ("{name} keeps {n} {thing} on a farm.",),
        {"+": ("{He} buys {n} more {thing}.", "In spring, {n} baby {thing} are born."),
         "-": ("{He} sells {n} {thing} at the fair.", "{n} {thing} wander off."),
         "*": ("After a good year, there are {n} times as many {thing} as before.",),
         "/": ("{He} splits the {thing} equally among {n} farmers and keeps one share.",)},
        ("How many {thing} does {name} have now?", "How many {thing} are on {name}'s farm?")),
    _Theme(  # classroom
        ("pencils", "stickers", "crayons"), ("A teacher, {name}, has {n} {thing}.",),
        {"+": ("{He} buys {n} more {thing}.", "The school sends {n} extra {thing}."),
         "-": ("{He} hands out {n} {thing} to students.", "{n} {thing} get lost."),
         "*": ("A donation makes the number of {thing} {n} times as large.",),
         "/": ("{He} splits the {thing} equally among {n} classrooms and keeps one share.",)},
        ("How many {thing} does {name} have now?", "How many {thing} does {name} keep?")),
)
_NAMES = (("Mia", "she"), ("Leo", "he"), ("Ava", "she"), ("Omar", "he"), ("Lena", "she"),
          ("Ravi", "he"), ("Sofia", "she"), ("Tom", "he"), ("Yuki", "she"), ("Ben", "he"))
_CONNECTORS = ("Then", "Later", "After that", "Next")
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b,
          "*": lambda a, b: a * b, "/": lambda a, b: a // b}


def _next_operation(rng: random.Random, current: int, max_number: int) -> tuple[str, int]:
    """Pick (op, b) among the operations that keep the value a positive integer < MAX_VALUE;
    added and subtracted amounts are at most `max_number`."""
    choices: list[tuple[str, int]] = []
    if current + 2 < MAX_VALUE:
        choices.append(("+", rng.randint(2, min(max_number, MAX_VALUE - 1 - current))))
    if current >= 2:
        choices.append(("-", rng.randint(1, min(max_number, current - 1))))
    factors = [b for b in range(2, 6) if current * b < MAX_VALUE]
    if factors:
        choices.append(("*", rng.choice(factors)))
    divisors = [b for b in range(2, 11) if current % b == 0]
    if divisors:
        choices.append(("/", rng.choice(divisors)))
    return rng.choice(choices)


def _sentence(template: str, fields: dict[str, str], n: int) -> str:
    return template.format(n=f"{n:,}", **fields)  # "1,250": thousands separator, as people write


def _make_problem(seed: int, index: int, min_ops: int, max_ops: int,
                  max_number: int) -> ArithProblem:
    rng = random.Random(f"arith-{seed}-{index}")  # per-problem stream: prefix-stable in n
    theme = rng.choice(_THEMES)
    name, pronoun = rng.choice(_NAMES)
    male = pronoun == "he"
    fields = {"name": name, "he": pronoun, "He": pronoun.capitalize(),
              "his": "his" if male else "her", "His": "His" if male else "Her",
              "him": "him" if male else "her", "thing": rng.choice(theme.things)}
    n_ops = rng.randint(min_ops, max_ops)
    current = rng.randint(min(5, max_number), min(60, max_number))
    numbers = [float(current)]
    steps: list[tuple[str, float, float, float]] = []
    sentences = [_sentence(rng.choice(theme.start), fields, current)]
    for i in range(n_ops):
        op, b = _next_operation(rng, current, max_number)
        fields["item"] = rng.choice(theme.items)
        result = _APPLY[op](current, b)
        steps.append((op, float(current), float(b), float(result)))
        numbers.append(float(b))
        text = _sentence(rng.choice(theme.ops[op]), fields, b)
        if i > 0 and text[0] in "HSTIA" and not text.startswith(name) and rng.random() < 0.4:
            text = f"{rng.choice(_CONNECTORS)}, {text[0].lower()}{text[1:]}"
        sentences.append(text)
        current = result
    sentences.append(rng.choice(theme.questions).format(**fields))
    return ArithProblem(problem_id=f"arith-s{seed}-{index:05d}", question=" ".join(sentences),
                        numbers=tuple(numbers), gold=float(current), n_ops=n_ops,
                        steps=tuple(steps))


def generate_problems(n: int, seed: int = 0, min_ops: int = 2, max_ops: int = 8,
                      max_number: int = 99) -> list[ArithProblem]:
    """`n` problems, deterministic for `seed`; problem i does not depend on `n` (the first k
    problems of a larger batch equal a batch of k). `max_number` caps the starting value and
    the amounts added or subtracted (smaller numbers: easier problems)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    if not 1 <= min_ops <= max_ops:
        raise ValueError(f"Need 1 <= min_ops <= max_ops, got min_ops={min_ops}, "
                         f"max_ops={max_ops}.")
    if max_number < 2:
        raise ValueError(f"max_number must be at least 2, got {max_number}.")
    return [_make_problem(seed, i, min_ops, max_ops, max_number) for i in range(n)]


def cot_prompt(problem: ArithProblem) -> str:
    """The user message of the default prompt (`core.data.prompting.DEFAULT_PROMPT`): one worked
    example, then the question."""
    return DEFAULT_PROMPT.user_message(problem.question)


def worked_solution(problem: ArithProblem) -> str:
    """The solution in GSM8K's shape: one calculation per line, then "#### N"."""
    lines = [f"{_fmt(a)} {op} {_fmt(b)} = {_fmt(result)}" for op, a, b, result in problem.steps]
    return "\n".join([*lines, f"#### {_fmt(problem.gold)}"])


# ---------------------------------------------------------------------------- labeller

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"  # 1,234 before 1234 so commas are kept
_TOKEN = re.compile(rf"(?P<num>(?:\$\s?)?{_NUM}%?)|(?P<op>[-+*/×÷·−–])|(?P<eq>=)|(?P<lp>\()"
                    r"|(?P<rp>\))|(?P<word>[A-Za-z]+)|(?P<other>\S)")
_OP_SYMBOLS = {"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-", "x": "*", "times": "*",
               "plus": "+", "minus": "-", "multiplied": "*", "divided": "/"}
_BULLET = re.compile(r"^\s*(?:[#>•]+\s*|[*-]\s+)")
_NUMBERING = re.compile(r"^(?:(?:step|line)\s*\d+\s*[:.)-]?|\(?\d+[.)](?!\d)|\d+\s*:(?!\d))\s*",
                        re.IGNORECASE)


@dataclass(frozen=True)
class _Tok:
    kind: str  # num, op, eq, lp, rp, word, other
    text: str  # for op: the normalised symbol
    start: int
    end: int


@dataclass(frozen=True)
class _Num:
    stated: float  # as written: "20%" -> 20, "$1,200" -> 1200
    value: float  # as evaluated: "20%" -> 0.2
    decimals: int  # digits after the point, in `value` units


def _parse_num(text: str) -> _Num:
    digits = text.replace("$", "").replace(",", "").replace("%", "").strip()
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    stated = float(digits)
    if text.endswith("%"):
        return _Num(stated, stated / 100, decimals + 2)
    return _Num(stated, stated, decimals)


def _tokenize(line: str) -> list[_Tok]:
    """Tokens of one line; words such as "x", "times", "divided by" become operators only when
    they stand between two operands, so "3 times as many" stays text."""
    raw = [_Tok(m.lastgroup or "other", m.group(), m.start(), m.end())
           for m in _TOKEN.finditer(line)]
    out: list[_Tok] = []
    i = 0
    while i < len(raw):
        tok, word = raw[i], raw[i].text.lower()
        after = i + 2 if word in ("multiplied", "divided") else i + 1
        operand_before = bool(out) and out[-1].kind in ("num", "rp")
        operand_after = after < len(raw) and raw[after].kind in ("num", "lp")
        by_ok = after == i + 1 or (i + 1 < len(raw) and raw[i + 1].text.lower() == "by")
        if tok.kind == "op":
            out.append(_Tok("op", _OP_SYMBOLS.get(tok.text, tok.text), tok.start, tok.end))
        elif tok.kind == "word" and word in _OP_SYMBOLS and operand_before and operand_after \
                and by_ok:
            out.append(_Tok("op", _OP_SYMBOLS[word], tok.start, raw[after - 1].end))
            i = after - 1
        elif tok.kind == "word" and word == "equals" and operand_before:
            out.append(_Tok("eq", "=", tok.start, tok.end))
        else:
            out.append(tok)
        i += 1
    return out


def _strip_line(line: str) -> str:
    """Drop markdown bold, bullets and step numbering ("1.", "Step 2:", "(3)") at the start."""
    line = _BULLET.sub("", line.replace("**", "")).strip()
    return _NUMBERING.sub("", line)


@dataclass(frozen=True)
class _Expr:
    value: float  # nan after a division by zero
    text: str
    numbers: tuple[_Num, ...]
    partials: tuple[float, ...]  # values of its sub-expressions, e.g. 12 in 3 * 4 + 2
    lead: _Num | None  # the first operand when the expression starts with a number


class _Parser:
    """Recursive descent with normal precedence; unit words after a number ("12 cookies + 5")
    are skipped when an operator or '=' follows them."""

    def __init__(self, line: str, toks: list[_Tok]) -> None:
        self.line, self.toks, self.pos = line, toks, 0
        self.nums: list[_Num] = []
        self.partials: list[float] = []

    def _peek(self, offset: int = 0) -> _Tok | None:
        at = self.pos + offset
        return self.toks[at] if at < len(self.toks) else None

    def _restore(self, saved: tuple[int, int, int]) -> None:
        self.pos, self.nums[saved[1]:], self.partials[saved[2]:] = saved[0], [], []

    def chain(self) -> list[_Expr]:
        """The longest `expr (= expr)*` starting here; [] when no expression starts here."""
        first = self.expression()
        parts = [first] if first else []
        while parts and (tok := self._peek()) and tok.kind == "eq":
            self.pos += 1
            if (nxt := self.expression()) is None:
                break
            parts.append(nxt)
        return parts

    def expression(self) -> _Expr | None:
        start, self.nums, self.partials = self.pos, [], []
        value = self._sum()
        if value is None:
            return None
        first = self.toks[start]
        lead = _parse_num(first.text) if first.kind == "num" else None
        text = self.line[first.start:self.toks[self.pos - 1].end].strip()
        return _Expr(value, text, tuple(self.nums), tuple(self.partials), lead)

    def _binary(self, ops: str, operand: Callable[[], float | None]) -> float | None:
        left = operand()
        while left is not None and (tok := self._peek()) and tok.kind == "op" \
                and tok.text in ops:
            saved = (self.pos, len(self.nums), len(self.partials))
            self.pos += 1
            right = operand()
            if right is None:
                self._restore(saved)
                break
            if tok.text == "/":
                left = left / right if right != 0 else math.nan
            elif tok.text == "*":
                left = left * right
            else:
                left = left + right if tok.text == "+" else left - right
            self.partials.append(left)
        return left

    def _sum(self) -> float | None:
        return self._binary("+-", self._product)

    def _product(self) -> float | None:
        return self._binary("*/", self._factor)

    def _factor(self) -> float | None:
        tok, saved = self._peek(), (self.pos, len(self.nums), len(self.partials))
        if tok is None:
            return None
        self.pos += 1
        if tok.kind == "op" and tok.text in "+-":
            inner = self._factor()
            if inner is not None:
                return -inner if tok.text == "-" else inner
        elif tok.kind == "lp":
            inner = self._sum()
            if inner is not None and (close := self._peek()) and close.kind == "rp":
                self.pos += 1
                return inner
        elif tok.kind == "num":
            self.nums.append(_parse_num(tok.text))
            for n_words in (1, 2):  # skip unit words followed by an operator or '='
                kinds = [t.kind if t else "" for t in map(self._peek, range(n_words + 1))]
                if kinds == ["word"] * n_words + [kinds[-1]] and kinds[-1] in ("op", "eq", "rp"):
                    self.pos += n_words
                    break
            return self.nums[-1].value
        self._restore(saved)
        return None


def _claim_ok(claim: _Num, true: float) -> bool:
    """A claimed result is right when it equals the true value rounded or truncated to the
    precision it is written with: |claim - true| <= 0.5 * 10^-decimals, or claim = trunc."""
    if not math.isfinite(true):
        return False
    eps = 1e-9 * max(1.0, abs(true))
    scale = 10.0 ** min(claim.decimals, 12)
    truncated = math.trunc(true * scale + math.copysign(eps, true)) / scale
    return abs(claim.value - true) <= 0.5 / scale + eps or abs(claim.value - truncated) <= eps


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _known(x: float, pool: list[float]) -> bool:
    return any(_close(abs(x), abs(k)) for k in pool)


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "undefined"
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


def _is_bare(part: _Expr) -> bool:
    return len(part.numbers) == 1 and part.lead is not None and not part.partials


def _check_calculation(parts: list[_Expr], known: list[float]) -> tuple[list[str], list[float]]:
    """Reasons a chain `p0 = p1 = ...` is wrong, and the results it states (the bare numbers
    after an '=', right or wrong; operands are not results). p0's operands must
    be known; a bare number after '=' is a claimed result (new is fine if true); a compound
    part must equal the previous value, or continue a running chain ("5 + 3 = 8 - 2 = 6"), and
    its operands may also come from earlier parts of the same chain. "36 = 24 + 12" is read
    as "24 + 12 = 36"."""
    if len(parts) == 2 and _is_bare(parts[0]) and not _is_bare(parts[1]):
        parts = parts[::-1]
    reasons = [f"unsupported number {_fmt(n.stated)}" for n in parts[0].numbers
               if not _known(n.stated, known)]
    local = list(known) + [n.stated for n in parts[0].numbers] + list(parts[0].partials)
    current, current_text = parts[0].value, parts[0].text
    for i, part in enumerate(parts[1:], start=1):
        local.append(current)
        if _is_bare(part):
            if not _claim_ok(part.numbers[0], current):
                reasons.append(f"false calculation: {current_text} = {part.text} "
                               f"(is {_fmt(current)})")
            current, current_text = part.value, part.text
            continue
        reasons += [f"unsupported number {_fmt(n.stated)}" for n in part.numbers
                    if not _known(n.stated, local)]
        running = i < len(parts) - 1 and part.lead is not None and _claim_ok(part.lead, current)
        if not _close(part.value, current) and not running:
            reasons.append(f"false calculation: {current_text} = {part.text} "
                           f"(is {_fmt(current)}, not {_fmt(part.value)})")
        local += [n.stated for n in part.numbers] + list(part.partials)
        current, current_text = part.value, part.text
    results = [p.numbers[0].stated for p in parts[1:] if _is_bare(p)]
    return reasons, results


def _check_line(line: str, known: list[float]) -> tuple[list[str], list[float]]:
    """Reasons a step is wrong (empty when fine) and the results it states: the claimed
    results of its calculations and the numbers it asserts outside any calculation."""
    text = _strip_line(line)
    parser = _Parser(text, _tokenize(text))
    reasons: list[str] = []
    stated: list[float] = []
    loose: list[float] = []  # numbers outside any '=' chain: restated values
    while parser.pos < len(parser.toks):
        parts = parser.chain()
        if not parts:
            parser.pos += 1
        elif len(parts) == 1:
            loose += [n.stated for n in parts[0].numbers]
        else:
            chain_reasons, chain_numbers = _check_calculation(parts, known)
            reasons += chain_reasons
            stated += chain_numbers
    pool = known + stated  # "so she has 17 left" is fine after "12 + 5 = 17" on the same line
    reasons += [f"unsupported number {_fmt(x)}" for x in loose if not _known(x, pool)]
    return list(dict.fromkeys(reasons)), stated + loose


def find_numbers(text: str) -> list[float]:
    """Every number written in `text`, in order, as stated ("$1,200" -> 1200, "20%" -> 20)."""
    return [_parse_num(t.text).stated for t in _tokenize(text) if t.kind == "num"]


@dataclass(frozen=True)
class StepCheck:
    """label 1 = hallucinated/incorrect step, 0 = fine; reason is "" when the label is 0."""

    label: int
    reason: str


def label_steps(given: ArithProblem | Sequence[float], steps: Sequence[str]) -> list[StepCheck]:
    """Label each step: 1 if it states a false calculation or uses a number that is neither
    given (`given`: an ArithProblem, whose numbers are given, or the numbers themselves, e.g.
    `find_numbers(question)`) nor an earlier result. Earlier results are the numbers earlier
    steps claimed, right or wrong (after an '=', or asserted outside a calculation: "so she
    has 17 left"), so an error carried forward is not a new hallucination; an earlier step's
    operands are not results, so an invented operand ("7 + 1 = 8" with no 1 in the problem) is
    flagged each time it is used. Numbers only computed implicitly (12 in "3 * 4 + 2 = 14") are
    not known to later steps. The final "Answer: N" line is a step like any other: 1 only when
    N is new."""
    known = list(given.numbers if isinstance(given, ArithProblem) else given)
    checks = []
    for step in steps:
        reasons, stated = _check_line(step, known)
        checks.append(StepCheck(int(bool(reasons)), "; ".join(reasons)))
        known += stated
    return checks
