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
    "min_prob": "1 - min token probability",
    "global_mean_probe": "global-mean-pooled probe",
    "last_token": "last-token probe",
    "text": "text-only classifier (no hidden state)",
}
KEY_BASELINES = ("text", "last_token")  # the two every probe file should carry
SCORER_COLOURS: dict[str, str] = {
    "probe": "#C0392B",
    "mean_entropy": "#4C78A8",
    "mean_nll": "#72B7B2",
    "max_nll": "#54A24B",
    "min_prob": "#B279A2",
    "global_mean_probe": "#F58518",
    "last_token": "#9D755D",
    "text": "#222222",
}
SCORER_DASH: dict[str, str] = {"text": "dash"}  # the scorer that never reads a hidden state
METRIC_COLUMNS = ("scores", *RANKING_KEYS, "step_f1")
LEAD_COLUMNS = ("step_lead", "final_lead")  # the probes' AUROC minus this scorer's
INTERVAL_COLUMNS = ("step_auroc_ci", "final_auroc_ci", "step_lead_ci", "final_lead_ci")
# The page's table (`shown_table`): each AUROC with its interval, then the probes' lead over the
# row's scorer with its interval, as text; the other metrics after them.
SHOWN_TITLES: dict[str, str] = {
    "scores": "scores", "step_auroc": "step AUROC (95% interval)",
    "step_lead": "probes' lead, step AUROC", "final_auroc": "final AUROC (95% interval)",
    "final_lead": "probes' lead, final AUROC", "step_auprc": "step AUPRC",
    "prefix_auroc": "prefix AUROC", "step_f1": "step F1 (at the step threshold)",
}
NOT_SUPPORTED = "n/a"
DYNAMIC_MEANING: dict[str, str] = {
    "Snap_M": "rise of the prefix score at the first hallucinated step",
    "Lag": "steps from the first hallucinated step to the first alarm",
    "ICR": "share of hallucinated chains caught at their first hallucinated step",
    "Brake_S": "drop of the prefix score where the text recovers",
    "Ling_T": "flagged steps lingering after the text recovers",
    "Heal_3": "share of recoveries whose alarm drops within 3 steps",
    "R_Score": "1 - mean prefix score over the steps back on track",
    "FP_Len": "mean run length of false alarms",
}


def _lead(mine: float | None, theirs: float | None) -> float | None:
    return None if mine is None or theirs is None else mine - theirs


def _span(pair: Any, signed: bool = False) -> str | None:
    if pair is None:
        return None
    form = "{:+.3f}" if signed else "{:.3f}"
    return f"{form.format(pair[0])} to {form.format(pair[1])}"


def metrics_table(report: EvaluationReport) -> pd.DataFrame:
    """One row per scorer of an `EvaluationReport`: the probes first, then each baseline;
    columns scores, step_auroc, step_auprc, prefix_auroc, final_auroc, step_f1, and the probes'
    lead over the row's scorer (step_lead, final_lead: probes' AUROC minus its; None on the
    probes' row). A value the data cannot support is None, as is step_f1 of a baseline (no
    calibrated threshold). When the report has bootstrap intervals: step_auroc_ci,
    final_auroc_ci, step_lead_ci and final_lead_ci as "low to high" text (the leads paired: the
    probes and the baseline on the same resample of problems)."""
    probes = report.probes
    rows: list[dict[str, Any]] = [{"scores": SCORER_TITLES["probe"], **probes.as_dict(),
                                   "step_f1": report.step_f1, "step_lead": None,
                                   "final_lead": None}]
    names = list(report.baselines)
    for name in names:
        theirs = report.baselines[name]
        rows.append({"scores": SCORER_TITLES.get(name, name), **theirs.as_dict(),
                     "step_f1": None,
                     "step_lead": _lead(probes.step_auroc, theirs.step_auroc),
                     "final_lead": _lead(probes.final_auroc, theirs.final_auroc)})
    columns = [*METRIC_COLUMNS, *LEAD_COLUMNS]
    intervals = report.intervals
    if not intervals:
        return pd.DataFrame(rows, columns=columns)
    sources = [intervals["probe"], *(intervals["baselines"].get(n, {}) for n in names)]
    leads = [{}, *(intervals.get("lead", {}).get(n, {}) for n in names)]
    for row, source, lead in zip(rows, sources, leads, strict=True):
        for metric in ("step_auroc", "final_auroc"):
            row[f"{metric}_ci"] = _span(source.get(metric))
            row[f"{metric.split('_')[0]}_lead_ci"] = _span(lead.get(metric), signed=True)
    return pd.DataFrame(rows, columns=[*columns, *INTERVAL_COLUMNS])


