"""Pure functions for the Traces page's probe view: tables and data in, a table, an HTML string
or a plotly figure out. No Streamlit and no torch here, so every figure is checked in a plain
test.

The per-step table these take (`STEP_COLUMNS`) has one row per scored step: trace_id, step,
text, step_score (NaN without a step probe), prefix_score, alarm, label, prefix_label (NaN or
None where unknown) and phase (see `core.diagnose.evaluation.step_phases`).

    fig = probe_chain_figure(steps, "p3-c0", threshold=0.41, step_threshold=0.5)
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.diagnose.metrics import RecoveryStat, ResidualTime
from core.diagnose.report import RANKING_KEYS, EvaluationReport
from dashboard.common.charts import hover_text
from dashboard.diagnose.trace_charts import HALLUCINATED, LABEL_STYLE, label_name

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

SCORER_TITLES: dict[str, str] = {
    "probe": "probes (step probe, prefix tracker)",
    "mean_entropy": "mean token entropy",
    "mean_nll": "mean NLL",
    "max_nll": "max NLL",
    "min_prob": "min token probability",
    "global_mean_probe": "global-mean probe (SAPLMA-like)",
    "last_token": "last-token probe",
    "text": "text-only classifier (no hidden state)",
}
SCORER_COLOURS: dict[str, str] = {
    "probe": "#C0392B",
    "mean_entropy": "#4C78A8",
    "mean_nll": "#72B7B2",
    "max_nll": "#54A24B",
    "min_prob": "#B279A2",
    "global_mean_probe": "#F58518",
    "last_token": "#9D755D",
    "text": "#BAB0AC",
}
METRIC_COLUMNS = ("scores", *RANKING_KEYS, "step_f1")
METRIC_TITLES: dict[str, str] = {
    "step_auroc": "step AUROC", "step_auprc": "step AUPRC",
    "prefix_auroc": "prefix AUROC (every step)", "final_auroc": "final AUROC (whole chain)",
    "step_f1": "step F1 (at the step threshold)",
}
INTERVAL_TITLES: dict[str, str] = {
    "step_auroc_ci": "step AUROC 95% interval", "final_auroc_ci": "final AUROC 95% interval",
}
DYNAMIC_MEANING: dict[str, str] = {
    "Snap_M": "rise of the prefix score at the first hallucinated step",
    "Lag": "steps from the first hallucinated step to the first alarm",
    "ICR": "share of hallucinated chains caught at their first hallucinated step",
    "Brake_S": "drop of the prefix score where the text recovers",
    "Ling_T": "flagged steps lingering after the text recovers",
    "Heal_3": "share of recoveries whose alarm drops within 3 steps",
    "R_Score": "1 - mean prefix score after onset (recovered chains)",
    "FP_Len": "mean run length of false alarms",
}


def _labelled(value: Any) -> int | None:
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
                       step_threshold: float, focus_step: int | None = None) -> go.Figure:
    """One chain as the probes see it: step scores as bars (the spikes), the prefix score as a
    line, the alarm threshold dashed (and the step threshold dotted), true step labels as
    markers above the plot, and every step's phase shaded behind it.

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
    labels = [label_name(v) for v in chain["label"]]
    for name, symbol in ((HALLUCINATED, "x"), ("correct", "circle-open")):
        marked = [s for s, lab in zip(x, labels, strict=True) if lab == name]
        if marked:
            fig.add_trace(go.Scatter(
                x=marked, y=[1.08] * len(marked), mode="markers",
                name=f"labelled {name}", hoverinfo="skip",
                marker={"symbol": symbol, "size": 11, "color": LABEL_STYLE[name][1],
                        "line": {"width": 2, "color": LABEL_STYLE[name][1]}}))
    fig.update_layout(
        title=f"Chain {trace_id}: step probe and prefix tracker",
        xaxis={"title": "step", "tickmode": "linear", "dtick": 1,
               "range": [min(x) - 0.5, max(x) + 0.5]},
        yaxis={"title": "score (probability of hallucination)", "range": [0, 1.14]},
        hovermode="closest", clickmode="event+select", barmode="overlay",
        legend={"orientation": "v", "x": 1.01, "y": 1.0},
        margin={"t": 60, "l": 60, "r": 20, "b": 50}, height=430,
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


def metrics_table(report: EvaluationReport) -> pd.DataFrame:
    """One row per scorer of an `EvaluationReport`: the probes first, then each baseline;
    columns scores, step_auroc, step_auprc, prefix_auroc, final_auroc, step_f1 (None where the
    data cannot support a value, or where a baseline has no calibrated threshold), and, when the
    report has bootstrap intervals, step_auroc_ci and final_auroc_ci as "low-high" text."""
    rows: list[dict[str, Any]] = [{"scores": SCORER_TITLES["probe"], **report.probes.as_dict(),
                                   "step_f1": report.step_f1}]
    names = list(report.baselines)
    for name in names:
        rows.append({"scores": SCORER_TITLES.get(name, name),
                     **report.baselines[name].as_dict(), "step_f1": None})
    intervals = report.intervals
    if not intervals:
        return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    sources = [intervals["probe"], *(intervals["baselines"].get(n, {}) for n in names)]
    for row, source in zip(rows, sources, strict=True):
        for key in INTERVAL_TITLES:
            pair = source.get(key.removesuffix("_ci"))
            row[key] = None if pair is None else f"{pair[0]:.3f}-{pair[1]:.3f}"
    return pd.DataFrame(rows, columns=[*METRIC_COLUMNS, *INTERVAL_TITLES])


def dynamic_table(report: EvaluationReport) -> pd.DataFrame:
    """The eight dynamic metrics of an `EvaluationReport`: metric, value, meaning."""
    return pd.DataFrame([{"metric": k, "value": v, "meaning": DYNAMIC_MEANING.get(k, "")}
                         for k, v in report.dynamic_dict().items()],
                        columns=["metric", "value", "meaning"])


def roc_figure(curves: Mapping[str, Any], title: str) -> go.Figure:
    """ROC curves (the probes thick and red, each baseline thin in its own colour), the chance
    diagonal dotted. Takes `core.diagnose.evaluation.RocCurve`-like values (fpr, tpr, auroc)
    keyed by scorer name."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                             line={"dash": "dot", "color": "#999"}, hoverinfo="skip"))
    for name, curve in curves.items():
        is_probe = name == "probe"
        fig.add_trace(go.Scatter(
            x=list(curve.fpr), y=list(curve.tpr), mode="lines",
            name=f"{SCORER_TITLES.get(name, name)} ({curve.auroc:.3f})",
            line={"width": 3.5 if is_probe else 1.6, "shape": "hv",
                  "color": SCORER_COLOURS.get(name, "#888")},
            hovertemplate="FPR %{x:.2f}, TPR %{y:.2f}<extra>" + html.escape(name) + "</extra>"))
    fig.update_layout(
        title=title, xaxis={"title": "false-positive rate", "range": [0, 1]},
        yaxis={"title": "true-positive rate", "range": [0, 1.02]},
        legend={"title": {"text": "scores (AUROC)"}, "orientation": "h", "x": 0,
                "y": -0.2, "yanchor": "top", "font": {"size": 11}},
        margin={"t": 50, "l": 60, "r": 20, "b": 40}, height=560,
    )
    return fig


def sweep_figure(rows: Sequence[Mapping[str, Any]], chosen_layer: int) -> go.Figure:
    """Validation AUROC per layer of a layer sweep (step, prefix, final), the chosen layer
    marked. `rows` are the probe sidecar's metrics["sweep"] entries."""
    if not rows:
        raise ValueError("The probe holds no layer sweep (it was trained at one layer).")
    table = pd.DataFrame(list(rows)).sort_values("layer")
    fig = go.Figure()
    for key, name in (("step_auroc", "step AUROC"), ("final_auroc", "final-prefix AUROC"),
                      ("prefix_auroc", "prefix AUROC (all steps)")):
        if key in table and table[key].notna().any():
            fig.add_trace(go.Scatter(x=table["layer"].tolist(), y=table[key].tolist(),
                                     mode="lines+markers", name=name))
    fig.add_vline(x=chosen_layer, line={"dash": "dash", "color": "#C0392B"},
                  annotation_text=f"chosen: layer {chosen_layer}",
                  annotation_position="top left")
    fig.update_layout(
        title="Layer sweep (validation data)",
        xaxis={"title": "layer", "tickmode": "array", "tickvals": table["layer"].tolist()},
        yaxis={"title": "AUROC"}, hovermode="x unified",
        legend={"orientation": "h", "x": 0, "y": -0.2, "yanchor": "top"},
        margin={"t": 50, "l": 60, "r": 20, "b": 40}, height=460,
    )
    return fig


def residual_time_figure(residual: ResidualTime) -> go.Figure:
    """How many text-level recoveries kept the alarm up for 0, 1, 2, ... steps (the
    `residual_time` of an `EvaluationReport`)."""
    summary = residual.summary()
    listed = summary.get("counts")
    counts = [int(c) for c in listed] if isinstance(listed, list) else []
    fig = go.Figure(go.Bar(
        x=list(range(len(counts))), y=counts, marker={"color": STEP_COLOUR}, name="recoveries",
        hovertemplate="alarm up %{x} step(s) after recovery: %{y} recoveries<extra></extra>"))
    n, censored = summary.get("n", 0), summary.get("n_censored", 0)
    fig.update_layout(
        title=f"Residual time: {n} recoveries ({censored} still alarmed at the chain's end)",
        xaxis={"title": "steps the alarm stays up after the text recovers", "dtick": 1},
        yaxis={"title": "recoveries"}, margin={"t": 50, "l": 60, "r": 20, "b": 50},
        height=340,
    )
    return fig


def recovery_sentence(recovery: RecoveryStat) -> str:
    """The recovery statistic in words, with its interval and the count it rests on."""
    k, n = recovery.k, recovery.n_chains
    share, low, high = recovery.share_correct, recovery.ci_low, recovery.ci_high
    if not n or share is None or low is None or high is None:
        return (f"No chain has {k} or more consecutive hallucinated steps and a known final "
                "answer, so the recovery statistic cannot be measured here.")
    return (f"Of the {n} chain(s) with at least {k} consecutive hallucinated steps, "
            f"{recovery.n_correct} still reached a correct answer: {share:.1%} "
            f"(95% interval {low:.1%} to {high:.1%}).")
