"""Pure functions for the Traces page without a probe: traces or the signal table in, a table or
a plotly figure out. No Streamlit here, so every figure can be built and checked in a plain test.

    fig = step_signal_figure(signals, "mean_nll", trace_id="p3-c0")   # one bar per step
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.data.answers import AccuracyWithChance
from core.data.prefix_labels import recovered_steps
from dashboard.common.charts import hover_text

# The per-step baseline signals of `core.diagnose.signals.SIGNAL_NAMES`, with the axis title
# each gets. (Kept here rather than imported so this module does not pull in torch; a test
# checks the two lists agree.)
SIGNAL_TITLES: dict[str, str] = {
    "mean_entropy": "mean entropy (nats)",
    "mean_nll": "mean NLL (nats)",
    "max_nll": "max NLL (nats)",
    "min_prob": "min token probability",
}
# Lower is more suspicious for these; higher for the others.
LOW_IS_SUSPICIOUS: frozenset[str] = frozenset({"min_prob"})

# Step label classes: value in the trace file -> (legend name, bar colour, outline colour).
HALLUCINATED = "hallucinated"
CORRECT = "correct"
UNLABELLED = "unlabelled"
LABEL_STYLE: dict[str, tuple[str, str]] = {
    CORRECT: ("#4C78A8", "#4C78A8"),
    HALLUCINATED: ("#E45756", "#9E1B1B"),
    UNLABELLED: ("#BAB0AC", "#BAB0AC"),
}
BAR_WIDTH = 0.7  # in steps
BACK_ON_TRACK = "back on track"  # a recovered step: prefix label 0 again after a broken stretch
RECOVERED_COLOUR = "#2E8B57"

CHAIN_COLUMNS = ("id", "problem_id", "steps", "labelled_steps", "hallucinated_steps",
                 "hallucinated_rate", "answered", "is_correct")


def label_name(label: Any) -> str:
    """"hallucinated" for label 1, "correct" for 0, "unlabelled" for None / NaN."""
    if label is None or (isinstance(label, float) and math.isnan(label)):
        return UNLABELLED
    return HALLUCINATED if int(label) == 1 else CORRECT


def chain_table(traces: Sequence[Any]) -> pd.DataFrame:
    """One row per chain: id, problem_id, steps, labelled_steps, hallucinated_steps,
    hallucinated_rate, answered, is_correct.

    hallucinated_rate = (steps labelled 1) / (steps with a label 0 or 1); None when no step of
    the chain is labelled. answered: did the reply state an answer (None: not recorded). Takes
    `core.data.traces.Trace` records (anything with id, problem_id, steps[i].label, answered
    and is_correct).
    """
    rows = []
    for trace in traces:
        labels = [step.label for step in trace.steps if step.label is not None]
        rows.append({
            "id": trace.id,
            "problem_id": trace.problem_id,
            "steps": len(trace.steps),
            "labelled_steps": len(labels),
            "hallucinated_steps": sum(labels),
            "hallucinated_rate": sum(labels) / len(labels) if labels else None,
            "answered": getattr(trace, "answered", None),
            "is_correct": trace.is_correct,
        })
    return pd.DataFrame(rows, columns=list(CHAIN_COLUMNS))


def steps_table(trace: Any) -> pd.DataFrame:
    """One row per step of one chain: step index, label name, prefix label, back_on_track (a
    recovered step: `core.data.prefix_labels.recovered_steps`) and text."""
    back = recovered_steps([s.prefix_label for s in trace.steps])
    return pd.DataFrame(
        [{"step": i, "label": label_name(s.label), "prefix_label": s.prefix_label,
          "back_on_track": b, "text": s.text}
         for i, (s, b) in enumerate(zip(trace.steps, back, strict=True))],
        columns=["step", "label", "prefix_label", "back_on_track", "text"])


def outcome_text(trace: Any) -> str:
    """The chain's answer in words: whether the reply stated one, which, the gold, right or
    wrong. "stated answer 14 · gold 14 · right"; "no answer stated · gold 14 · counts as
    wrong"."""
    answered, answer, gold = getattr(trace, "answered", None), trace.answer, trace.gold
    verdict = {True: "right", False: "wrong", None: "right or wrong unknown"}[trace.is_correct]
    if answered is False:
        head, verdict = "no answer stated", "counts as wrong"
    elif answer is None:
        head = "no answer recorded"
    elif answered is None:
        head = f"answer {answer} (whether the reply stated it is not recorded)"
    else:
        head = f"stated answer {answer}"
    return f"{head} · gold {'-' if gold is None else gold} · {verdict}"


def _check_signal(df: pd.DataFrame, signal: str) -> None:
    if signal not in SIGNAL_TITLES:
        raise ValueError(f"Unknown signal '{signal}'; choose from {', '.join(SIGNAL_TITLES)}.")
    missing = {"trace_id", "step", "text", "label", signal} - set(df.columns)
    if missing:
        raise ValueError(f"The signal table lacks the column(s) {', '.join(sorted(missing))}.")


