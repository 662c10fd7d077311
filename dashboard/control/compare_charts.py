"""Pure figures and tables of the Fine-tuning page's comparison (`core.control.finetune.
compare_methods`): each run's curve of forgetting against its progress on the target, the runs
read off at the same target-loss reduction, and the seed summaries as text. No Streamlit and no
torch here.

    fig = forgetting_figure(result.curves, result.matched, result.levels)
    shown = summary_table(result.summary)       # mean ± sd [min, max] over seeds

Progress on the target is the relative reduction of the held-out target loss, r = (L_base - L)
/ L_base (`core.control.matching`); forgetting is the change of the general loss and accuracy
from the base model; |dtheta| is how far the weights moved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.control.matching import spread_text

METHOD_COLOURS = {"sft": "#E45756", "eaft": "#4C78A8", "sft_kl": "#54A24B",
                  "hard_mask": "#F58518", "sft_lr_matched": "#B279A2"}
OTHER_COLOUR = "#888888"
# the three panels: (title, y-axis title)
PANELS = (("general loss", "general loss change (nats)"),
          ("general accuracy", "general accuracy change (points)"),
          ("|dtheta|", "|dtheta| (weight distance)"))
SUMMARY_COLUMNS = ("method", "seeds", "step", "d general loss", "d general acc (points)",
                   "|dtheta|")
DIFFERENCE_COLUMNS = ("method", "seeds", "d general loss", "d general acc (points)",
                      "|dtheta|", "general loss rose less")


def forgetting_columns(curves: pd.DataFrame) -> pd.DataFrame:
    """The curves with the three plotted values per point: d_general_loss and d_general_acc
    (change from the run's step-0 point, the base model; accuracy in percentage points, NaN
    where it was not measured) and d_theta, and the reduction in percent."""
    out = []
    for _, run in curves.groupby(["seed", "method"], sort=False):
        run = run.sort_values("step")
        start = run.iloc[0]
        out.append(run.assign(
            d_general_loss=run["general_loss"] - float(start["general_loss"]),
            d_general_acc=100 * (run["general_acc"] - float(start["general_acc"])),
            reduction_pct=100 * run["reduction"]))
    return pd.concat(out, ignore_index=True) if out else curves.assign(
        d_general_loss=[], d_general_acc=[], reduction_pct=[])


def forgetting_figure(curves: pd.DataFrame, matched: pd.DataFrame,
                      levels: Sequence[float]) -> go.Figure:
    """Three panels against the target-loss reduction (%): general loss change, general
    accuracy change and |dtheta|. A thin line per run (one colour per method, a point per
    evaluation, step 0 at the origin), a diamond where each run reaches a matched level, and a
    dotted line at each level: at the same progress on the target, the lower a method's points,
    the less it forgot."""
    points = forgetting_columns(curves)
    values = ("d_general_loss", "d_general_acc", "d_theta")
    fig = make_subplots(rows=1, cols=3, subplot_titles=[title for title, _ in PANELS],
                        horizontal_spacing=0.08)
    shown: set[str] = set()
    for (seed, method), run in points.groupby(["seed", "method"], sort=False):
        colour = METHOD_COLOURS.get(str(method), OTHER_COLOUR)
        for col, value in enumerate(values, start=1):
            fig.add_trace(go.Scatter(
                x=run["reduction_pct"], y=run[value], mode="lines+markers",
                line={"color": colour, "width": 1.5}, marker={"size": 5}, opacity=0.7,
                name=str(method), legendgroup=str(method),
                showlegend=col == 1 and method not in shown,
                customdata=run["step"],
                hovertemplate=(f"{method}, seed {seed}, step " + "%{customdata}<br>"
                               "target-loss reduction %{x:.1f}%<br>%{y:.4f}<extra></extra>")),
                row=1, col=col)
        shown.add(str(method))
    reached = matched[matched["reached"].astype(bool)] if not matched.empty else matched
    for _, row in reached.iterrows():
        colour = METHOD_COLOURS.get(str(row["method"]), OTHER_COLOUR)
        ys = (float(row["d_general_loss"]), 100 * float(row["d_general_acc"]),
              float(row["d_theta"]))
        for col, y in enumerate(ys, start=1):
            if math.isnan(y):
                continue
            fig.add_trace(go.Scatter(
                x=[100 * float(row["level"])], y=[y], mode="markers",
                marker={"symbol": "diamond", "size": 10, "color": colour,
                        "line": {"color": "white", "width": 1}},
                legendgroup=str(row["method"]), showlegend=False,
                hovertemplate=(f"{row['method']}, seed {row['seed']}: at "
                               f"{float(row['level']):.1%} reduction (step "
                               f"{float(row['step']):.1f})<br>" + "%{y:.4f}<extra></extra>")),
                row=1, col=col)
    for level in levels:
        for col in (1, 2, 3):
            fig.add_vline(x=100 * level, line={"color": "#888", "dash": "dot", "width": 1},
                          row=1, col=col)
    for col, (_, axis) in enumerate(PANELS, start=1):
        fig.update_xaxes(title_text="target-loss reduction (%)", row=1, col=col)
        fig.update_yaxes(title_text=axis, row=1, col=col, zeroline=True, zerolinecolor="#bbb")
    fig.update_layout(height=360, margin={"t": 40, "l": 60, "r": 10, "b": 50},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """`core.control.matching.seed_summary` for display: per method and level, the seeds that
    reached it, the step where they did, and forgetting and |dtheta| as "mean ± sd [min, max]"
    over seeds (accuracy in percentage points)."""
    rows = [{"level": float(row["level"]), "method": row["method"],
             "seeds": int(row["n_seeds"]),
             "step": spread_text(row, "step", signed=False, digits=1),
             "d general loss": spread_text(row, "d_general_loss"),
             "d general acc (points)": spread_text(row, "d_general_acc", scale=100, digits=1),
             "|dtheta|": spread_text(row, "d_theta", signed=False, digits=4)}
            for row in summary.to_dict(orient="records")]
    return pd.DataFrame(rows, columns=["level", *SUMMARY_COLUMNS])


def differences_table(differences: pd.DataFrame) -> pd.DataFrame:
    """`core.control.matching.paired_differences` for display: each method minus the reference
    (SFT), seed by seed, as "mean ± sd [min, max]", and in how many seeds its general loss rose
    less than the reference's."""
    rows = [{"level": float(row["level"]), "method": f"{row['method']} - {row['reference']}",
             "seeds": int(row["n_seeds"]),
             "d general loss": spread_text(row, "diff_d_general_loss"),
             "d general acc (points)": spread_text(row, "diff_d_general_acc", scale=100,
                                                   digits=1),
             "|dtheta|": spread_text(row, "diff_d_theta", digits=4),
             "general loss rose less": f"{int(row['n_less_loss'])} of {int(row['n_seeds'])}"}
            for row in differences.to_dict(orient="records")]
    return pd.DataFrame(rows, columns=["level", *DIFFERENCE_COLUMNS])


__all__ = ["DIFFERENCE_COLUMNS", "METHOD_COLOURS", "PANELS", "SUMMARY_COLUMNS",
           "differences_table", "forgetting_columns", "forgetting_figure", "summary_table"]
