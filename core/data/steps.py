"""Split a response into steps, and map each token of a tokenised text to its step.

A chain of thought is a list of steps s_1..s_T. The probes score steps, so every response token
must belong to exactly one step; the alignment uses the tokenizer's offset mapping (char spans),
never decoded token strings, so it works for byte-level BPE, SentencePiece and WordPiece alike.

Segmenting modes (`Segmenter.mode`):
- "lines": one step per non-blank line (CRLF line endings work: the "\\r" is trimmed).
- "sentences": a step ends after . ! ? (and closing quotes or brackets) when whitespace or the
  end follows, and at every newline. Not after decimals (3.5), abbreviations (e.g., i.e., vs.,
  Dr., U.S.) or a list number at the start of a line ("1. First ...").
- "numbered": a step starts at a line that begins with "1.", "2)", "Step 3:" (optionally after
  markdown marks like "**" or "#"); text before the first number is its own step.
- "regex": `pattern` matches step *starts* (compiled with re.MULTILINE, so "^" is a line start);
  text before the first match is its own step.
In every mode `<think>` and `</think>` tags are boundaries and belong to no step, and each
step's span is trimmed of surrounding whitespace; blank steps are dropped.

Whitespace between steps: the one rule the offline and the streamed path share. A step's char
span runs from its first to its last non-space character, so the whitespace after it (the
newline ending a line, blank lines, the next line's indentation) and think tags form a gap in no
step's text. In tokens (`token_step_index`) a token wholly inside a gap belongs to the step
before it, a token before the first step belongs to the first step, and a token straddling a
boundary belongs to the step of its first non-space character. So a step's tokens include its
trailing newline(s), and a streaming reader knows a step is complete when the next step's first
character arrives (or generation ends). Teacher forcing a stored trace
(`core.diagnose.encode`) and watching a model write (`core.diagnose.monitor`) both apply
`split_steps` and `token_step_index` to the response text as the model wrote it, which is why a
trace keeps the raw reply as its `response` (`core.data.traces`): an edited text (stripped
lines, dropped blank lines) would give the probe other tokens than the model produced.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import regex

SEGMENT_MODES: tuple[str, ...] = ("lines", "sentences", "numbered", "regex")
PATTERN_SECONDS = 0.3  # time limit of a user's step pattern on one text

_THINK_TAG = re.compile(r"</?think>", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]}»]*(?=\s|$)")
_DOTTED_ABBREVIATION = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # e.g, i.e, U.S, a.m
_ABBREVIATIONS = frozenset(
    {"vs", "cf", "approx", "mr", "mrs", "ms", "dr", "prof", "st", "fig", "eq", "resp", "al"})
_NUMBERED_START = re.compile(
    r"^[^\S\n]*(?:[*#>_]+[^\S\n]*)?(?:step[^\S\n]*\d+[^\S\n]*[:.)]?|\d{1,3}[.)])(?=[\s*_]|$)",
    re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Segmenter:
    """How to cut a response into steps: a mode from SEGMENT_MODES, and for "regex" a pattern
    that matches the start of each step (e.g. r"^(?:First|Then|Finally)\\b")."""

    mode: str = "lines"
    pattern: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in SEGMENT_MODES:
            raise ValueError(
                f"Unknown segmenting mode '{self.mode}'; choose from {', '.join(SEGMENT_MODES)}.")
        if self.mode != "regex":
            if self.pattern is not None:
                raise ValueError(f"A pattern is only used with mode 'regex', not '{self.mode}'.")
            return
        if not self.pattern:
            raise ValueError("Mode 'regex' needs a pattern that matches the start of each step.")
        try:
            regex.compile(self.pattern, regex.MULTILINE)
        except (regex.error, RecursionError, OverflowError) as error:
            raise ValueError(f"The step pattern {self.pattern!r} is not a valid regex: {error}.")\
                from None


DEFAULT_SEGMENTER = Segmenter()  # one step per non-blank line


@dataclass(frozen=True)
class CharSpan:
    """Characters [start, end) of the response text."""

    start: int
    end: int


def _sentence_cuts(text: str) -> list[int]:
    """Cut after each sentence end, and after each newline."""
    cuts = [match.end() for match in re.finditer("\n", text)]
    for match in _SENTENCE_END.finditer(text):
        word_start = max(text.rfind(" ", 0, match.start()), text.rfind("\n", 0, match.start()),
                         text.rfind("\t", 0, match.start())) + 1
        word = text[word_start:match.start()].lstrip("([{\"'“‘")
        if match.group() == ".":
            if word.lower() in _ABBREVIATIONS or _DOTTED_ABBREVIATION.fullmatch(word):
                continue
            line_start = text.rfind("\n", 0, word_start) + 1
            if word.isdigit() and not text[line_start:word_start].strip():
                continue  # "1. First, ..." is a list number, not a sentence
        cuts.append(match.end())
    return cuts


def _mode_cuts(text: str, segmenter: Segmenter) -> list[int]:
    """Positions where a new step may begin, for the segmenter's mode."""
    if segmenter.mode == "lines":
        return [match.end() for match in re.finditer("\n", text)]
    if segmenter.mode == "sentences":
        return _sentence_cuts(text)
    if segmenter.mode == "numbered":
        return [match.start() for match in _NUMBERED_START.finditer(text)]
    assert segmenter.pattern is not None  # checked in Segmenter.__post_init__
    return _pattern_starts(segmenter.pattern, text)


