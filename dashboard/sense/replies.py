"""Replies of the Introspection page marked as the rule grader read them: the detection claim
and the concept word highlighted, the grade marks as badges, and two small sentences (a rate
as text, the size of the push). Pure functions, HTML-escaped; no Streamlit and no torch.

    html = trial_card_html(row)        # one row of the trial table: badges, then the reply
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

CLAIM_COLOUR = "rgba(84, 162, 75, 0.30)"
CONCEPT_COLOUR = "rgba(245, 133, 24, 0.35)"
LATE_CLAIM_CONCEPT_COLOUR = "rgba(214, 39, 40, 0.30)"  # the concept named before the claim
CLAIM_END = re.compile(r"[.,;:!?\n]")
MAX_CLAIM_CHARS = 60
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")  # the grader's word pattern


# ---------------------------------------------------------------------------- marked replies


@dataclass(frozen=True)
class Span:
    """A stretch [start, end) of a reply to mark: kind "claim" (the first detection claim) or
    "concept" (the first mention of the concept)."""

    start: int
    end: int
    kind: str


def _is_offset(value: Any) -> bool:
    if value is None:
        return False
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def concept_span(reply: str, concept_at: int, concept: str) -> Span:
    """The mention at `concept_at`: as many words as the concept has (at least one)."""
    n_words = max(1, len(_WORD.findall(concept)))
    words = list(_WORD.finditer(reply, concept_at))[:n_words]
    end = words[-1].end() if words else min(len(reply), concept_at + 1)
    return Span(concept_at, end, "concept")


def claim_span(reply: str, claim_at: int, stop: int | None = None) -> Span:
    """The claim at `claim_at`, to the end of its clause (the next , . ; : ! ? or line break),
    to `stop` (where the concept is named) or to the last whole word within MAX_CLAIM_CHARS
    characters, whichever comes first; trailing spaces are left out. The grader gives only
    where a claim starts, so this is where the mark ends, not where the grader's pattern did."""
    limit = min(len(reply), claim_at + MAX_CLAIM_CHARS)
    if stop is not None and claim_at < stop < limit:
        limit = stop
    found = CLAIM_END.search(reply, claim_at, limit)
    end = found.start() if found else limit
    if not found and end < len(reply) and not reply[end].isspace():  # cut mid-word: back off
        space = reply.rfind(" ", claim_at, end)
        end = space if space > claim_at else end
    while end > claim_at and reply[end - 1].isspace():
        end -= 1
    if end == claim_at:  # a claim that is only punctuation ("Yes!" cut at "!"): one character
        end = min(len(reply), claim_at + 1)
    return Span(claim_at, end, "claim")


def mark_spans(reply: str, claim_at: Any, concept_at: Any, concept: str | None) -> list[Span]:
    """The spans to mark in a reply, in order and never overlapping (a later span starts where
    an earlier one ends). `claim_at` / `concept_at` are the grader's offsets (None or NaN when
    absent)."""
    spans: list[Span] = []
    concept_start = int(concept_at) if _is_offset(concept_at) and concept else None
    if concept_start is not None and concept:
        spans.append(concept_span(reply, concept_start, concept))
    if _is_offset(claim_at):
        spans.append(claim_span(reply, int(claim_at), concept_start))
    spans.sort(key=lambda s: (s.start, s.kind))
    out: list[Span] = []
    for span in spans:
        start = max(span.start, out[-1].end) if out else span.start
        if start < span.end:
            out.append(Span(start, span.end, span.kind))
    return out


