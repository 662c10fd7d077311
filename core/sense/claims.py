"""Read a reply as a person would: find the claim it opens with, and whether that claim is
affirmed, denied or only raised.

A reply is cut into sentences (at ". ! ?" before a space or the end, and at line breaks), and a
sentence into clauses (at ", ; : ( )" and before "but"/"however"). Then:

- echoes are dropped: a sentence that is a question (ends with "?"), is quoted, or talks about the
  question ("you are asking", "your question") repeats the prompt, it claims nothing;
- fillers are skipped: a sentence of at most FILLER_WORDS words with no cue ("Hmm.", "Okay.");
- the claim is taken from the first remaining sentence only (the paper's immediacy rule: the
  answer comes first; a "yes" trailing in the fourth sentence of a ramble is not an answer);
- in that sentence the first clause holding a cue decides (a weak cue, a courtesy "sorry",
  yields to a later clause's cue); a cue is a regular expression with a polarity (+1 / -1), and
  for a negatable cue the words before it in its clause can turn it:
  "if", "whether", "not sure" make it no claim (a hypothetical), "no", "not", "n't", "never"
  flip it ("I don't detect" is a denial, "it wasn't an accident" owns the word).

Everything here is pure string work; the cue lists live with the graders
(`core.sense.introspection_grading`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

FILLER_WORDS = 3

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+|\n+")
_CLAUSE_BREAK = re.compile(r"[,;:()\u2014]|\s(?=(?:but|however)\b)", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_QUOTES = "\"'“‘«"
ECHO_PATTERNS = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"\byou(?:'re|\s+are|\s+were)?\s+(?:just\s+)?ask(?:ed|ing|s)?\b",
    r"\byour\s+question\b",
    r"\bthe\s+question\b",
    r"\b(?:asking|asked)\s+(?:me\s+)?(?:about|whether|if)\b",
    r"\bdo\s+you\s+detect\b",
    r"\bdid\s+you\s+mean\b",
))
NEGATORS = re.compile(r"\b(?:no|not|never|nothing|none|neither|nor|cannot|unable|without)\b|"
                      r"n't\b|n’t\b", re.IGNORECASE)
HEDGES = re.compile(r"\b(?:if|whether|unsure|uncertain|unclear|perhaps\s+not)\b|"
                    r"\bnot\s+(?:sure|certain)\b|\b(?:don'?t|do\s+not)\s+know\b", re.IGNORECASE)


@dataclass(frozen=True)
class Span:
    """A piece of the reply: text[start:end]."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Cue:
    """A pattern that makes a claim of `polarity` (+1 or -1). A negatable cue is flipped by a
    negator and voided by a hedge before it in its clause; `opening` cues count only as the first
    word of their sentence (after interjections such as "well" or "oh"); a cue with `subject`
    claims nothing unless that pattern occurs before it in its clause ("I detect" claims, "you
    detect" does not); a `weak` cue (a courtesy such as "sorry") yields to a cue in a later
    clause of its sentence ("Sorry, but I meant it" owns the word)."""

    pattern: re.Pattern[str]
    polarity: int
    negatable: bool = True
    opening: bool = False
    subject: re.Pattern[str] | None = None
    weak: bool = False


def cue(pattern: str, polarity: int, negatable: bool = True, opening: bool = False,
        subject: str | None = None, weak: bool = False) -> Cue:
    """A case-insensitive `Cue`."""
    return Cue(re.compile(pattern, re.IGNORECASE), polarity, negatable, opening,
               None if subject is None else re.compile(subject, re.IGNORECASE), weak)


@dataclass(frozen=True)
class Claim:
    """The claim a reply opens with: polarity +1 (affirmed), -1 (denied) or 0 (raised but hedged),
    at character `offset` of the reply, read in `sentence`; `reason` says which cue and what
    turned it, for the audit."""

    polarity: int
    offset: int
    sentence: str
    reason: str


def sentences(text: str) -> list[Span]:
    """The reply's sentences with their offsets (empty pieces dropped)."""
    out: list[Span] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        _add(out, text, start, match.start())
        start = match.end()
    _add(out, text, start, len(text))
    return out


