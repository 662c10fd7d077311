"""The Traces page's views of a file scored with a probe: headline numbers, the flagged-step
list, and one chain's scores with the step inspector (the corpus view is `corpus_panel`).

The step in focus (shown in the inspector) is chosen by selecting a flagged step or clicking a
bar of the chain chart; `resolve_focus` reads both selections before the chain picker is drawn,
so picking a flagged step of another chain can switch the chain picker to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd
import streamlit as st

from core.data.prefix_labels import recovered_steps
from dashboard.common.widgets import figure_download
from dashboard.diagnose import probe_charts as cd
from dashboard.diagnose import probe_state as dstate
from dashboard.diagnose.probe_picker import ScoredFile
from dashboard.diagnose.trace_charts import outcome_text

FOCUS_KEY = "probe_focus"  # session state: [trace_id, step] of the inspected step
SEEN_KEY = "probe_focus_seen"  # session state: the selections seen on the last run
SCORE_FORMAT = "%.3f"


def table_key(scored: ScoredFile) -> str:
    return f"probe_flagged_{scored.key}"


def chart_key(scored: ScoredFile, trace_id: str) -> str:
    return f"probe_chart_{scored.key}_{trace_id}"


def _table_pick(value: Any, flagged: pd.DataFrame) -> tuple[str, list[Any] | None]:
    """(what is selected, as a comparable string; [trace_id, step] of the selected row)."""
    rows = list(((value or {}).get("selection") or {}).get("rows") or [])
    pick = None
    if rows and 0 <= rows[0] < len(flagged):
        row = flagged.iloc[rows[0]]
        pick = [str(row["trace_id"]), int(row["step"])]
    return json.dumps(rows), pick


def _chart_pick(value: Any) -> tuple[str, list[Any] | None]:
    """(what is selected, as a comparable string; [trace_id, step] of the clicked bar)."""
    points = list(((value or {}).get("selection") or {}).get("points") or [])
    picks = [p.get("customdata") for p in points if isinstance(p.get("customdata"), list)]
    pick = [str(picks[0][0]), int(picks[0][1])] if picks else None
    return json.dumps(pick), pick


def decide_focus(seen: Mapping[str, Any], table: tuple[str, list | None],
                 chart: tuple[str, list | None], chain: str | None,
                 focus: list | None) -> list | None:
    """The step to inspect after this run's selections, from what changed since the last run:
    a new flagged-step selection wins, then a new bar click; picking another chain clears the
    focus; otherwise it stays."""
    if table[0] != seen.get("table") and table[1] is not None:
        return table[1]
    if chart[0] != seen.get("chart") and chart[1] is not None:
        return chart[1]
    if chain != seen.get("chain"):
        return None
    return focus


def resolve_focus(scored: ScoredFile, flagged: pd.DataFrame, chain_key: str,
                  ids: list[str]) -> None:
    """Update the focus from the selections; a focus in another chain moves the chain picker
    (`chain_key`, not drawn yet on this run) to it."""
    chain = st.session_state.get(chain_key)
    table = _table_pick(st.session_state.get(table_key(scored)), flagged)
    chart = _chart_pick(st.session_state.get(chart_key(scored, str(chain))))
    seen = st.session_state.get(SEEN_KEY) or {}
    focus = decide_focus(seen, table, chart, chain, st.session_state.get(FOCUS_KEY))
    if focus is not None and focus[0] in ids and focus[0] != chain:
        st.session_state[chain_key] = chain = focus[0]
    st.session_state[FOCUS_KEY] = focus
    st.session_state[SEEN_KEY] = {"table": table[0], "chart": chart[0], "chain": chain}


def headline(scored: ScoredFile, flagged: pd.DataFrame) -> None:
    steps = scored.steps
    alarmed = steps.groupby("trace_id")["alarm"].any()
    cols = st.columns(5)
    cols[0].metric("chains scored", len(scored.chains))
    cols[1].metric("steps scored", len(steps))
    cols[2].metric("flagged steps", len(flagged),
                   help="step score above the step threshold (or, without a step probe, prefix "
                        "score above the alarm threshold)")
    cols[3].metric("chains with an alarm", int(alarmed.sum()),
                   help="prefix score above the alarm threshold at some step")
    report = dstate.file_report(scored.key, 5, scored.chains, scored.threshold,
                                scored.step_threshold, list(scored.traces.values()))
    value = report.probes.step_auroc
    text = report.baselines.get("text")
    lead = None if value is None or text is None or text.step_auroc is None \
        else value - text.step_auroc
    cols[4].metric("step AUROC", "n/a" if value is None else f"{value:.3f}",
                   delta=None if lead is None else f"{lead:+.3f} over text-only",
                   help="on this file's step labels; n/a without them. The change: the probes' "
                        "lead over the text-only classifier (the words, no hidden state); its "
                        "interval is under Corpus")


def show_flagged(scored: ScoredFile, flagged: pd.DataFrame) -> None:
    st.subheader("Flagged steps")
    if flagged.empty:
        st.info("The probe flags no step of this file.")
        return
    st.caption("Every step the probe flags, most suspicious first; sort by any column. Select a "
               "row to inspect the step in its chain (below, under **Chain**).")
    st.dataframe(flagged, key=table_key(scored), on_select="rerun",
                 selection_mode="single-row", hide_index=True, height=min(38 + 35 * len(flagged),
                                                                          320),
                 column_config={
                     "trace_id": st.column_config.TextColumn("chain"),
                     "step_score": st.column_config.NumberColumn("step score",
                                                                 format=SCORE_FORMAT),
                     "prefix_score": st.column_config.NumberColumn("prefix score",
                                                                   format=SCORE_FORMAT),
                     "label": st.column_config.TextColumn("true label"),
                     "text": st.column_config.TextColumn("step text", width="large")})


def show_chain_scores(scored: ScoredFile, trace_id: str, stem: str) -> None:
    """The chain's probe chart (bars clickable) and the inspector of the step in focus."""
    if trace_id not in set(scored.steps["trace_id"]):
        st.info(f"Chain {trace_id} was not scored (left out above).")
        return
    chain = scored.steps[scored.steps["trace_id"] == trace_id]
    focus = st.session_state.get(FOCUS_KEY)
    if not (isinstance(focus, list) and focus[0] == trace_id):
        ranked = chain.sort_values(["step_score", "prefix_score"], ascending=False,
                                   na_position="last")
        focus = [trace_id, int(ranked["step"].iloc[0])]  # the chain's most suspicious step
    step = int(focus[1])
    fig = cd.probe_chain_figure(scored.steps, trace_id, scored.threshold,
                                scored.step_threshold, focus_step=step,
                                outcome=outcome_text(scored.traces[trace_id]))
    st.plotly_chart(fig, key=chart_key(scored, trace_id), on_select="rerun",
                    selection_mode="points")
    figure_download("Download this chart (HTML)", fig, f"{stem}-{trace_id}-probe.html",
                    key="probe_chart_download")
    inspect_step(scored, trace_id, step)