def step_signal_figure(df: pd.DataFrame, signal: str, trace_id: str) -> go.Figure:
    """Bars of one signal for each step of one chain, coloured by the step's label.

    One bar trace per label class present (correct, hallucinated, unlabelled), so the legend
    explains the colours; hallucinated bars also get a dark outline and an "x" marker above them
    so they stand out without colour. Hovering a bar shows the step's index, value and text.
    `df` is a `core.diagnose.feature_store.signal_table` result (columns trace_id, step, text,
    label and the signal).
    """
    _check_signal(df, signal)
    chain = df[df["trace_id"] == trace_id].sort_values("step")
    if chain.empty:
        raise ValueError(f"The signal table holds no step of chain '{trace_id}'.")
    names = chain["label"].map(label_name)
    fig = go.Figure()
    for name, (colour, outline) in LABEL_STYLE.items():
        part = chain[names == name]
        if part.empty:
            continue
        fig.add_trace(go.Bar(
            x=part["step"].tolist(), y=part[signal].tolist(), name=f"{name} step",
            width=BAR_WIDTH,  # fixed: plotly would size each trace's bars by its own x spacing
            marker={"color": colour,
                    "line": {"color": outline, "width": 2.5 if name == HALLUCINATED else 0}},
            customdata=[hover_text(t) for t in part["text"]],
            hovertemplate=(f"step %{{x}} ({name})<br>{SIGNAL_TITLES[signal]}: %{{y:.3f}}"
                           "<br><br>%{customdata}<extra></extra>"),
        ))
    bad = chain[names == HALLUCINATED]
    if not bad.empty:
        top = float(chain[signal].max())
        fig.add_trace(go.Scatter(
            x=bad["step"].tolist(), y=[top * 1.06 if top > 0 else 0.05] * len(bad),
            mode="markers", name="labelled hallucinated", showlegend=False,
            marker={"symbol": "x", "size": 11, "color": LABEL_STYLE[HALLUCINATED][1]},
            hoverinfo="skip",
        ))
    direction = "lower" if signal in LOW_IS_SUSPICIOUS else "higher"
    fig.update_layout(
        title=f"{SIGNAL_TITLES[signal]} per step: chain {trace_id} ({direction} = less sure)",
        xaxis={"title": "step", "tickmode": "linear", "dtick": 1,
               "range": [float(chain["step"].min()) - 0.6, float(chain["step"].max()) + 0.6]},
        yaxis={"title": SIGNAL_TITLES[signal], "rangemode": "tozero"},
        barmode="overlay", hovermode="closest",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0},
        margin={"t": 90, "l": 60, "r": 20, "b": 50}, height=420,
    )
    return fig


def signal_by_label_figure(df: pd.DataFrame, signal: str) -> go.Figure:
    """Distribution of one signal over every scored step, one box per label class present:
    does the signal separate hallucinated steps from correct ones? Points show each step; hover
    names its chain and text."""
    _check_signal(df, signal)
    names = df["label"].map(label_name)
    fig = go.Figure()
    for name, (colour, _) in LABEL_STYLE.items():
        part = df[names == name]
        if part.empty:
            continue
        fig.add_trace(go.Box(
            y=part[signal].tolist(), name=f"{name} ({len(part)})", marker={"color": colour},
            boxpoints="all", jitter=0.4, pointpos=0,
            customdata=[[tid, hover_text(t)] for tid, t in zip(part["trace_id"], part["text"],
                                                                strict=True)],
            hovertemplate=(f"{SIGNAL_TITLES[signal]}: %{{y:.3f}}<br>chain %{{customdata[0]}}"
                           "<br><br>%{customdata[1]}<extra></extra>"),
        ))
    fig.update_layout(
        title=f"{SIGNAL_TITLES[signal]} by step label",
        yaxis={"title": SIGNAL_TITLES[signal]}, showlegend=False,
        margin={"t": 60, "l": 60, "r": 20, "b": 40}, height=380,
    )
    return fig


def summary_counts(table: pd.DataFrame) -> dict[str, float | int | None]:
    """Totals over a `chain_table`: chains, steps, labelled steps, hallucinated-step rate
    (labelled-1 steps / labelled steps) and the share of chains with a correct final answer
    (among chains where it is known)."""
    labelled = int(table["labelled_steps"].sum())
    hallucinated = int(table["hallucinated_steps"].sum())
    known = table["is_correct"].dropna()
    return {
        "chains": len(table),
        "steps": int(table["steps"].sum()),
        "labelled_steps": labelled,
        "hallucinated_steps": hallucinated,
        "hallucinated_rate": hallucinated / labelled if labelled else None,
        "correct_rate": float(known.astype(bool).mean()) if len(known) else None,
    }


def labelled_scores(df: pd.DataFrame, signal: str) -> tuple[list[int], list[float]]:
    """Step labels (0/1) and the signal oriented so higher = more suspicious (min_prob is
    negated), over the steps that have a label: the inputs of an AUROC."""
    _check_signal(df, signal)
    known = df[df["label"].map(label_name) != UNLABELLED]
    sign = -1.0 if signal in LOW_IS_SUSPICIOUS else 1.0
    return ([int(v) for v in known["label"]], [sign * float(v) for v in known[signal]])


def chance_text(found: AccuracyWithChance) -> str:
    """The chance rate as "3.1% ± 0.9%" (mean ± standard deviation over the shuffles)."""
    return f"{found.chance_mean:.1%} ± {found.chance_sd:.1%}"


def answers_sentence(found: AccuracyWithChance) -> str:
    """The file's answers in words: how many chains state an answer, how many the right one,
    and the chance rate beside it (the same answers scored against golds shuffled across
    problems), with whether the accuracy stands clear of it (more than two spreads above)."""
    if not found.n:
        return "No chain has a gold answer, so neither accuracy nor its chance rate is known."
    clear = found.accuracy > found.chance_mean + 2 * found.chance_sd
    verdict = ("clear of chance (more than two spreads above it)" if clear else
               "within two spreads of chance: not shown to be better than luck")
    return (f"Of the {found.n} chains with a gold answer ({found.n_problems} problems), "
            f"{found.n_answered} state an answer ({found.answered_share:.1%}) and "
            f"{found.n_correct} state the right one ({found.accuracy:.1%}); a chain that states "
            f"none counts as wrong. Chance: the same answers scored against golds shuffled "
            f"across problems give {chance_text(found)} (mean ± spread over {found.n_shuffles} "
            f"shuffles), so the accuracy is {verdict}.")
