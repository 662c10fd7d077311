"""The Fine-tuning page's scan view: thresholds that cut the entropy-probability plane, and
everything drawn from one token scan under them (headline numbers, the plane and gradient
pressure, quadrant shares); the token tables and the export are `token_panel`. No model call
here: the scan is done."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.control.conflicts import (
    ConflictScan,
    ConflictSummary,
    default_gates,
    summarise_conflicts,
    token_gates,
    with_quadrants,
)
from core.control.eaft import LossConfig
from core.control.entropy import Cuts, Thresholds
from core.control.finetune_data import FinetuneLoad
from dashboard.control import charts as cf
from dashboard.control import plane_charts
from dashboard.control.token_panel import show_conflict_table, show_examples, show_export
from dashboard.control.verdict_panel import show_trainer_exports, show_verdict, verdict_for_scan

MODE_KEY = "finetune_threshold_mode"
ALPHA_KEY = "finetune_alpha"
# Threshold defaults per mode (the CLI's `eaft-stats`): percentiles of this file's tokens, or
# values of p and H~. Each mode keeps its own inputs, so switching does not carry 15 over as a
# probability.
THRESHOLD_DEFAULTS = {"percentile": (15.0, 15.0, 50.0), "absolute": (0.1, 0.2, 0.5)}
THRESHOLD_HELP = {
    "percentile": "bottom p% of this file's tokens by p, and by H~ (the paper's pilot: 15 and "
                  "15); uncertain above that percentile of H~",
    "absolute": "a probability for p and values of H~ (0 = sure, 1 = as spread as the top K)",
}


# ---------------------------------------------------------------------------- thresholds


def threshold_inputs(mode: str, disabled: bool = False) -> tuple[float, float, float]:
    """The three cuts of one mode (their own widgets, so each mode keeps its values)."""
    p0, h0, u0 = THRESHOLD_DEFAULTS[mode]
    percent = mode == "percentile"
    cols = st.columns(3)
    p = cols[0].number_input("low p: " + ("percentile" if percent else "p at most"),
                             min_value=0.0, max_value=100.0 if percent else 1.0, value=p0,
                             step=1.0 if percent else 0.01, key=f"finetune_{mode}_p",
                             disabled=disabled, format="%.1f" if percent else "%.3f")
    h = cols[1].number_input("low H~: " + ("percentile" if percent else "H~ at most"),
                             min_value=0.0, max_value=100.0 if percent else 10.0, value=h0,
                             step=1.0 if percent else 0.01, key=f"finetune_{mode}_h",
                             disabled=disabled, format="%.1f" if percent else "%.3f")
    u = cols[2].number_input("uncertain: " + ("percentile of H~" if percent else "H~ at least"),
                             min_value=0.0, max_value=100.0 if percent else 10.0, value=u0,
                             step=1.0 if percent else 0.05, key=f"finetune_{mode}_u",
                             disabled=disabled, format="%.1f" if percent else "%.3f")
    return float(p), float(h), float(u)


def choose_thresholds() -> tuple[Thresholds, Thresholds, float] | None:
    """The chosen thresholds, the other mode's defaults (to count its conflicts too) and EAFT's
    alpha; None (with an error) when a cut is invalid."""
    left, right = st.columns([3, 1])
    with left:
        mode = str(st.radio("Cut the plane by", list(THRESHOLD_DEFAULTS), key=MODE_KEY,
                            horizontal=True, format_func=lambda m: {
                                "percentile": "percentiles of this file",
                                "absolute": "absolute values"}[m]))
        st.caption(THRESHOLD_HELP[mode])
        values = threshold_inputs(mode)
    alpha = right.number_input("EAFT alpha", min_value=0.0, max_value=5.0, value=1.0, step=0.25,
                               key=ALPHA_KEY, help="EAFT weighs each token by H~^alpha")
    other = "absolute" if mode == "percentile" else "percentile"
    p_other, h_other, u_other = THRESHOLD_DEFAULTS[other]
    try:
        chosen = Thresholds(values[0], values[1], values[2], mode=mode)
        compared = Thresholds(p_other, h_other, u_other, mode=other)
    except ValueError as error:
        st.error(str(error))
        return None
    return chosen, compared, float(alpha)


def cut_sentence(thresholds: Thresholds, p_cut: float, h_cut: float, u_cut: float) -> str:
    where = (f" (the {thresholds.p:g}th and {thresholds.h:g}th percentiles of this file)"
             if thresholds.mode == "percentile" else "")
    return (f"confident conflict: p ≤ **{p_cut:.3g}** and H~ ≤ **{h_cut:.3g}**{where}; "
            f"uncertain: H~ ≥ **{u_cut:.3g}**")


# ---------------------------------------------------------------------------- the results


def export_gates(tokens: pd.DataFrame, thresholds: Thresholds,
                 alpha: float) -> dict[str, np.ndarray]:
    """Per-token weights of every gate worth exporting (percentile gates over the whole scan);
    the three-way gate uses the page's conflict cuts."""
    configs = {**default_gates(alpha),
               "hard_mask": LossConfig(kind="hard_mask"),
               "sigmoid": LossConfig(kind="sigmoid"),
               "three_way": LossConfig(kind="three_way", alpha=alpha, conflict=thresholds)}
    return token_gates(tokens, configs)


