"""Pure figures and tables for the Traces page's corpus view: the metrics of a typed
`core.diagnose.report.EvaluationReport` beside the baselines, the dynamic metrics, ROC curves,
the layer sweep, residual time and the recovery statistic. No Streamlit and no torch here.

    table = metrics_table(report)        # one row per scorer: the probes, then each baseline
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.diagnose.metrics import RecoveryStat, ResidualTime
from core.diagnose.report import RANKING_KEYS, EvaluationReport
from dashboard.diagnose.probe_charts import STEP_COLOUR

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