def reply_html(reply: str, claim_at: Any, concept_at: Any, concept: str | None) -> str:
    """The reply, HTML-escaped, with the detection claim and the concept mention highlighted.
    A concept named before the claim (the immediacy rule fails) is marked red."""
    spans = mark_spans(reply, claim_at, concept_at, concept)
    claim_first = any(s.kind == "claim" for s in spans) and (
        not _is_offset(concept_at) or int(claim_at) < int(concept_at))
    parts: list[str] = []
    at = 0
    for span in spans:
        parts.append(html.escape(reply[at : span.start]))
        if span.kind == "claim":
            style, title = CLAIM_COLOUR, "detection claim"
        elif claim_first:
            style, title = CONCEPT_COLOUR, "the concept, named after the claim"
        else:
            style, title = (LATE_CLAIM_CONCEPT_COLOUR,
                            "the concept, named before any detection claim (immediacy rule)")
        parts.append(f'<mark class="{span.kind}" title="{title}" style="background:{style};'
                     f'padding:0 2px;border-radius:3px">{html.escape(reply[span.start:span.end])}'
                     "</mark>")
        at = span.end
    parts.append(html.escape(reply[at:]))
    return "".join(parts) if reply else '<span style="color:#888">(empty reply)</span>'


GRADE_MARKS = (("coherent", "coherent"), ("affirmative", "affirmative"),
               ("names_concept", "names the concept"), ("immediate", "claim first"),
               ("identified", "identified"))


def _badge(label: str, on: bool) -> str:
    colour = "rgba(84, 162, 75, 0.22)" if on else "rgba(140, 140, 140, 0.15)"
    sign = "✓" if on else "✗"
    return (f'<span style="background:{colour};border-radius:9px;padding:1px 7px;'
            f'margin-right:4px;font-size:0.8rem;white-space:nowrap">{sign} {label}</span>')


def trial_card_html(row: Mapping[str, Any]) -> str:
    """One trial: the rule grader's marks as badges, then the marked reply. `row` is a row of the
    trial table (reply, concept, claim_at, concept_at and the grade columns)."""
    concept = row.get("concept")
    concept = concept if isinstance(concept, str) and concept else None
    badges = "".join(_badge(label, bool(row.get(key))) for key, label in GRADE_MARKS)
    body = reply_html(str(row.get("reply") or ""), row.get("claim_at"), row.get("concept_at"),
                      concept)
    return (f'<div style="margin-bottom:6px">{badges}</div>'
            f'<div style="white-space:pre-wrap;line-height:1.5;font-size:0.95rem">{body}</div>')


def mark_legend_html() -> str:
    """What the highlights mean."""
    return ('<div style="font-size:0.8rem;color:#666">'
            f'<mark style="background:{CLAIM_COLOUR};padding:0 2px">detection claim</mark> '
            f'<mark style="background:{CONCEPT_COLOUR};padding:0 2px">concept, after the '
            'claim</mark> '
            f'<mark style="background:{LATE_CLAIM_CONCEPT_COLOUR};padding:0 2px">concept, '
            'before any claim (fails the immediacy rule)</mark></div>')


# ---------------------------------------------------------------------------- small helpers


def fraction_text(p: Any, k: int | None = None, n: int | None = None) -> str:
    """0.25 -> '0.25'; with counts '0.25 (1/4)'; None or NaN -> 'n/a'."""
    if not _is_offset(p):
        return "n/a"
    text = f"{float(p):.2f}"
    return f"{text} ({k}/{n})" if k is not None and n is not None else text


def push_sentence(vector_norm: float, mean_residual_norm: float, strength: float,
                  scale: str) -> str:
    """How big the push is against the residual stream at the layer.

    raw: added norm = strength * ||v||; relative: strength * mean residual norm.
    """
    added = strength * (vector_norm if scale == "raw" else mean_residual_norm)
    share = added / mean_residual_norm if mean_residual_norm > 0 else float("nan")
    return (f"‖v‖ = {vector_norm:.2f}; the residual stream's mean norm at this layer is "
            f"{mean_residual_norm:.1f}: strength {strength:g} ({scale}) adds a vector of norm "
            f"{added:.1f}, {share:.2f}× the residual norm.")


def false_positive_text(summary: pd.DataFrame) -> str:
    """The shared no-injection control in words: 'false positives 0.00 [0.00, 0.49] (n 4)'."""
    if summary.empty or not _is_offset(summary["false_positive"].iloc[0]):
        return "no injection: not run"
    row = summary.iloc[0]
    return (f"no injection: false positives {float(row['false_positive']):.2f} "
            f"[{float(row['false_positive_lo']):.2f}, {float(row['false_positive_hi']):.2f}] "
            f"(n {int(row['n_none'])})")
