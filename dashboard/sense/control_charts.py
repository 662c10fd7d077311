"""Pure figures of the Introspection page's controls: every arm's rate beside the rate of its
chance arm (a trial), and the confounds over layer x strength (a sweep). Tables in (those of
`core.sense.introspection_rates`: `control_table` and `sweep_summary`), a plotly figure out; no
Streamlit and no torch.

The arms (`core.sense.arms.ARMS`) and their chance: the concept, a random vector, the negated
vector and generation-only injection against no injection (false positives); an unrelated yes/no
question with injection against the same questions without; "asked about the injected concept"
(named) against "asked about it while another concept is injected" (mismatch).

    fig = controls_figure(run.controls())         # one trial's arms, each beside its chance
    fig = confound_heatmaps(sweep_summary(trials))  # generation-only, named, mismatch, yes/no
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from dashboard.sense.charts import concept_note, grid_figure

# Arms as `core.sense.arms.ARMS` names them (a test checks the two agree).
ARM_TITLES: dict[str, str] = {
    "injected": "concept injected",
    "none": "no injection",
    "random": "random vector (same norm)",
    "negated": "negated vector (−v)",
    "generation_only": "concept on generated tokens only",
    "yes_no": "unrelated yes/no question, concept injected",
    "yes_no_none": "unrelated yes/no question, no injection",
    "named": "asked about the concept, it injected",
    "mismatch": "asked about the concept, another injected",
}
# Short names for the figure's axis, and what each arm is read against.
ARM_SHORT: dict[str, str] = {
    "injected": "concept", "none": "no injection", "random": "random vector",
    "negated": "negated (−v)", "generation_only": "generation only",
    "yes_no": "yes/no question", "yes_no_none": "plain yes/no", "named": "asked about it",
    "mismatch": "another injected",
}
# The selectable controls (`core.sense.arms.ALL_CONTROLS`) and what each adds.
CONTROL_TITLES: dict[str, str] = {
    "none": "no injection",
    "random": "random vector (same norm)",
    "negated": "negated vector (−v)",
    "generation_only": "generation-only injection",
    "yes_no": "unrelated yes/no questions",
    "mismatch": "concept mismatch",
}
CONTROL_HELP = (
    "no injection: the same question with nothing injected, the false positives (at least "
    "100 trials, shared by a sweep). random / negated: a random direction of the same norm, "
    "-v. generation-only: the concept added on the generated tokens only, not over the "
    "question (open reproductions found the effect came from the prompt-time part). yes/no: "
    "'Is the Earth flat?'-style questions with and without the injection: does injection alone "
    "raise 'yes'? mismatch: asked 'Do you detect an injected thought about A?' while A is "
    "injected and while another concept B is.")
MEASURE_TITLES = {"detection": "detection", "yes": "says yes"}
ARM_COLOUR = "#C0392B"
CHANCE_COLOUR = "#4C78A8"
CONFOUND_PANELS = (("generation_only_detection", "generation-only", 0.0, 1.0, "Oranges"),
                   ("named_detection", "asked about it, it injected", 0.0, 1.0, "Reds"),
                   ("mismatch_detection", "asked about it, another injected", 0.0, 1.0,
                    "Greys"),
                   ("yes_no_yes", "yes to an unrelated question", 0.0, 1.0, "Purples"))


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if pd.isna(number) else number


def rate_text(p: Any, lo: Any, hi: Any, n: Any) -> str:
    """'0.03 [0.01, 0.08] (n 100)'; 'not run' without a rate."""
    values = [_number(v) for v in (p, lo, hi)]
    if values[0] is None:
        return "not run"
    interval = (f" [{values[1]:.2f}, {values[2]:.2f}]" if values[1] is not None
                and values[2] is not None else "")
    size = _number(n)
    return f"{values[0]:.2f}{interval}" + (f" (n {int(size)})" if size is not None else "")


def chance_arms_text(controls: pd.DataFrame) -> str:
    """The arms without injection (shared by every setting) with their n and interval."""
    shared = controls[controls["reference"].isna() & controls["layer"].isna()]
    parts = [f"{ARM_TITLES.get(str(row['control']), row['control'])}: "
             f"{MEASURE_TITLES.get(str(row['measure']), row['measure'])} "
             f"{rate_text(row['rate'], row['rate_lo'], row['rate_hi'], row['n'])}"
             for _, row in shared.iterrows()]
    return "; ".join(parts) if parts else "no arm without injection was run"


def controls_figure(controls: pd.DataFrame, title: str = "Every arm beside its chance"
                    ) -> go.Figure:
    """For each arm that has a chance arm (the concept, random, negated, generation-only,
    yes/no, named): its rate and its chance arm's rate as paired bars with 95% Wilson intervals
    (detection, or 'says yes' for the unrelated questions). `controls` is one setting's
    `core.sense.introspection_rates.control_table`."""
    rows = controls[controls["reference"].notna()]
    labels = [f"{ARM_SHORT.get(str(r['control']), r['control'])}<br>"
              f"{MEASURE_TITLES.get(str(r['measure']), r['measure'])}<br>"
              f"vs {ARM_SHORT.get(str(r['reference']), r['reference'])}"
              for _, r in rows.iterrows()]
    fig = go.Figure()
    series: Mapping[str, tuple[str, str, str]] = {
        "arm": ("rate", "this arm", ARM_COLOUR), "chance": ("reference_rate", "its chance arm",
                                                           CHANCE_COLOUR)}
    for kind, (column, name, colour) in series.items():
        low, high, size = (("rate_lo", "rate_hi", "n") if kind == "arm" else
                           ("reference_lo", "reference_hi", "reference_n"))
        p = pd.to_numeric(rows[column], errors="coerce")
        lo = pd.to_numeric(rows[low], errors="coerce")
        hi = pd.to_numeric(rows[high], errors="coerce")
        who = (list(rows["control"]) if kind == "arm" else list(rows["reference"]))
        fig.add_trace(go.Bar(
            x=labels, y=p, name=name, marker={"color": colour},
            error_y={"type": "data", "array": hi - p, "arrayminus": p - lo, "visible": True},
            customdata=[[ARM_TITLES.get(str(w), str(w)), n, a, b] for w, n, a, b in
                        zip(who, rows[size], lo, hi, strict=True)],
            hovertemplate=("%{customdata[0]}: %{y:.2f} [%{customdata[2]:.2f}, "
                           "%{customdata[3]:.2f}], n %{customdata[1]}<extra></extra>")))
    fig.update_layout(
        title={"text": title, "subtitle": {"text": "chance arms: " + chance_arms_text(controls)}},
        barmode="group", yaxis={"title": "rate (95% Wilson interval)", "range": [0, 1.05]},
        xaxis={"tickangle": 0},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        margin={"t": 120, "l": 60, "r": 20, "b": 90}, height=480)
    return fig


def yes_no_text(summary: pd.DataFrame) -> str:
    """The unrelated questions without injection (one arm for the whole sweep) in words."""
    if summary.empty or _number(summary["yes_no_none_yes"].iloc[0]) is None:
        return "unrelated questions without injection: not run"
    row = summary.iloc[0]
    said = rate_text(row["yes_no_none_yes"], row["yes_no_none_yes_lo"],
                     row["yes_no_none_yes_hi"], row["yes_no_none_n"])
    return f"unrelated questions without injection: says yes {said}"


def confound_heatmaps(summary: pd.DataFrame, concept: str | None = None) -> go.Figure:
    """The confounds over layer x strength: detection with generation-only injection, detection
    when asked about the concept with it injected (named) and with another concept injected
    (mismatch), and the share of 'yes' to unrelated yes/no questions with the concept injected
    (its chance, the same questions without injection, is the subtitle). `summary` is
    `core.sense.introspection_rates.sweep_summary`'s table."""
    note = concept_note(summary, concept) if not summary.empty else ""
    return grid_figure(summary, CONFOUND_PANELS, concept, "The confounds",
                        f"{note}; {yes_no_text(summary)}", 440)