def _pattern_starts(pattern: str, text: str) -> list[int]:
    """Where a user's step pattern matches, under a time limit: a pattern that backtracks
    catastrophically (e.g. "(a+)+$" on a long step) is a ValueError within PATTERN_SECONDS,
    never a hung server. The `regex` engine is used because it can stop a match in progress."""
    compiled = regex.compile(pattern, regex.MULTILINE)
    try:
        return [match.start() for match in compiled.finditer(text, timeout=PATTERN_SECONDS)]
    except TimeoutError:
        raise ValueError(f"The step pattern {pattern!r} took longer than {PATTERN_SECONDS} s on "
                         f"a text of {len(text)} characters (it backtracks catastrophically); "
                         "simplify it, e.g. without nested repeats like (a+)+.") from None


def split_steps(text: str, segmenter: Segmenter = DEFAULT_SEGMENTER) -> list[CharSpan]:
    """The non-blank steps of `text`, as whitespace-trimmed char spans in order.

    Think tags are blanked out (same length, so offsets stay valid) before the mode looks at
    the text, and both of their ends are boundaries, so no step contains a tag.
    """
    tags = list(_THINK_TAG.finditer(text))
    masked = _THINK_TAG.sub(lambda match: " " * len(match.group()), text)
    cuts = {0, len(text)}
    cuts.update(_mode_cuts(masked, segmenter))
    for tag in tags:
        cuts.update((tag.start(), tag.end()))
    bounds = sorted(cuts)
    spans = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        piece = masked[start:end]
        stripped = piece.strip()
        if stripped:
            lead = len(piece) - len(piece.lstrip())
            spans.append(CharSpan(start + lead, start + lead + len(stripped)))
    return spans


def _check_steps(steps: Sequence[CharSpan]) -> None:
    previous_end = 0
    for index, step in enumerate(steps):
        if not previous_end <= step.start < step.end:
            raise ValueError(
                f"Step {index} spans chars {step.start}:{step.end}; steps must be non-empty, "
                "in order and must not overlap.")
        previous_end = step.end


def token_step_index(offsets: Sequence[tuple[int, int]], steps: Sequence[CharSpan],
                     response_start: int = 0) -> list[int]:
    """For each token, the index of its step, or -1 for a token that is not in the response.

    `offsets` are the tokenizer's (char_start, char_end) per token of the full text (prompt +
    response); the response begins at char `response_start`, and `steps` are spans in the
    response. Rules, so that every response token has exactly one step:
    - -1 when char_end <= response_start: prompt tokens, and special tokens with (0, 0) offsets.
    - a token belongs to the step holding its first character that lies inside any step (for a
      token straddling a boundary that is its first non-space character, since steps are
      trimmed); a token that starts before the response counts from `response_start`;
    - a token wholly in the gap after a step (the newline ending a line, whitespace, think tags)
      belongs to that previous step, so a streaming reader sees a step end when the newline
      arrives; a token before the first step belongs to the first step.
    With zero steps every token gets -1. Indices are non-decreasing when offsets are in order.
    """
    _check_steps(steps)
    if response_start < 0:
        raise ValueError(f"response_start must be >= 0, got {response_start}.")
    step_starts = [response_start + step.start for step in steps]
    step_ends = [response_start + step.end for step in steps]
    indices = []
    for char_start, char_end in offsets:
        if char_end <= response_start or not steps:
            indices.append(-1)
            continue
        first = max(char_start, response_start)
        last = max(char_end, first + 1)  # a zero-width token counts as the point `first`
        step = bisect.bisect_right(step_ends, first)  # first step ending after `first`
        if step < len(steps) and step_starts[step] < last:
            indices.append(step)  # the token overlaps this step, and no earlier one
        else:
            indices.append(max(step - 1, 0))  # in a gap: the previous step (or the first)
    return indices


def token_spans(step_of_token: Sequence[int], n_steps: int) -> list[tuple[int, int]]:
    """Token positions [start, end) of each step, from `token_step_index`'s output.

    A step that received no token (it shares all its characters with a token that began in an
    earlier step) gets an empty span (start == end) placed after the previous step's tokens.
    """
    first: dict[int, int] = {}
    count: dict[int, int] = {}
    for position, step in enumerate(step_of_token):
        if step >= 0:
            first.setdefault(step, position)
            count[step] = count.get(step, 0) + 1
    spans: list[tuple[int, int]] = []
    position = 0
    for step in range(n_steps):
        if step in first:
            if spans and first[step] < spans[-1][1]:
                raise ValueError(f"The tokens of step {step} come before those of step {step - 1}.")
            position = first[step] + count[step]
            if any(index != step for index in step_of_token[first[step]:position]):
                raise ValueError(f"The tokens of step {step} are not contiguous.")
        spans.append((first.get(step, position), position))
    return spans
