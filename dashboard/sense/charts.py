"""Pure figures for the Introspection page: tables in, a plotly figure out (the marked replies
are `sense.replies`). No Streamlit and no torch here, so every figure is checked in a plain
test.

The tables are the ones `core` returns: per-trial rows of `core.sense.introspection.run_trials` /
`run_sweep` (TRIAL_COLUMNS), per-condition rates (`TrialRun.rates()`), the sweep summary
(`sweep_summary`, one row per layer x strength x concept), the logit-lens table (layer, condition,
token, prob, rank) and the prefill summary (layer, condition, n, apology, apology_lo,
apology_hi).

    fig = logit_lens_figure(lens, layer=20)     # concept token rank and probability per layer
    fig = sweep_heatmaps(summary)               # net, identification, coherence: layer x strength
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.sense.replies import false_positive_text

# Conditions as `core.sense.introspection.CONDITIONS` spells them (kept here so this module does
# not import torch; a test checks that the two agree), each with its title and colour.
CONDITION_TITLES: dict[str, str] = {
    "injected": "concept injected",
    "none": "no injection",
    "random": "random vector (same norm)",
    "negated": "negated vector (−v)",
}
CONDITION_SHORT: dict[str, str] = {
    "injected": "concept", "none": "no injection", "random": "random", "negated": "negated"}
CONDITION_COLOURS: dict[str, str] = {
    "injected": "#C0392B",
    "none": "#4C78A8",
    "random": "#8C8C8C",
    "negated": "#72B7B2",
}
# Prefill conditions as `core.sense.prefill.PREFILL_CONDITIONS` spells them.
PREFILL_TITLES: dict[str, str] = {
    "none": "no injection (the same replies at every layer)",
    "matching": "the prefilled word's concept",
    "random": "another word's concept",
}
PREFILL_COLOURS: dict[str, str] = {"none": "#4C78A8", "matching": "#C0392B", "random": "#8C8C8C"}
RATE_TITLES: dict[str, str] = {
    "detection": "detection",
    "identification": "identification",
    "coherence": "coherence",
}
RATE_COLOURS: dict[str, str] = {"detection": "#F58518", "identification": "#C0392B",
                                "coherence": "#54A24B"}
# ---------------------------------------------------------------------------- single trial


def condition_rates_figure(rates: pd.DataFrame, title: str = "Rates per condition") -> go.Figure:
    """Detection, identification and coherence for each condition as grouped bars with their
    95% Wilson intervals as error bars. `rates` has the columns of `TrialRun.rates()`."""
    fig = go.Figure()
    names = [CONDITION_SHORT.get(c, c) for c in rates["condition"]]
    for key, title_ in RATE_TITLES.items():
        p = pd.to_numeric(rates[key], errors="coerce")
        lo = pd.to_numeric(rates[f"{key}_lo"], errors="coerce")
        hi = pd.to_numeric(rates[f"{key}_hi"], errors="coerce")
        fig.add_trace(go.Bar(
            x=names, y=p, name=title_, marker={"color": RATE_COLOURS[key]},
            error_y={"type": "data", "array": hi - p, "arrayminus": p - lo, "visible": True},
            customdata=list(zip(rates["n"], lo, hi, strict=True)),
            hovertemplate=(f"{title_}<br>%{{x}}: %{{y:.2f}} [%{{customdata[1]:.2f}}, "
                           "%{customdata[2]:.2f}], n %{customdata[0]}<extra></extra>")))
    fig.update_layout(
        title=title, barmode="group", yaxis={"title": "rate (95% Wilson interval)",
                                             "range": [0, 1.05]},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        margin={"t": 100, "l": 60, "r": 20, "b": 50}, height=470)
    return fig


def logit_lens_figure(table: pd.DataFrame, layer: int, strength: float | None = None
                      ) -> go.Figure:
    """The concept token's rank (top, log scale, rank 1 at the top) and probability (bottom, log
    scale) per layer, without and with the injection; a dashed line marks the injection layer
    (layers before it cannot change). `table` has the columns of
    `core.sense.logit_lens.logit_lens`."""
    token = str(table["token"].iloc[0]) if len(table) else ""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("rank of the token (1 = the top prediction)",
                                        "probability of the token"))
    shown = f" (strength {strength:g})" if strength is not None else ""
    # with injection first, so the dashed line without it stays visible where the two agree
    styles = {"injected": (CONDITION_COLOURS["injected"], "solid", f"with injection{shown}"),
              "none": (CONDITION_COLOURS["none"], "dash", "without injection")}
    for condition, (colour, dash, name) in styles.items():
        rows = table[table["condition"] == condition].sort_values("layer")
        if rows.empty:
            continue
        line = {"color": colour, "dash": dash, "width": 2.5}
        fig.add_trace(go.Scatter(
            x=rows["layer"], y=rows["rank"], name=name, mode="lines+markers", line=line,
            legendgroup=condition, hovertemplate=f"{name}<br>layer %{{x}}: rank %{{y}}"
                                                 "<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(
            x=rows["layer"], y=rows["prob"], name=name, mode="lines+markers", line=line,
            legendgroup=condition, showlegend=False,
            hovertemplate=f"{name}<br>layer %{{x}}: p = %{{y:.3g}}<extra></extra>"),
            row=2, col=1)
    marker = {"color": "#555", "dash": "dot", "width": 1.5}
    fig.add_vline(x=layer, line=marker, row=1, col=1,
                  annotation_text=f"injection at layer {layer}",
                  annotation_position="top right", annotation_font_color="#555")
    fig.add_vline(x=layer, line=marker, row=2, col=1)
    fig.update_yaxes(type="log", autorange="reversed", title_text="rank", row=1, col=1)
    fig.update_yaxes(type="log", exponentformat="power", title_text="probability", row=2, col=1)
    fig.update_xaxes(title_text="layer (residual stream after this block)", row=2, col=1)
    fig.update_layout(
        title=f"Logit lens: the token {token!r} per layer",
        hovermode="x unified",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.06, "xanchor": "left", "x": 0},
        margin={"t": 110, "l": 70, "r": 20, "b": 50}, height=560)
    return fig


# ---------------------------------------------------------------------------- sweep


def heatmap_grid(summary: pd.DataFrame, value: str, concept: str | None = None) -> pd.DataFrame:
    """`value` over strength (rows, ascending) x layer (columns, ascending) for one concept, or
    the mean over the summary's concepts when `concept` is None. Missing values are NaN."""
    rows = summary if concept is None else summary[summary["concept"] == concept]
    if rows.empty:
        return pd.DataFrame(dtype=float)
    data = rows.assign(_v=pd.to_numeric(rows[value], errors="coerce"))
    return data.pivot_table(index="strength", columns="layer", values="_v", aggfunc="mean",
                            dropna=False).sort_index().sort_index(axis=1)


