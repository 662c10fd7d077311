"""The Traces page's corpus view of a file scored with a probe: the metrics beside the
baselines (a typed `core.diagnose.report.EvaluationReport`), the dynamic metrics, ROC curves,
the layer sweep, residual time and the recovery statistic, and the downloads."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.data.traces import traces_to_jsonl
from core.diagnose.report import EvaluationReport
from dashboard.common.widgets import download, figure_download
from dashboard.diagnose import corpus_charts as cd
from dashboard.diagnose import probe_state as dstate
from dashboard.diagnose.probe_picker import ScoredFile

ROC_LEVEL_KEY = "probe_roc_level"
RECOVERY_K_KEY = "probe_recovery_k"
ROC_LEVELS = {"step": "steps (step probe vs step labels)",
              "final": "whole chains (prefix score at the last step)",
              "prefix": "every prefix (prefix score vs prefix labels)"}
SCORE_FORMAT = "%.3f"
# pixels: the scorer's name and the AUROCs and leads with their intervals fit without scrolling
COLUMN_WIDTHS = {"scores": 240, "step_auroc": 170, "step_lead": 165, "final_auroc": 170,
                 "final_lead": 165}


def show_metrics(scored: ScoredFile, report: EvaluationReport) -> pd.DataFrame:
    """The metrics table (probes beside the baselines, with intervals and the probes' lead over
    each), the lead over the text-only classifier and the last-token probe in words, and the
    dynamic metrics; returns the table (for its download)."""
    st.markdown(f"**Metrics** over {report.n_chains} chains and {report.n_steps} steps, alarm "
                f"threshold {scored.threshold:.3f}; the baselines beside the probes, with the "
                "probes' lead over each (the text-only classifier and the last-token probe "
                "highlighted). n/a: the file's labels cannot support the number.")
    table = cd.metrics_table(report)
    key_rows = {cd.SCORER_TITLES[n] for n in cd.KEY_BASELINES}
    st.dataframe(cd.shown_table(table).style.apply(lambda r: [
        "background-color: rgba(242, 183, 1, 0.14)" if r["scores"] in key_rows else ""
        for _ in r], axis=1), hide_index=True, column_config={
            key: st.column_config.TextColumn(title, width=COLUMN_WIDTHS.get(key, "small"))
            for key, title in cd.SHOWN_TITLES.items()})
    counts = report.final_counts
    n_problems = (report.intervals or {}).get("n_problems")
    st.caption(f"Intervals: {dstate.BOOTSTRAP_RESAMPLES} bootstrap resamples of problems "
               + (f"({n_problems}; " if n_problems else "(")
               + "all chains of a drawn problem together, as they are not independent); a lead "
               "is paired: the probes and the baseline on the same resample. The final AUROC "
               f"rests on {counts.positive} chains that went wrong and {counts.negative} sound "
               "ones.")
    for name in cd.KEY_BASELINES:
        sentence = cd.lead_sentence(report, name)
        if sentence:
            st.markdown(sentence)
    missing = cd.missing_key_baselines(report)
    if missing:
        st.caption(f"No {' and no '.join(missing)} in this comparison: the probe file was "
                   "trained before they were part of it; retrain it (`telltale train`) to "
                   "see whether the probes know more than the words.")
    with st.expander("Dynamic metrics (how the prefix alarm moves along a chain)"):
        st.dataframe(cd.dynamic_table(report), hide_index=True, column_config={
            "value": st.column_config.NumberColumn(f"at the alarm threshold "
                                                   f"{scored.threshold:.2f}",
                                                   format=SCORE_FORMAT),
            "at_0_5": st.column_config.NumberColumn("at 0.5 (the paper's)",
                                                    format=SCORE_FORMAT),
            "meaning": st.column_config.TextColumn("meaning", width="large")})
    return table


def show_curves(scored: ScoredFile, stem: str) -> None:
    """ROC curves at a chosen level, and the probe's layer sweep when it has one."""
    left, right = st.columns(2)
    with left:
        level = st.selectbox("ROC curves of", list(ROC_LEVELS), key=ROC_LEVEL_KEY,
                             format_func=lambda v: ROC_LEVELS[v])
        curves = dstate.file_roc_curves(scored.key, level, scored.chains)
        if curves:
            fig = cd.roc_figure(curves, f"ROC: {ROC_LEVELS[level].split(' (')[0]}")
            st.plotly_chart(fig, key="probe_roc_chart")
            figure_download("Download the ROC curves (HTML)", fig, f"{stem}-roc-{level}.html",
                            key="probe_roc_download")
        else:
            st.info("No ROC curve: the labels at this level hold a single class or none.")
    with right:
        sweep = scored.bundle.meta.metrics.get("sweep") or []
        if sweep:
            fig = cd.sweep_figure(sweep, scored.bundle.meta.layer)
            st.plotly_chart(fig, key="probe_sweep_chart")
            figure_download("Download the layer sweep (HTML)", fig, f"{stem}-sweep.html",
                            key="probe_sweep_download")
        else:
            st.info(f"This probe was trained at one layer ({scored.bundle.meta.layer}), so it "
                    "holds no layer-sweep curve; train with a sweep to see one.")