def _cell(value: Any, interval: Any = None, signed: bool = False) -> str:
    if value is None or pd.isna(value):
        return NOT_SUPPORTED
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return text if interval is None or pd.isna(interval) else f"{text} ({interval})"


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """A `metrics_table` as the page shows it (the `SHOWN_TITLES` columns, all text): each AUROC
    with its interval, "0.869 (0.850 to 0.893)", and the probes' lead over the row's scorer
    with its paired interval, "+0.050 (-0.020 to +0.110)" (empty on the probes' own row); a
    value the data cannot support is "n/a"."""
    rows = []
    for _, row in table.iterrows():
        is_probe = row["scores"] == SCORER_TITLES["probe"]
        out = {"scores": row["scores"]}
        for level in ("step", "final"):
            out[f"{level}_auroc"] = _cell(row[f"{level}_auroc"], row.get(f"{level}_auroc_ci"))
            out[f"{level}_lead"] = "" if is_probe else _cell(
                row[f"{level}_lead"], row.get(f"{level}_lead_ci"), signed=True)
        for key in ("step_auprc", "prefix_auroc", "step_f1"):
            out[key] = _cell(row[key])
        rows.append(out)
    return pd.DataFrame(rows, columns=list(SHOWN_TITLES))


def lead_sentence(report: EvaluationReport, name: str) -> str | None:
    """The probes against one baseline in words: their lead in step and final AUROC with its
    paired interval, and whether the interval clears 0. None when the report lacks it."""
    theirs = report.baselines.get(name)
    if theirs is None:
        return None
    lead_ci = ((report.intervals or {}).get("lead") or {}).get(name, {})
    parts, verdicts = [], []
    for metric, level in (("step_auroc", "step"), ("final_auroc", "final")):
        lead = _lead(getattr(report.probes, metric), getattr(theirs, metric))
        if lead is None:
            continue
        pair = lead_ci.get(metric)
        parts.append(f"{level} AUROC {lead:+.3f}" + (
            "" if pair is None else f" (95% interval {_span(pair, signed=True)})"))
        if pair is not None:
            verdicts.append(f"ahead at the {level} level" if pair[0] > 0 else
                            f"behind at the {level} level" if pair[1] < 0 else
                            f"not shown to differ at the {level} level")
    if not parts:
        return None
    title = SCORER_TITLES.get(name, name)
    text = f"Probes' lead over the {title}: {'; '.join(parts)}."
    return text + (f" On this file the probes are {' and '.join(verdicts)}." if verdicts else "")


def missing_key_baselines(report: EvaluationReport) -> list[str]:
    """The key baselines (text-only classifier, last-token probe) the report lacks: the probe
    file was trained before they existed, or the chains' texts were not captured."""
    return [SCORER_TITLES[n] for n in KEY_BASELINES if n not in report.baselines]


def dynamic_table(report: EvaluationReport) -> pd.DataFrame:
    """The eight dynamic metrics of an `EvaluationReport`: metric, value (at the calibrated
    alarm threshold), at_0_5 (at the paper's threshold 0.5), meaning."""
    calibrated, paper = report.dynamic_dict(), report.dynamic_dict(at_0_5=True)
    return pd.DataFrame([{"metric": k, "value": v, "at_0_5": paper.get(k),
                          "meaning": DYNAMIC_MEANING.get(k, "")} for k, v in calibrated.items()],
                        columns=["metric", "value", "at_0_5", "meaning"])


def roc_figure(curves: Mapping[str, Any], title: str) -> go.Figure:
    """ROC curves (the probes thick and red, each baseline thin in its own colour, the text-only
    classifier dashed), the chance diagonal dotted. Takes `core.diagnose.evaluation.RocCurve`-
    like values (fpr, tpr, auroc) keyed by scorer name."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                             line={"dash": "dot", "color": "#999"}, hoverinfo="skip"))
    for name, curve in curves.items():
        is_probe = name == "probe"
        fig.add_trace(go.Scatter(
            x=list(curve.fpr), y=list(curve.tpr), mode="lines",
            name=f"{SCORER_TITLES.get(name, name)} ({curve.auroc:.3f})",
            line={"width": 3.5 if is_probe else 1.6, "shape": "hv",
                  "color": SCORER_COLOURS.get(name, "#888"),
                  "dash": SCORER_DASH.get(name, "solid")},
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
