"""The probe view's figures and tables, built from small hand-made inputs and checked by value."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from core.diagnose.metrics import DynamicMetrics, RecoveryStat, ResidualTime
from core.diagnose.report import DYNAMIC_KEYS, EvaluationReport, FinalCounts, Ranking
from dashboard.diagnose.corpus_charts import (
    dynamic_table,
    lead_sentence,
    metrics_table,
    missing_key_baselines,
    recovery_sentence,
    residual_time_figure,
    roc_figure,
    shown_table,
    sweep_figure,
)
from dashboard.diagnose.probe_charts import (
    PHASE_STYLE,
    STEP_COLUMNS,
    flagged_steps,
    neighbours,
    probe_chain_figure,
    token_heatmap_html,
)

NAN = float("nan")


def steps() -> pd.DataFrame:
    """Chain a: grounded, spike, collapse, deceptive stability; chain b: two steps."""
    return pd.DataFrame({
        "trace_id": ["a", "a", "a", "a", "b", "b"],
        "step": [0, 1, 2, 3, 0, 1],
        "text": ["3 + 4 = 7", "7 * 2 = 15", "15 - 1 = 14", "Answer: 14", "1 + 1 = 2",
                 "<b>2</b> & 2"],
        "step_score": [0.1, 0.9, 0.8, 0.2, 0.3, 0.7],
        "prefix_score": [0.2, 0.3, 0.7, 0.8, 0.1, 0.2],
        "alarm": [False, False, True, True, False, False],
        "label": [0, 1, None, 0, 0, 1],
        "prefix_label": [0, 1, 1, 1, 0, 1],
        "phase": ["grounded", "spike", "collapse", "deceptive stability", "grounded", "spike"],
    }, columns=list(STEP_COLUMNS))


def named(fig: go.Figure, name: str) -> go.Scatter | go.Bar:
    return next(t for t in fig.data if t.name == name)


def test_phase_names_match_core() -> None:
    from core.diagnose.evaluation import PHASES

    assert tuple(PHASE_STYLE) == PHASES


def test_chain_figure_bars_line_and_hover() -> None:
    fig = probe_chain_figure(steps(), "a", threshold=0.6, step_threshold=0.5)
    bars = named(fig, "step score")
    assert list(bars.x) == [0, 1, 2, 3] and list(bars.y) == [0.1, 0.9, 0.8, 0.2]
    assert [list(c[:2]) for c in bars.customdata] == [["a", 0], ["a", 1], ["a", 2], ["a", 3]]
    assert bars.customdata[1][2] == "7 * 2 = 15" and "%{customdata[2]}" in bars.hovertemplate
    line = named(fig, "prefix score")
    assert list(line.y) == [0.2, 0.3, 0.7, 0.8] and "lines" in line.mode


def test_chain_figure_thresholds_and_phase_shading() -> None:
    fig = probe_chain_figure(steps(), "a", threshold=0.6, step_threshold=0.5)
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert {(s.y0, s.line.dash) for s in lines} == {(0.6, "dash"), (0.5, "dot")}
    rects = sorted((s for s in fig.layout.shapes if s.type == "rect" and s.name != "focus"),
                   key=lambda s: s.x0)
    assert [(r.x0, r.x1) for r in rects] == [(-0.5, 0.5), (0.5, 1.5), (1.5, 2.5), (2.5, 3.5)]
    assert [r.fillcolor for r in rects] == [PHASE_STYLE[p][0] for p in (
        "grounded", "spike", "collapse", "deceptive stability")]
    legend = [t.name for t in fig.data if t.legendgroup == "phase"]
    assert legend == ["grounded", "spike", "deceptive stability", "collapse"]


def test_chain_figure_marks_true_labels_and_the_focus() -> None:
    fig = probe_chain_figure(steps(), "a", threshold=0.6, step_threshold=0.5, focus_step=2)
    assert list(named(fig, "labelled hallucinated").x) == [1]
    assert list(named(fig, "labelled correct").x) == [0, 3]  # step 2 has no label
    focus = [s for s in fig.layout.shapes if s.name == "focus"]
    assert [(f.x0, f.x1, f.y1) for f in focus] == [(2 - 0.34, 2 + 0.34, 0.8)]  # around bar 2
    fig = probe_chain_figure(steps(), "b", threshold=0.6, step_threshold=0.5)
    assert not [s for s in fig.layout.shapes if s.name == "focus"]
    assert fig.layout.title.text.startswith("Chain b")


def test_chain_figure_marks_the_steps_back_on_track() -> None:
    table = steps()
    table.loc[table["trace_id"] == "a", "label"] = [0, 1, 0, 0]
    table.loc[table["trace_id"] == "a", "prefix_label"] = [0, 1, 0, 0]  # recovered after step 1
    fig = probe_chain_figure(table, "a", threshold=0.6, step_threshold=0.5,
                             outcome="stated answer 14 · gold 14 · right")
    back = named(fig, "back on track")
    assert list(back.x) == [2, 3] and back.marker.symbol == "diamond"
    assert list(named(fig, "labelled correct").x) == [0]  # the recovered steps are diamonds
    assert list(named(fig, "labelled hallucinated").x) == [1]
    assert back.marker.color != named(fig, "labelled correct").marker.color
    assert "stated answer 14 · gold 14 · right" in fig.layout.title.text
    # chain b never recovers (its last prefix label is 1): no diamond, no entry in the legend
    fig = probe_chain_figure(table, "b", threshold=0.6, step_threshold=0.5)
    assert "back on track" not in {t.name for t in fig.data}
    assert "<br>" not in fig.layout.title.text


def test_chain_figure_without_step_probe_draws_the_prefix_only() -> None:
    table = steps()
    table["step_score"] = NAN
    table["phase"] = ""
    fig = probe_chain_figure(table, "a", threshold=0.6, step_threshold=0.5)
    assert "step score" not in {t.name for t in fig.data}
    assert [s.y0 for s in fig.layout.shapes if s.type == "line"] == [0.6]
    assert not [t for t in fig.data if t.legendgroup == "phase"]


def test_chain_figure_rejects_a_missing_chain_or_column() -> None:
    with pytest.raises(ValueError, match="No scored step of chain 'zz'"):
        probe_chain_figure(steps(), "zz", 0.5, 0.5)
    with pytest.raises(ValueError, match="lacks the column"):
        probe_chain_figure(steps().drop(columns=["phase"]), "a", 0.5, 0.5)


def test_flagged_steps_across_the_file_most_suspicious_first() -> None:
    flagged = flagged_steps(steps(), step_threshold=0.5, threshold=0.6)
    assert list(zip(flagged["trace_id"], flagged["step"], strict=True)) == [
        ("a", 1), ("a", 2), ("b", 1)]
    assert flagged["step_score"].tolist() == [0.9, 0.8, 0.7]
    assert flagged["label"].tolist() == ["hallucinated", "unlabelled", "hallucinated"]
    assert list(flagged.index) == [0, 1, 2]  # row positions = what a selection returns
    assert flagged_steps(steps(), step_threshold=0.95, threshold=0.6).empty
    assert flagged_steps(steps().iloc[:0], 0.5, 0.5).empty


def test_flagged_steps_without_step_probe_use_the_alarm() -> None:
    table = steps()
    table["step_score"] = NAN
    flagged = flagged_steps(table, step_threshold=0.5, threshold=0.6)
    assert list(zip(flagged["trace_id"], flagged["step"], strict=True)) == [("a", 3), ("a", 2)]


def test_neighbours_clip_at_the_chain_ends() -> None:
    near = neighbours(steps(), "a", 0)
    assert near["step"].tolist() == [0, 1, 2]
    assert neighbours(steps(), "a", 2, width=1)["step"].tolist() == [1, 2, 3]
    assert neighbours(steps(), "b", 1)["label"].tolist() == ["correct", "hallucinated"]


@dataclass(frozen=True)
class Token:
    step: int
    text: str
    score: float


def test_token_heatmap_escapes_and_outlines_the_focus() -> None:
    tokens = [Token(0, "3 +", 0.1), Token(0, " 4", 0.2), Token(1, "\n<b>", 0.9),
              Token(2, " x", 0.5)]
    page = token_heatmap_html(tokens, focus_step=1, steps=[0, 1])
    assert "&lt;b&gt;" in page and "<b>" not in page
    assert 'title="score 0.900"' in page and "step 2" not in page
    assert page.count("2px solid") == 1  # only the focus step is outlined
    assert page.index("step 0") < page.index("2px solid") < page.index("&lt;b&gt;")
    assert "rgba(228, 87, 86, 0.765)" in page  # 0.9 * 0.85: the darker the higher
    assert "step 2" in token_heatmap_html(tokens, focus_step=0)  # default: every step


def report(intervals: dict | None = None) -> EvaluationReport:
    return EvaluationReport(
        n_chains=3, n_steps=9, threshold=0.4,
        probes=Ranking(step_auroc=0.9, step_auprc=0.8, prefix_auroc=0.7, final_auroc=None),
        step_f1=0.6, final_counts=FinalCounts(positive=2, negative=1),
        baselines={"mean_nll": Ranking(0.6, 0.5, 0.55, None),
                   "text": Ranking(0.85, 0.7, 0.6, 0.8)},
        dynamic=DynamicMetrics(snap_m=0.2, lag=1.0, icr=None, brake_s=None, ling_t=None,
                               heal_3=None, r_score=None, fp_len=None, n_onsets=1,
                               n_recoveries=0),
        residual_time=ResidualTime(values=np.array([0, 2, 2]),
                                   censored=np.array([False, True, False])),
        recovery=RecoveryStat(k=5, n_chains=0, n_correct=0, share_correct=None, ci_low=None,
                              ci_high=None),
        intervals=intervals,
        dynamic_at_0_5=DynamicMetrics(snap_m=0.25, lag=2.0, icr=0.5, brake_s=None,
                                      ling_t=None, heal_3=None, r_score=None, fp_len=1.0,
                                      n_onsets=1, n_recoveries=0))


INTERVALS = {
    "unit": "problem", "n_problems": 3,
    "probe": {"step_auroc": [0.85, 0.95], "final_auroc": None},
    "baselines": {"mean_nll": {"step_auroc": [0.5, 0.7], "final_auroc": None},
                  "text": {"step_auroc": [0.8, 0.9], "final_auroc": [0.6, 0.95]}},
    "lead": {"mean_nll": {"step_auroc": [0.2, 0.4], "final_auroc": None},
             "text": {"step_auroc": [-0.02, 0.11], "final_auroc": None}}}


def test_metrics_table_puts_probes_beside_baselines_with_their_lead() -> None:
    table = metrics_table(report())
    assert table.columns.tolist() == ["scores", "step_auroc", "step_auprc", "prefix_auroc",
                                      "final_auroc", "step_f1", "step_lead", "final_lead"]
    assert table["scores"].tolist() == ["probes (step probe, prefix tracker)", "mean NLL",
                                        "text-only classifier (no hidden state)"]
    assert table["step_auroc"].tolist() == [0.9, 0.6, 0.85]
    assert table["final_auroc"].isna().tolist() == [True, True, False]  # unsupported: empty, not 0
    assert math.isnan(table["step_f1"][1])
    assert table["step_lead"].tolist()[1:] == pytest.approx([0.3, 0.05])  # probes - baseline
    assert table["step_lead"].isna()[0] and table["final_lead"].isna().all()  # no probe final
    with_ci = metrics_table(report(INTERVALS))
    assert with_ci["step_auroc_ci"].tolist() == ["0.850 to 0.950", "0.500 to 0.700",
                                                 "0.800 to 0.900"]
    assert with_ci["final_auroc_ci"].fillna("").tolist() == ["", "", "0.600 to 0.950"]
    assert with_ci["step_lead_ci"].fillna("").tolist() == ["", "+0.200 to +0.400",
                                                           "-0.020 to +0.110"]
    assert with_ci["final_lead_ci"].isna().all()
    shown = shown_table(with_ci)  # what the page shows: values with their intervals, as text
    assert shown.columns.tolist() == ["scores", "step_auroc", "step_lead", "final_auroc",
                                      "final_lead", "step_auprc", "prefix_auroc", "step_f1"]
    assert shown.iloc[0, 1:5].tolist() == ["0.900 (0.850 to 0.950)", "", "n/a", ""]
    assert shown.iloc[2, 1:5].tolist() == ["0.850 (0.800 to 0.900)",
                                           "+0.050 (-0.020 to +0.110)",
                                           "0.800 (0.600 to 0.950)", "n/a"]
    assert shown.iloc[1, 5:].tolist() == ["0.500", "0.550", "n/a"]  # no F1 for a baseline
    assert shown_table(table).iloc[1, 2] == "+0.300"  # without intervals: the lead alone


def test_lead_sentence_says_whether_the_probes_beat_the_words() -> None:
    text = lead_sentence(report(INTERVALS), "text")
    assert text == ("Probes' lead over the text-only classifier (no hidden state): "
                    "step AUROC +0.050 (95% interval -0.020 to +0.110). On this file the "
                    "probes are not shown to differ at the step level.")
    assert lead_sentence(report(INTERVALS), "mean_nll") is not None and \
        "ahead at the step level" in str(lead_sentence(report(INTERVALS), "mean_nll"))
    # without intervals: the lead alone, no verdict
    assert lead_sentence(report(), "text") == ("Probes' lead over the text-only classifier "
                                               "(no hidden state): step AUROC +0.050.")
    assert lead_sentence(report(), "last_token") is None  # not in the report
    assert missing_key_baselines(report()) == ["last-token probe"]


def test_dynamic_table_explains_each_metric_at_both_thresholds() -> None:
    table = dynamic_table(report())
    assert table["metric"].tolist() == list(DYNAMIC_KEYS)  # the paper's eight, in its order
    assert table["value"].tolist()[:2] == [0.2, 1]
    assert table["at_0_5"].tolist()[:3] == [0.25, 2.0, 0.5]
    assert all(table["meaning"])
    empty = dynamic_table(replace(report(), dynamic=None, dynamic_at_0_5=None))
    assert empty["metric"].tolist() == list(DYNAMIC_KEYS) and empty["value"].isna().all()
    assert empty["at_0_5"].isna().all()


@dataclass(frozen=True)
class Curve:
    fpr: np.ndarray
    tpr: np.ndarray
    auroc: float


def test_roc_figure_names_each_scorer_with_its_auroc() -> None:
    fig = roc_figure({"probe": Curve(np.array([0, 0, 1.0]), np.array([0, 1, 1.0]), 1.0),
                      "max_nll": Curve(np.array([0, 0.5, 1]), np.array([0, 0.5, 1]), 0.5)},
                     "ROC: steps")
    names = [t.name for t in fig.data]
    assert names == ["chance", "probes (step probe, prefix tracker) (1.000)", "max NLL (0.500)"]
    assert list(fig.data[1].y) == [0, 1, 1] and fig.data[1].line.width > fig.data[2].line.width
    assert fig.data[1].line.color != fig.data[2].line.color  # a baseline never looks like it
    fig = roc_figure({"text": Curve(np.array([0, 1.0]), np.array([0, 1.0]), 0.5),
                      "last_token": Curve(np.array([0, 1.0]), np.array([0, 1.0]), 0.5)}, "x")
    assert [t.name for t in fig.data][1:] == [
        "text-only classifier (no hidden state) (0.500)", "last-token probe (0.500)"]
    assert fig.data[1].line.dash == "dash" and fig.data[2].line.dash == "solid"


def test_sweep_figure_marks_the_chosen_layer() -> None:
    rows = [{"layer": 12, "step_auroc": 0.8, "final_auroc": 0.6, "prefix_auroc": 0.7},
            {"layer": 4, "step_auroc": 0.7, "final_auroc": None, "prefix_auroc": 0.6}]
    fig = sweep_figure(rows, chosen_layer=12)
    step = named(fig, "step AUROC")
    assert list(step.x) == [4, 12] and list(step.y) == [0.7, 0.8]  # sorted by layer
    assert [s.x0 for s in fig.layout.shapes] == [12]
    with pytest.raises(ValueError, match="no layer sweep"):
        sweep_figure([], 3)


def test_residual_time_figure_counts_recoveries() -> None:
    residual = report().residual_time
    assert residual is not None
    fig = residual_time_figure(residual)
    assert list(fig.data[0].x) == [0, 1, 2] and list(fig.data[0].y) == [1, 0, 2]
    assert "3 recoveries (1 still alarmed" in fig.layout.title.text


def test_recovery_sentence_with_and_without_chains() -> None:
    assert "cannot be measured" in recovery_sentence(report().recovery)
    text = recovery_sentence(RecoveryStat(k=5, n_chains=20, n_correct=1, share_correct=0.05,
                                          ci_low=0.009, ci_high=0.236))
    assert text == ("Of the 20 chain(s) with at least 5 consecutive hallucinated steps, 1 still "
                    "reached a correct answer: 5.0% (95% interval 0.9% to 23.6%).")