def _add(out: list[Span], text: str, start: int, end: int) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if stripped:
        lead = len(piece) - len(piece.lstrip())
        out.append(Span(start + lead, start + lead + len(stripped), stripped))


def clauses(sentence: Span) -> list[Span]:
    """A sentence's clauses, offsets in the reply."""
    out: list[Span] = []
    start = 0
    for match in _CLAUSE_BREAK.finditer(sentence.text):
        _add(out, sentence.text, start, match.start())
        start = match.end()
    _add(out, sentence.text, start, len(sentence.text))
    return [Span(sentence.start + c.start, sentence.start + c.end, c.text) for c in out]


def is_echo(sentence: str) -> bool:
    """A sentence that repeats or talks about the question rather than answering it."""
    text = sentence.strip()
    if text.endswith("?") or (text[:1] in _QUOTES and text.rstrip(".!")[-1:] in "\"'”’»"):
        return True
    return any(p.search(text) for p in ECHO_PATTERNS)


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


# words that may come before an opening "yes" or "no" ("Trial" as in a "Trial 1:" label)
_INTERJECTIONS = {"well", "oh", "ah", "hmm", "um", "uh", "okay", "ok", "so", "actually",
                  "honestly", "sure", "alright", "great", "hi", "hello", "sorry", "trial"}


def _opening_offset(clause: Span, sentence: Span) -> int | None:
    """Offset (in the clause) of the sentence's first word that is not an interjection, when the
    clause holds it; None when the clause comes after it."""
    words = list(_WORD.finditer(sentence.text))
    for word in words:
        if word.group().lower() not in _INTERJECTIONS:
            at = sentence.start + word.start()
            return at - clause.start if clause.start <= at < clause.end else None
    return None


def _cue_hits(clause: Span, sentence: Span, cues: Sequence[Cue]) -> list[tuple[int, Cue]]:
    hits: list[tuple[int, Cue]] = []
    opening = _opening_offset(clause, sentence)
    for item in cues:
        for match in item.pattern.finditer(clause.text):
            if item.opening and match.start() != opening:
                continue
            hits.append((match.start(), item))
            break
    return sorted(hits, key=lambda h: (h[0], h[1].polarity))  # a denial wins a tie


def _turned(clause: Span, sentence: Span, at: int, item: Cue) -> Claim:
    """The claim of `item` found at `at` in the clause, turned by what precedes it there."""
    before = clause.text[:at]
    matched = item.pattern.search(clause.text[at:])
    reason = repr(matched.group() if matched else clause.text[at:])
    if item.subject is not None and not item.subject.search(before):
        return Claim(0, clause.start + at, sentence.text, f"{reason} without its subject")
    hedge = HEDGES.search(before) if item.negatable else None
    if hedge:
        return Claim(0, clause.start + at, sentence.text, f"{reason} hedged by {hedge.group()!r}")
    negator = NEGATORS.search(before) if item.negatable else None
    if negator:
        return Claim(-item.polarity, clause.start + at, sentence.text,
                     f"{reason} negated by {negator.group()!r}")
    return Claim(item.polarity, clause.start + at, sentence.text, reason)


def has_cue(text: str, cues: Sequence[Cue]) -> bool:
    """Whether any cue (ignoring the opening rule) occurs in `text`."""
    return any(item.pattern.search(text) for item in cues)


def opening_claim(reply: str, cues: Sequence[Cue]) -> Claim | None:
    """The claim of the reply's first sentence that is neither an echo of the question nor a
    filler; None when that sentence makes no claim (or every sentence is an echo or filler)."""
    for sentence in sentences(reply):
        if is_echo(sentence.text):
            continue
        if len(_words(sentence.text)) <= FILLER_WORDS and not has_cue(sentence.text, cues):
            continue
        weak: Claim | None = None
        for clause in clauses(sentence):
            hits = _cue_hits(clause, sentence, cues)
            if not hits:
                continue
            claim = _turned(clause, sentence, *hits[0])
            if not hits[0][1].weak:
                return claim
            weak = weak or claim
        return weak
    return None


def is_echo_at(reply: str, offset: int) -> bool:
    """Whether the character at `offset` lies in a sentence that echoes the question."""
    return any(s.start <= offset < s.end and is_echo(s.text) for s in sentences(reply))
