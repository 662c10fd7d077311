"""Replies of the Introspection page marked as the rule grader read them: the detection claim
and the concept word highlighted, the grade marks as badges, and small sentences (a rate as
text, the size of the push in effective magnitude and residual norms, the strength slider's
help). Pure functions, HTML-escaped; no Streamlit and no torch.

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


# the marks, in order; "detected" (coherent and affirmative) is what the detection and
# false-positive rates count, so a "yes" that is not counted says so on its card
GRADE_MARKS = (("coherent", "coherent"), ("affirmative", "affirmative"),
               ("detected", "counted as detection"), ("names_concept", "names the concept"),
               ("immediate", "claim first"), ("identified", "identified"))


def _badge(label: str, on: bool) -> str:
    colour = "rgba(84, 162, 75, 0.22)" if on else "rgba(140, 140, 140, 0.15)"
    sign = "✓" if on else "✗"
    return (f'<span style="background:{colour};border-radius:9px;padding:1px 7px;'
            f'font-size:0.8rem;white-space:nowrap">{sign} {label}</span>')


YES_NO_MARKS = (("coherent", "coherent"), ("answer_yes", "says yes"))
YES_NO_ARMS = ("yes_no", "yes_no_none")


def trial_card_html(row: Mapping[str, Any]) -> str:
    """One trial: the rule grader's marks as badges, then the marked reply. `row` is a row of the
    trial table (reply, concept, claim_at, concept_at and the grade columns). A reply to an
    unrelated yes/no question shows the question and whether it says yes (no claim to mark)."""
    concept = row.get("concept")
    concept = concept if isinstance(concept, str) and concept else None
    if row.get("condition") in YES_NO_ARMS:
        badges = "".join(_badge(label, row.get(key) is True) for key, label in YES_NO_MARKS)
        question = html.escape(str(row.get("question") or ""))
        body = (f'<span style="color:#666">{question}</span>\n'
                + (html.escape(str(row.get("reply") or "")) or "(empty reply)"))
    else:
        badges = "".join(_badge(label, bool(row.get(key))) for key, label in GRADE_MARKS)
        body = reply_html(str(row.get("reply") or ""), row.get("claim_at"),
                          row.get("concept_at"), concept)
    # the badges wrap onto a second line in a narrow card instead of running over its edge
    return (f'<div style="display:flex;flex-wrap:wrap;gap:4px;margin-bottom:6px">{badges}</div>'
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


def magnitude(strength: float, scale: str, vector_norm: float | None,
              mean_residual_norm: float | None) -> tuple[float | None, float | None]:
    """(effective magnitude, its ratio to the layer's mean residual norm) of a push: raw adds
    strength x v, so |strength| x ||v||; relative adds strength x the mean norm along v. None
    where a norm it needs is not known."""
    base = vector_norm if scale == "raw" else mean_residual_norm
    added = None if base is None else abs(strength) * base
    if scale == "relative":
        return added, abs(strength)
    if added is None or not mean_residual_norm:
        return added, None
    return added, added / mean_residual_norm


def push_sentence(vector_norm: float, mean_residual_norm: float, strength: float,
                  scale: str) -> str:
    """How big the push is against the residual stream at the layer (the trial's header)."""
    added, ratio = magnitude(strength, scale, vector_norm, mean_residual_norm)
    formula = "strength × ‖v‖" if scale == "raw" else "strength × the mean residual norm"
    return (f"‖v‖ = {vector_norm:.2f}; the residual stream's mean norm at this layer is "
            f"{mean_residual_norm:.1f}: strength {strength:g} ({scale}) is an effective "
            f"magnitude of {added or 0:.1f} ({formula}), {ratio or 0:.2f}× the mean residual "
            "norm.")


def strength_help(strength: float, scale: str, layer: int, vector_norm: float | None,
                  mean_residual_norm: float | None) -> str:
    """The strength slider's help: what the current strength adds at `layer`, in effective
    magnitude and as a multiple of the layer's mean residual norm (as far as the norms are
    known: ||v|| once the concept has been built)."""
    added, ratio = magnitude(strength, scale, vector_norm, mean_residual_norm)
    rule = ("raw: adds strength × v, an effective magnitude of strength × ‖v‖ (the paper's "
            "sweep: 1, 2, 4, 8; ‖v‖ grows with depth)" if scale == "raw" else
            "relative: adds strength × the layer's mean residual norm along v, so the strength "
            "is the ratio to the residual norm")
    known = [f"layer {layer}"]
    if vector_norm is not None:
        known.append(f"‖v‖ = {vector_norm:.2f}")
    if mean_residual_norm is not None:
        known.append(f"mean residual norm = {mean_residual_norm:.1f}")
    now = f"strength {strength:g}: effective magnitude "
    now += f"{added:.1f}" if added is not None else "(‖v‖ is measured when the concept is built)"
    if ratio is not None:
        now += f", {ratio:.2f}× the mean residual norm"
    return f"{rule}.\n\nAt {', '.join(known)}: {now}."


def false_positive_text(summary: pd.DataFrame | Mapping[str, Any]) -> str:
    """The shared no-injection control in words: 'false positives 0.00 [0.00, 0.04] (n 100)';
    `summary` is a sweep summary (its first row) or one setting's summary."""
    if isinstance(summary, pd.DataFrame):
        if summary.empty:
            return "no injection: not run"
        summary = {str(k): v for k, v in summary.iloc[0].items()}
    row = summary
    if not _is_offset(row.get("false_positive")) or not row.get("n_none"):
        return "no injection: not run"
    return (f"no injection: false positives {float(row['false_positive']):.2f} "
            f"[{float(row['false_positive_lo']):.2f}, {float(row['false_positive_hi']):.2f}] "
            f"(n {int(row['n_none'])})")