def _heatmap(grid: pd.DataFrame, zmin: float, zmax: float, colorscale: str | list[Any],
             name: str) -> go.Heatmap:
    z = [[None if pd.isna(v) else float(v) for v in row] for row in grid.to_numpy()]
    return go.Heatmap(
        z=z, x=[str(c) for c in grid.columns], y=[f"{s:g}" for s in grid.index], zmin=zmin,
        zmax=zmax, colorscale=colorscale, showscale=False, texttemplate="%{z:.2f}",
        hovertemplate=f"{name}<br>layer %{{x}}, strength %{{y}}: %{{z:.2f}}<extra></extra>",
        xgap=2, ygap=2)


def concept_note(summary: pd.DataFrame, concept: str | None) -> str:
    """Which concept a grid shows: the one chosen, or the mean over the summary's concepts."""
    if concept is not None:
        return f"concept '{concept}'"
    n = summary["concept"].nunique()
    return f"concept '{summary['concept'].iloc[0]}'" if n == 1 else f"mean over {n} concepts"


SWEEP_PANELS = (("net", "net score", -1.0, 1.0, "RdBu"),
                ("identification", "identification", 0.0, 1.0, "Reds"),
                ("coherence", "coherence", 0.0, 1.0, "Greens"))
CONTROL_PANELS = (("detection", "concept", 0.0, 1.0, "Oranges"),
                  ("random_detection", "random vector", 0.0, 1.0, "Greys"),
                  ("negated_detection", "negated vector", 0.0, 1.0, "Teal"))


