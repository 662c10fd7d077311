"""Pure functions for the Traces page's probe view of one chain: tables and data in, a table, an
HTML string or a plotly figure out (the corpus view's are `corpus_charts`). No Streamlit and no
torch here, so every figure is checked in a plain test.

The per-step table these take (`STEP_COLUMNS`) has one row per scored step: trace_id, step,
text, step_score (NaN without a step probe), prefix_score, alarm, label, prefix_label (NaN or
None where unknown) and phase (see `core.diagnose.evaluation.step_phases`).

    fig = probe_chain_figure(steps, "p3-c0", threshold=0.41, step_threshold=0.5)
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.data.prefix_labels import recovered_steps
from dashboard.common.charts import hover_text
from dashboard.diagnose.trace_charts import (
    BACK_ON_TRACK,
    HALLUCINATED,
    LABEL_STYLE,
    RECOVERED_COLOUR,
    label_name,
)

STEP_COLUMNS = ("trace_id", "step", "text", "step_score", "prefix_score", "alarm", "label",
                "prefix_label", "phase")

# Phase names as `core.diagnose.evaluation` spells them (kept here so this module does not import
# torch; a test checks that the two agree), each with its shading and what it means.
# phase -> (shading behind the step, legend swatch, meaning)
PHASE_STYLE: dict[str, tuple[str, str, str]] = {
    "grounded": ("rgba(84, 162, 75, 0.10)", "rgba(84, 162, 75, 0.35)", "both scores low"),
    "spike": ("rgba(245, 133, 24, 0.28)", "rgba(245, 133, 24, 0.6)",
              "the step probe fires, the prefix score is low"),
    "deceptive stability": ("rgba(178, 121, 162, 0.28)", "rgba(178, 121, 162, 0.6)",
                            "the step looks fine, the prefix score is high"),
    "collapse": ("rgba(228, 87, 86, 0.28)", "rgba(228, 87, 86, 0.6)", "both scores high"),
}
NO_PHASE = ("rgba(0, 0, 0, 0)", "rgba(0, 0, 0, 0)", "")
STEP_COLOUR = "#4C78A8"
PREFIX_COLOUR = "#1F2A44"
FOCUS_COLOUR = "#F2B701"


def known_label(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


def _chain(steps: pd.DataFrame, trace_id: str) -> pd.DataFrame:
    missing = set(STEP_COLUMNS) - set(steps.columns)
    if missing:
        raise ValueError(f"The step table lacks the column(s) {', '.join(sorted(missing))}.")
    chain = steps[steps["trace_id"] == trace_id].sort_values("step")
    if chain.empty:
        raise ValueError(f"No scored step of chain '{trace_id}'.")
    return chain


def probe_chain_figure(steps: pd.DataFrame, trace_id: str, threshold: float,
                       step_threshold: float, focus_step: int | None = None,
                       outcome: str | None = None) -> go.Figure:
    """One chain as the probes see it: step scores as bars (the spikes), the prefix score as a
    line, the alarm threshold dashed (and the step threshold dotted), true step labels as
    markers above the plot (steps back on track, `core.data.prefix_labels.recovered_steps`,
    as green diamonds instead of the open circle of a sound step), and every step's phase
    shaded behind it. `outcome` (the chain's answer in words) goes under the title.

    Bars and line points carry customdata [trace_id, step, text] (so a click names the step)
    and hover the step text; `focus_step` (the inspected step) is outlined.
    """
    chain = _chain(steps, trace_id)
    x = chain["step"].astype(int).tolist()
    texts = [hover_text(t) for t in chain["text"]]
    fig = go.Figure()
    for step, phase in zip(x, chain["phase"], strict=True):
        shade = PHASE_STYLE.get(str(phase), NO_PHASE)[0]
        fig.add_vrect(x0=step - 0.5, x1=step + 0.5, fillcolor=shade, line_width=0,
                      layer="below")
    for phase in PHASE_STYLE:  # legend entries for the phases this chain shows
        if phase in set(chain["phase"]):
            fig.add_trace(go.Scatter(
                x=[None], y=[None], mode="markers", name=phase, legendgroup="phase",
                legendgrouptitle={"text": "phase (shading)"},
                marker={"symbol": "square", "size": 14, "color": PHASE_STYLE[phase][1]},
                hoverinfo="skip"))
    has_step = chain["step_score"].notna().any()
    if has_step:
        fig.add_trace(go.Bar(
            x=x, y=chain["step_score"].tolist(), name="step score", width=0.6,
            marker={"color": STEP_COLOUR},
            customdata=[[trace_id, s, t] for s, t in zip(x, texts, strict=True)],
            hovertemplate=("step %{x}<br>step score %{y:.3f}<br><br>%{customdata[2]}"
                           "<extra></extra>")))
    fig.add_trace(go.Scatter(
        x=x, y=chain["prefix_score"].tolist(), name="prefix score", mode="lines+markers",
        line={"color": PREFIX_COLOUR, "width": 2.5}, marker={"size": 6},
        customdata=[[trace_id, s, t] for s, t in zip(x, texts, strict=True)],
        hovertemplate=("step %{x}<br>prefix score %{y:.3f}<br><br>%{customdata[2]}"
                       "<extra></extra>")))
    fig.add_hline(y=threshold, line={"dash": "dash", "color": "#C0392B", "width": 2},
                  annotation_text=f"alarm threshold {threshold:.2f}",
                  annotation_position="top right", annotation_font_color="#C0392B")
    if has_step:
        fig.add_hline(y=step_threshold, line={"dash": "dot", "color": STEP_COLOUR, "width": 1},
                      annotation_text=f"step threshold {step_threshold:.2f}",
                      annotation_position="bottom right", annotation_font_color=STEP_COLOUR)
    if focus_step is not None and focus_step in x:
        row = chain[chain["step"] == focus_step].iloc[0]
        height = row["prefix_score"] if pd.isna(row["step_score"]) else row["step_score"]
        fig.add_shape(type="rect", x0=focus_step - 0.34, x1=focus_step + 0.34, y0=0,
                      y1=max(float(height), 0.02), line={"color": FOCUS_COLOUR, "width": 3},
                      name="focus")
    back = recovered_steps([known_label(v) for v in chain["prefix_label"]])
    labels = [BACK_ON_TRACK if b and label_name(v) != HALLUCINATED else label_name(v)
              for v, b in zip(chain["label"], back, strict=True)]
    for name, symbol, colour in ((HALLUCINATED, "x", LABEL_STYLE[HALLUCINATED][1]),
                                 ("correct", "circle-open", LABEL_STYLE["correct"][1]),
                                 (BACK_ON_TRACK, "diamond", RECOVERED_COLOUR)):
        marked = [s for s, lab in zip(x, labels, strict=True) if lab == name]
        if marked:
            fig.add_trace(go.Scatter(
                x=marked, y=[1.08] * len(marked), mode="markers",
                name=BACK_ON_TRACK if name == BACK_ON_TRACK else f"labelled {name}",
                hoverinfo="skip", legendgroup="labels",
                legendgrouptitle={"text": "true labels (top row)"},
                marker={"symbol": symbol, "size": 11, "color": colour,
                        "line": {"width": 2, "color": colour}}))
    title = f"Chain {trace_id}: step probe and prefix tracker"
    if outcome:
        title += f"<br><sup>{html.escape(outcome)}</sup>"
    fig.update_layout(
        title=title,
        xaxis={"title": "step", "tickmode": "linear", "dtick": 1,
               "range": [min(x) - 0.5, max(x) + 0.5]},
        yaxis={"title": "score (probability of hallucination)", "range": [0, 1.14]},
        hovermode="closest", clickmode="event+select", barmode="overlay",
        legend={"orientation": "v", "x": 1.01, "y": 1.0},
        margin={"t": 80 if outcome else 60, "l": 60, "r": 20, "b": 50}, height=430,
    )
    return fig


def flagged_steps(steps: pd.DataFrame, step_threshold: float, threshold: float) -> pd.DataFrame:
    """Every step the probes flag across the file, most suspicious first: step score above the
    step threshold, or (for a probe without a step probe) prefix score above the alarm
    threshold. Columns: trace_id, step, step_score, prefix_score, phase, label, text."""
    columns = ["trace_id", "step", "step_score", "prefix_score", "phase", "label", "text"]
    if steps.empty:
        return pd.DataFrame(columns=columns)
    has_step = steps["step_score"].notna()
    over = (has_step & (steps["step_score"] > step_threshold)) | (
        ~has_step & (steps["prefix_score"] > threshold))
    flagged = steps.loc[over, columns].copy()
    flagged["label"] = [label_name(v) for v in flagged["label"]]
    flagged = flagged.sort_values(["step_score", "prefix_score"], ascending=False,
                                  kind="stable", na_position="last")
    return flagged.reset_index(drop=True)


def neighbours(steps: pd.DataFrame, trace_id: str, step: int, width: int = 2) -> pd.DataFrame:
    """The step and up to `width` steps either side of it in its chain: step, step_score,
    prefix_score, phase, label, text."""
    chain = _chain(steps, trace_id)
    near = chain[(chain["step"] >= step - width) & (chain["step"] <= step + width)]
    out = near[["step", "step_score", "prefix_score", "phase", "label", "text"]].copy()
    out["label"] = [label_name(v) for v in out["label"]]
    return out.reset_index(drop=True)


def _heat(score: float) -> str:
    """White (0) to red (1) behind a token, dark text stays readable."""
    alpha = max(0.0, min(1.0, float(score))) * 0.85
    return f"rgba(228, 87, 86, {alpha:.3f})"


def token_heatmap_html(tokens: Sequence[Any], focus_step: int,
                       steps: Sequence[int] | None = None) -> str:
    """Response tokens coloured by the step probe's score on each (white 0 .. red 1), one line
    per step, the focus step outlined; hovering a token shows its score. Takes
    `core.diagnose.evaluation.TokenScore` records (step, text, score); only `steps` (default:
    all) are drawn. Token text is HTML-escaped."""
    shown = sorted({t.step for t in tokens}) if steps is None else list(steps)
    rows = []
    for step in shown:
        spans = []
        for token in (t for t in tokens if t.step == step):
            text = html.escape(token.text.replace("\n", " ").replace("\r", " "))
            spans.append(f'<span title="score {token.score:.3f}" style="background:'
                         f'{_heat(token.score)};border-radius:3px;padding:1px 0">{text}</span>')
        border = f"2px solid {FOCUS_COLOUR}" if step == focus_step else "1px solid #e6e6e6"
        rows.append(f'<div style="border:{border};border-radius:6px;padding:4px 8px;'
                    f'margin:3px 0;white-space:pre-wrap;font-family:monospace;'
                    f'font-size:0.9rem;line-height:1.7"><span style="color:#888">'
                    f"step {step}&nbsp;&nbsp;</span>{''.join(spans)}</div>")
    scale = ("".join(f'<span style="background:{_heat(v / 4)};padding:1px 6px">'
                     f"{v / 4:.2f}</span>" for v in range(5)))
    legend = (f'<div style="font-size:0.8rem;color:#666;margin-top:4px">token score: '
              f"{scale}</div>")
    return "<div>" + "".join(rows) + legend + "</div>"