def show_headline(summary: ConflictSummary, compared_count: int, compared: Thresholds,
                  n_examples: int) -> None:
    quadrants = summary.quadrants

    def conflict(column: str) -> float:
        return float(cf.numbers(quadrants, column).loc["confident_conflict"])

    cols = st.columns(5)
    cols[0].metric("response tokens", f"{summary.n_tokens:,}",
                   help=f"in {n_examples} example(s)")
    cols[1].metric("confident conflicts", f"{int(conflict('n_tokens'))}",
                   f"{conflict('token_share'):.1%} of tokens", delta_color="off",
                   delta_arrow="off")
    cols[2].metric("their share of SFT loss", f"{conflict('loss_share'):.1%}")
    cols[3].metric("of SFT / EAFT gradient",
                   f"{conflict('sft_grad_share'):.1%} / {conflict('eaft_grad_share'):.1%}")
    label = ("at absolute cuts" if compared.mode == "absolute" else "at percentile cuts")
    cuts = (f"p ≤ {compared.p:g}, H~ ≤ {compared.h:g}" if compared.mode == "absolute"
            else f"bottom {compared.p:g}% / {compared.h:g}%")
    cols[4].metric(f"conflicts {label}", f"{compared_count}", cuts, delta_color="off",
                   delta_arrow="off",
                   help="The same count under the other way of cutting the plane. Percentile "
                        "cuts are relative to the file: when the model is sure (low H~) it is "
                        "mostly right, so the bottom 15% by p and the bottom 15% by H~ barely "
                        "overlap and few conflicts are found; absolute cuts say what 'low' "
                        "means.")


def show_plane(tokens: pd.DataFrame, gates: dict[str, np.ndarray], cuts: Cuts) -> None:
    st.markdown("**The entropy-probability plane** (the paper's figure)")
    p = tokens["p"].to_numpy(dtype=float)
    h = tokens["entropy_norm"].to_numpy(dtype=float)
    figures = plane_charts.plane_figures(p, h, tokens["grad_norm"].to_numpy(dtype=float),
                               {"sft": gates["sft"], "eaft": gates["eaft"]}, cuts,
                               labels=cf.hover_labels(tokens))
    cols = st.columns(3)
    for col, name in zip(cols, ("density", "sft", "eaft"), strict=True):
        col.plotly_chart(figures[name], key=f"finetune_plane_{name}")
    st.caption("Left: where the response tokens sit (darker = more tokens; the crosses are the "
               "confident conflicts, hover one for its tokens). Middle and right: where the "
               "gradient of each loss goes (||dCE/dlogits|| times the token's weight), both as "
               "a share of SFT's total. SFT pushes hardest on low-p tokens, the confident "
               "conflicts among them; EAFT weighs each token by H~^alpha, so it barely touches "
               "the low-entropy corner. Its map is lighter overall too (its weights are ≤ 1), "
               "but under Adam that global scale cancels: what counts is where the weight goes.")


def show_shares(summary: ConflictSummary) -> None:
    quadrants = summary.quadrants
    left, right = st.columns(2)
    left.plotly_chart(cf.quadrant_share_figure(quadrants), key="finetune_shares")
    table = cf.quadrant_table(quadrants)
    right.dataframe(table, hide_index=True, column_config={
        "n_tokens": st.column_config.NumberColumn("tokens (n)"),
        **{title: st.column_config.NumberColumn(title, format="percent")
           for title in cf.SHARE_TITLES.values()}})
    right.caption("Share of the tokens, of the summed SFT loss, and of the gradient pressure "
                  "under SFT and under EAFT in each quadrant.")


def show_results(scan: ConflictScan, load: FinetuneLoad, name: str) -> None:
    """Everything drawn from one scan: the verdict on EAFT first (above the thresholds, which do
    not change it), then the plane and tables under the chosen thresholds (no model call)."""
    stem = Path(name).stem
    verdict_box = st.container()
    st.markdown("**Thresholds**")
    picked = choose_thresholds()
    if picked is None:
        return
    thresholds, compared, alpha = picked
    verdict = verdict_for_scan(scan, alpha)
    if verdict is not None:
        with verdict_box:
            show_verdict(verdict)
    tokens = scan.tokens
    try:
        summary = summarise_conflicts(tokens, thresholds, default_gates(alpha))
        compared_marked = with_quadrants(tokens, compared)
    except ValueError as error:
        st.error(str(error))
        return
    cuts = summary.cuts
    st.caption(cut_sentence(thresholds, cuts.p, cuts.h, cuts.uncertain))
    compared_count = int((compared_marked["quadrant"] == "confident_conflict").sum())
    show_headline(summary, compared_count, compared, scan.n_examples)
    gates = export_gates(tokens, thresholds, alpha)
    marked = with_quadrants(tokens, thresholds).assign(weight_eaft=gates["eaft"])
    show_plane(marked, gates, cuts)
    show_shares(summary)
    show_conflict_table(marked, stem)
    show_examples(marked, thresholds, {e.id: e for e in load.examples})
    show_export(marked, gates, scan, alpha, stem)
    if verdict is not None:
        show_trainer_exports(verdict, scan, alpha, name, stem)