def grid_figure(summary: pd.DataFrame, panels: Sequence[tuple[str, str, float, float, str]],
                concept: str | None, title: str, subtitle: str, height: int) -> go.Figure:
    """One heatmap per panel (value column, title, zmin, zmax, colour scale) over strength x
    layer; a panel whose column is empty says "not run"."""
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[1] for p in panels],
                        horizontal_spacing=0.08)
    for col, (value, name, zmin, zmax, scale) in enumerate(panels, start=1):
        grid = heatmap_grid(summary, value, concept)
        if grid.empty or grid.isna().all().all():
            axis = "" if col == 1 else str(col)
            fig.add_annotation(text="not run", showarrow=False, xref=f"x{axis} domain",
                               yref=f"y{axis} domain", x=0.5, y=0.5)
            continue
        fig.add_trace(_heatmap(grid, zmin, zmax, scale, name), row=1, col=col)
    fig.update_xaxes(title_text="layer", type="category")
    fig.update_yaxes(title_text="strength", type="category", col=1)
    fig.update_yaxes(type="category")
    fig.update_layout(title={"text": title, "subtitle": {"text": subtitle}},
                      margin={"t": 110, "l": 70, "r": 20, "b": 50}, height=height)
    return fig


def sweep_heatmaps(summary: pd.DataFrame, concept: str | None = None) -> go.Figure:
    """Net score (identification - false positives), identification and coherence over
    layer x strength (cells show the value). `summary` is `core.sense.introspection.sweep_summary`'s
    table."""
    return grid_figure(summary, SWEEP_PANELS, concept, "Injected concept",
                       f"{concept_note(summary, concept)}; net = identification − false "
                       "positives", 440)


def control_heatmaps(summary: pd.DataFrame, concept: str | None = None) -> go.Figure:
    """Detection claims over layer x strength with the concept injected, beside its controls:
    a random vector of the same norm and the negated vector; the no-injection false-positive
    rate (one rate for the whole sweep) is the subtitle."""
    return grid_figure(summary, CONTROL_PANELS, concept, "Detection: the concept against the "
                       "controls", false_positive_text(summary), 440)


# ---------------------------------------------------------------------------- prefill


def prefill_figure(summary: pd.DataFrame, strength: float | None = None) -> go.Figure:
    """Apology rate per layer and condition as grouped bars with 95% Wilson intervals.
    `summary` is `core.sense.prefill.prefill_summary`'s table."""
    fig = go.Figure()
    for condition, name in PREFILL_TITLES.items():
        rows = summary[summary["condition"] == condition].sort_values("layer")
        if rows.empty:
            continue
        p = pd.to_numeric(rows["apology"], errors="coerce")
        lo = pd.to_numeric(rows["apology_lo"], errors="coerce")
        hi = pd.to_numeric(rows["apology_hi"], errors="coerce")
        fig.add_trace(go.Bar(
            x=[str(layer) for layer in rows["layer"]], y=p, name=name,
            marker={"color": PREFILL_COLOURS[condition]},
            error_y={"type": "data", "array": hi - p, "arrayminus": p - lo, "visible": True},
            customdata=list(zip(rows["n"], lo, hi, strict=True)),
            hovertemplate=(f"{name}<br>layer %{{x}}: %{{y:.2f}} [%{{customdata[1]:.2f}}, "
                           "%{customdata[2]:.2f}], n %{customdata[0]}<extra></extra>")))
    shown = f" (strength {strength:g})" if strength is not None else ""
    fig.update_layout(
        title=f"Prefill: how often the model disowns the prefilled word{shown}",
        barmode="group", xaxis={"title": "layer of the injection", "type": "category"},
        yaxis={"title": "apology rate (95% Wilson interval)", "range": [0, 1.05]},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0},
        margin={"t": 90, "l": 60, "r": 20, "b": 50}, height=420)
    return fig
