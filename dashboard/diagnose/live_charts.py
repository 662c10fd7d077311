"""Pure functions for the Live page: scored steps in, a table, an HTML transcript or a plotly
figure out. No Streamlit here, and no torch: the records are read by attribute, so any object
with the fields of `core.diagnose.monitor.StepRecord` will do (index, text, n_tokens, step_score,
prefix_score, alarm, kept, attempt).

    fig = live_figure(kept, discarded, threshold=0.42)   # c_step bars, c_prefix line, alarms
    html = transcript_html(text, kept, discarded)          # struck-through discarded attempts
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, Protocol

import pandas as pd
import plotly.graph_objects as go
from pandas.io.formats.style import Styler

from dashboard.diagnose.trace_charts import hover_text

STEP_COLOUR = "#4C78A8"  # c_step bars
PREFIX_COLOUR = "#F58518"  # c_prefix line
ALARM_COLOUR = "#D62728"
DISCARDED_COLOUR = "#8C8C8C"
MIN_STEPS_SHOWN = 6  # the x axis spans at least this many steps, so early bars are not huge
BAR_WIDTH = 0.6
DISCARD_SPREAD = 0.12  # x offset between a step's discarded attempts, in steps

STEP_COLUMNS = ("step", "attempt", "status", "c_step", "c_prefix", "alarm", "tokens", "text")
KEPT = "kept"
DISCARDED = "discarded"


class StepLike(Protocol):
    """The fields of `core.diagnose.monitor.StepRecord` these functions read (read-only)."""

    @property
    def index(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def n_tokens(self) -> int: ...
    @property
    def step_score(self) -> float | None: ...
    @property
    def prefix_score(self) -> float: ...
    @property
    def alarm(self) -> bool: ...
    @property
    def kept(self) -> bool: ...
    @property
    def attempt(self) -> int: ...


def step_rows(kept: Sequence[StepLike], discarded: Sequence[StepLike]) -> pd.DataFrame:
    """One row per scored step, kept and discarded, ordered by step then attempt, so each
    discarded attempt sits beside the kept step it tried to be.

    Columns: step, attempt, status ("kept" / "discarded"), c_step (None without a step probe),
    c_prefix, alarm, tokens, text.
    """
    records = sorted([*kept, *discarded], key=lambda r: (r.index, r.attempt, not r.kept))
    return pd.DataFrame(
        [{"step": r.index, "attempt": r.attempt, "status": KEPT if r.kept else DISCARDED,
          "c_step": r.step_score, "c_prefix": r.prefix_score, "alarm": bool(r.alarm),
          "tokens": r.n_tokens, "text": r.text} for r in records],
        columns=list(STEP_COLUMNS))


def _row_style(row: pd.Series) -> list[str]:
    styles = []
    if row["status"] == DISCARDED:
        styles.append(f"text-decoration: line-through; color: {DISCARDED_COLOUR}")
    if row["alarm"]:
        styles.append("background-color: rgba(214, 39, 40, 0.15)")
    return ["; ".join(styles)] * len(row)


def strike(text: object) -> str:
    """Text struck through with the combining long stroke (U+0336) after each character, for
    renderers that drop CSS text-decoration (Streamlit's st.table keeps only colours)."""
    return "".join(char + "\u0336" for char in str(text))


def style_step_rows(rows: pd.DataFrame) -> Styler:
    """`step_rows` styled: discarded attempts struck through in grey, alarming rows tinted red,
    scores with three decimals ("-" where there is no step probe)."""
    styled = (rows.style.apply(_row_style, axis=1)
              .format({"c_step": "{:.3f}", "c_prefix": "{:.3f}"}, na_rep="-"))
    discarded = rows.index[rows["status"] == DISCARDED]
    if len(discarded):
        styled = styled.format(strike, subset=pd.IndexSlice[discarded, ["text"]])
    return styled


def _score_badge(record: StepLike) -> str:
    step = "-" if record.step_score is None else f"{record.step_score:.3f}"
    alarm = " · ⚠ alarm" if record.alarm else ""
    return f"c_step {step} · c_prefix {record.prefix_score:.3f}{alarm}"


def _escaped(text: str) -> str:
    """Model text for HTML: escaped, and characters Streamlit's markdown would read kept literal."""
    return html.escape(text).replace("$", "&#36;").replace("\n", "<br>")


def open_tail(text: str, kept: Sequence[StepLike]) -> str:
    """The part of `text` after the last kept step: the step being written now (plus any
    whitespace). Kept steps are found in order, each after the one before."""
    cursor = 0
    for record in sorted(kept, key=lambda r: r.index):
        found = text.find(record.text, cursor)
        if found < 0:
            return text[cursor:]  # the text was cut back (a rewind) and not yet re-reported
        cursor = found + len(record.text)
    return text[cursor:]


def transcript_html(text: str, kept: Sequence[StepLike], discarded: Sequence[StepLike],
                    writing: bool = False, last_blocks: int | None = None) -> str:
    """The response as HTML, one block per step: each step's discarded attempts struck through
    in grey with their scores, then the kept step with its scores (tinted red where the alarm
    fired), then the text of the step still being written (with a cursor when `writing`).
    With `last_blocks`, only the newest blocks are kept (the live edge stays in view in a
    fixed-height box) under a note of how many are hidden. Every piece of model text is
    escaped."""
    parts: list[str] = []
    by_step: dict[int, list[StepLike]] = {}
    for record in sorted(discarded, key=lambda r: (r.index, r.attempt)):
        by_step.setdefault(record.index, []).append(record)
    ordered = sorted(kept, key=lambda r: r.index)
    for record in ordered:
        parts.extend(_discarded_block(d) for d in by_step.pop(record.index, []))
        colour = "rgba(214, 39, 40, 0.14)" if record.alarm else "rgba(76, 120, 168, 0.07)"
        edge = ALARM_COLOUR if record.alarm else STEP_COLOUR
        parts.append(
            f'<div style="background:{colour};border-left:3px solid {edge};'
            f'padding:2px 8px;margin:2px 0">'
            f'<span style="font-size:0.75em;color:#555">step {record.index} · '
            f"{_score_badge(record)}</span><br>{_escaped(record.text)}</div>")
    for pending in sorted(by_step):  # attempts of the step being retried now
        parts.extend(_discarded_block(d) for d in by_step[pending])
    tail = open_tail(text, ordered).strip()
    if tail or writing:
        cursor = '<span style="color:#999">▌</span>' if writing else ""
        parts.append(f'<div style="padding:2px 8px;margin:2px 0;color:#333">'
                     f"{_escaped(tail)}{cursor}</div>")
    if not parts:
        return '<div style="color:#999">(no text)</div>'
    if last_blocks is not None and len(parts) > last_blocks:
        hidden = len(parts) - last_blocks
        parts = [f'<div style="color:#999;font-size:0.8em">... {hidden} earlier block(s) '
                 "above, shown in full at the end</div>", *parts[-last_blocks:]]
    return ('<div style="font-family:monospace;font-size:0.9em;line-height:1.45">'
            + "".join(parts) + "</div>")


def _discarded_block(record: StepLike) -> str:
    return (f'<div style="padding:2px 8px;margin:2px 0;color:{DISCARDED_COLOUR}">'
            f'<span style="font-size:0.75em">step {record.index}, attempt {record.attempt} '
            f"discarded · {_score_badge(record)}</span><br>"
            f"<s>{_escaped(record.text)}</s></div>")


def _hover(record: StepLike, status: str) -> str:
    return (f"step {record.index} ({status}, attempt {record.attempt})<br>"
            f"{_score_badge(record)}<br><br>{hover_text(record.text)}")


def live_figure(kept: Sequence[StepLike], discarded: Sequence[StepLike],
                threshold: float | None, title: str = "Probe scores per step") -> go.Figure:
    """c_step of each kept step as bars, c_prefix as a line over the kept steps, the alarm
    threshold on c_step as a dashed line (none for the prefix-rise trigger), a red marker where
    the alarm fired (on the score that fired it), and each discarded attempt's
    c_prefix as a grey open marker beside its step. Axes are fixed (0-1, at least
    `MIN_STEPS_SHOWN` steps), so the figure grows in place as steps arrive."""
    ordered = sorted(kept, key=lambda r: r.index)
    fig = go.Figure()
    scored = [r for r in ordered if r.step_score is not None]
    if scored:
        fig.add_trace(go.Bar(
            x=[r.index for r in scored], y=[r.step_score for r in scored],
            name="c_step (step probe)", width=BAR_WIDTH,
            marker={"color": STEP_COLOUR, "opacity": 0.75},
            customdata=[_hover(r, KEPT) for r in scored],
            hovertemplate="%{customdata}<extra></extra>"))
    if ordered:
        fig.add_trace(go.Scatter(
            x=[r.index for r in ordered], y=[r.prefix_score for r in ordered],
            name="c_prefix (prefix tracker)", mode="lines+markers",
            line={"color": PREFIX_COLOUR, "width": 3}, marker={"size": 8},
            customdata=[_hover(r, KEPT) for r in ordered],
            hovertemplate="%{customdata}<extra></extra>"))
    alarms = [r for r in ordered if r.alarm]
    if alarms:
        fig.add_trace(go.Scatter(
            x=[r.index for r in alarms],
            y=[r.prefix_score if threshold is None or r.step_score is None else r.step_score
               for r in alarms],
            name="alarm", mode="markers+text", text=["alarm"] * len(alarms),
            textposition="top center", textfont={"color": ALARM_COLOUR},
            marker={"symbol": "diamond", "size": 15, "color": ALARM_COLOUR,
                    "line": {"color": "white", "width": 1.5}},
            customdata=[_hover(r, KEPT) for r in alarms],
            hovertemplate="%{customdata}<extra></extra>"))
    if discarded:
        fig.add_trace(go.Scatter(
            x=[r.index + DISCARD_SPREAD * (r.attempt + 1) for r in discarded],
            y=[r.prefix_score for r in discarded],
            name="discarded attempt (c_prefix)", mode="markers",
            marker={"symbol": "x-thin-open", "size": 12, "color": DISCARDED_COLOUR,
                    "line": {"width": 2.5, "color": DISCARDED_COLOUR}},
            customdata=[_hover(r, DISCARDED) for r in discarded],
            hovertemplate="%{customdata}<extra></extra>"))
    if threshold is not None:
        fig.add_hline(y=threshold, line={"color": ALARM_COLOUR, "dash": "dash", "width": 1.5},
                      annotation_text=f"alarm threshold on c_step {threshold:.3f}",
                      annotation_position="top left", annotation_font_color=ALARM_COLOUR)
    last = max([r.index for r in [*ordered, *discarded]], default=0)
    fig.update_layout(
        title=title, hovermode="closest",
        xaxis={"title": "step", "tickmode": "linear", "dtick": 1,
               "range": [-0.6, max(last, MIN_STEPS_SHOWN - 1) + 0.6]},
        yaxis={"title": "probe score (1 = going wrong)", "range": [0, 1.08]},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0},
        margin={"t": 90, "l": 60, "r": 20, "b": 50}, height=420,
    )
    return fig


def alarm_rule(trigger: str, threshold: float | None, rise_margin: float) -> str:
    """The alarm rule in force, in words (markdown)."""
    if trigger == "prefix-rise" or threshold is None:
        return f"alarm when c_prefix rises by more than **{rise_margin:.2f}**"
    return f"alarm when c_step > **{threshold:.3f}**"


def summary_counts(result: Any) -> dict[str, int | bool]:
    """The end-of-run numbers of a `core.diagnose.monitor.MonitorResult`: kept steps, alarms
    among them, discarded attempts, tokens in the answer, tokens processed (retries included),
    and whether the alarm stopped generation."""
    return {
        "steps": len(result.steps),
        "alarms": sum(bool(s.alarm) for s in result.steps),
        "discarded": len(result.discarded),
        "tokens_generated": int(result.tokens_generated),
        "tokens_processed": int(result.tokens_processed),
        "stopped_by_alarm": bool(result.stopped_by_alarm),
    }