def show_recoveries(report: EvaluationReport, k: int, stem: str) -> None:
    """Residual time (how long the alarm lingers after the text recovers) and the recovery
    statistic with its run length k."""
    left, right = st.columns(2)
    with left:
        residual = report.residual_time
        summary = residual.summary() if residual is not None else {}
        if residual is not None and summary.get("n"):
            fig = cd.residual_time_figure(residual)
            st.plotly_chart(fig, key="probe_residual_chart")
            st.caption(f"mean {summary['mean']:.2f}, median {summary['median']:.1f}, "
                       f"90th percentile {summary['p90']:.1f}, max {summary['max']} steps.")
            figure_download("Download the residual-time histogram (HTML)", fig,
                            f"{stem}-residual-time.html", key="probe_residual_download")
        else:
            st.info("No residual time: no chain's step labels go back from 1 to 0.")
    with right:
        st.number_input("Recovery statistic: run length k", min_value=1, max_value=20, value=5,
                        key=RECOVERY_K_KEY, help="chains with at least k consecutive "
                        "hallucinated steps")
        share = report.recovery.share_correct
        st.metric(f"still correct after {k}+ hallucinated steps",
                  "n/a" if share is None else f"{share:.1%}",
                  help="share of those chains whose final answer is correct")
        st.caption(cd.recovery_sentence(report.recovery))


def downloads(scored: ScoredFile, report: EvaluationReport, table: pd.DataFrame,
              stem: str) -> None:
    meta = scored.bundle.meta
    ordered = [scored.traces[c.trace_id] for c in scored.chains]

    def scored_jsonl() -> str:
        from core.diagnose.evaluation import scored_traces

        return traces_to_jsonl(scored_traces(ordered, scored.chains, threshold=scored.threshold,
                                             layer=meta.layer, probe_name=scored.probe.name))

    cols = st.columns(3)
    download("Download the scored chains (JSONL)", scored_jsonl, f"{stem}-scored.jsonl",
             "application/jsonl", key="probe_download_scored", where=cols[0])
    download("Download the metrics (JSON)", lambda: dstate.report_json(report),
             f"{stem}-metrics.json", "application/json", key="probe_download_json",
             where=cols[1])
    download("Download the metrics (CSV)", lambda: table.to_csv(index=False),
             f"{stem}-metrics.csv", "text/csv", key="probe_download_csv", where=cols[2])


def show_corpus(scored: ScoredFile, stem: str) -> None:
    """Metrics with baselines, ROC curves, the layer sweep, residual time, recovery and the
    downloads."""
    st.subheader("Corpus")
    k = int(st.session_state.get(RECOVERY_K_KEY) or 5)
    report = dstate.file_report(scored.key, k, scored.chains, scored.threshold,
                                scored.step_threshold, list(scored.traces.values()))
    table = show_metrics(scored, report)
    show_curves(scored, stem)
    show_recoveries(report, k, stem)
    downloads(scored, report, table, stem)