def _label_text(value: Any) -> str:
    return {None: "unknown", 0: "0 · correct", 1: "1 · wrong"}[cd.known_label(value)]


def inspect_step(scored: ScoredFile, trace_id: str, step: int) -> None:
    """One step in its chain: scores, labels, per-token heat map and neighbours."""
    row = scored.steps[(scored.steps["trace_id"] == trace_id) & (scored.steps["step"] == step)]
    if row.empty:
        return
    rec = row.iloc[0]
    phase = f" · phase: **{rec['phase']}**" if rec["phase"] else ""
    st.markdown(f"**Step {step} of chain {trace_id}**{phase} (click a bar to inspect another "
                "step)")
    cols = st.columns(4)
    step_score = rec["step_score"]
    cols[0].metric("step score", "n/a" if pd.isna(step_score) else f"{step_score:.3f}",
                   help=f"step threshold {scored.step_threshold:.3f}")
    cols[1].metric("prefix score", f"{rec['prefix_score']:.3f}",
                   help=f"alarm threshold {scored.threshold:.3f}: the alarm is "
                        f"{'on' if rec['alarm'] else 'off'} here")
    cols[2].metric("step label", _label_text(rec["label"]),
                   help="1: this step is hallucinated (from the trace file)")
    chain = scored.steps.loc[scored.steps["trace_id"] == trace_id].sort_values("step")
    back = dict(zip(chain["step"], recovered_steps(
        [cd.known_label(v) for v in chain["prefix_label"]]), strict=True)).get(step, False)
    cols[3].metric("prefix label", "0 · back on track" if back else _label_text(
        rec["prefix_label"]), help="1: the chain up to here is in a hallucinated state; back "
                                   "on track: 0 again after a broken stretch")
    shown = [s for s in range(step - 2, step + 3) if s in set(
        scored.steps.loc[scored.steps["trace_id"] == trace_id, "step"])]
    if scored.bundle.step is not None:
        try:
            with st.spinner("Scoring each token ..."):
                tokens = dstate.chain_token_scores(
                    scored.request.model, scored.request.file_hash, scored.request.reading,
                    scored.request.probe_hash, trace_id, scored.traces[trace_id],
                    scored.bundle)
            st.html(cd.token_heatmap_html(tokens, step, shown))
            st.caption("Each token coloured by the step probe applied to that token alone "
                       "(hover a token for its score); the inspected step is outlined.")
        except Exception as error:  # noqa: BLE001 - the rest of the inspector still shows
            st.caption(f"No token heat map: {error}")
    near = cd.neighbours(scored.steps, trace_id, step)
    st.dataframe(near.style.apply(lambda r: ["font-weight: bold; background-color: "
                                             "rgba(242, 183, 1, 0.18)" if r["step"] == step
                                             else "" for _ in r], axis=1),
                 hide_index=True, column_config={
                     "step_score": st.column_config.NumberColumn("step score",
                                                                 format=SCORE_FORMAT),
                     "prefix_score": st.column_config.NumberColumn("prefix score",
                                                                   format=SCORE_FORMAT),
                     "text": st.column_config.TextColumn("text", width="large")})
