"""The dashboard's figures and tables, built from small hand-made inputs and checked by value."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import pytest

from core.data.answers import accuracy_with_chance
from core.data.prefix_labels import derive_prefix_labels, recovered_steps
from dashboard.common.charts import hover_text, issue_table
from dashboard.diagnose.trace_charts import (
    SIGNAL_TITLES,
    answers_sentence,
    chain_table,
    chance_text,
    label_name,
    labelled_scores,
    outcome_text,
    signal_by_label_figure,
    step_signal_figure,
    steps_table,
    summary_counts,
)


@dataclass(frozen=True)
class FakeStep:
    text: str
    label: int | None
    prefix_label: int | None = None


@dataclass(frozen=True)
class FakeTrace:
    id: str
    problem_id: str | None
    steps: tuple[FakeStep, ...]
    is_correct: bool | None
    answered: bool | None = None
    answer: str | None = None
    gold: str | None = None


def signals() -> pd.DataFrame:
    """Chain a: steps 0 (correct), 1 (hallucinated), 2 (unlabelled); chain b: two steps."""
    return pd.DataFrame({
        "trace_id": ["a", "a", "a", "b", "b"],
        "step": [0, 1, 2, 0, 1],
        "text": ["3 + 4 = 7", "7 * 2 = 15", "Answer: 15", "1 + 1 = 2", "<b>2</b> & 2"],
        "label": [0, 1, None, 0, 1],
        "prefix_label": [0, 1, 1, 0, 1],
        "n_tokens": [6, 6, 4, 6, 6],
        "mean_entropy": [0.5, 2.0, 1.0, 0.1, 0.2],
        "mean_nll": [0.3, 1.5, 0.7, 0.05, 0.9],
        "max_nll": [0.9, 4.0, 1.2, 0.1, 2.0],
        "min_prob": [math.exp(-0.9), math.exp(-4.0), math.exp(-1.2), math.exp(-0.1),
                     math.exp(-2.0)],
    })


def bars(fig: go.Figure) -> dict[str, go.Bar]:
    return {t.name: t for t in fig.data if isinstance(t, go.Bar)}


def test_signal_titles_cover_core_signals() -> None:
    from core.diagnose.signals import SIGNAL_NAMES

    assert set(SIGNAL_TITLES) == set(SIGNAL_NAMES)


@pytest.mark.parametrize("label, name", [(0, "correct"), (1, "hallucinated"), (None, "unlabelled"),
                                         (float("nan"), "unlabelled"), (1.0, "hallucinated")])
def test_label_name(label: object, name: str) -> None:
    assert label_name(label) == name


def test_step_figure_one_bar_per_step_coloured_by_label() -> None:
    fig = step_signal_figure(signals(), "mean_nll", trace_id="a")
    by_name = bars(fig)
    assert set(by_name) == {"correct step", "hallucinated step", "unlabelled step"}
    assert list(by_name["correct step"].x) == [0] and list(by_name["correct step"].y) == [0.3]
    assert list(by_name["hallucinated step"].x) == [1]
    assert list(by_name["hallucinated step"].y) == [1.5]
    assert list(by_name["unlabelled step"].x) == [2]
    assert by_name["hallucinated step"].marker.color != by_name["correct step"].marker.color
    assert by_name["hallucinated step"].marker.line.width > 0  # outlined
    assert by_name["correct step"].marker.line.width == 0
    assert {t.width for t in by_name.values()} == {0.7}  # same width whatever the x spacing
    assert list(fig.layout.xaxis.range) == pytest.approx([-0.6, 2.6])  # steps 0..2, no slack


def test_step_figure_marks_exactly_the_hallucinated_steps() -> None:
    fig = step_signal_figure(signals(), "max_nll", trace_id="a")
    markers = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert len(markers) == 1
    assert list(markers[0].x) == [1]
    assert markers[0].y[0] > 4.0  # above the tallest bar


def test_step_figure_without_hallucinated_steps_has_no_marker() -> None:
    df = signals()
    df.loc[df["trace_id"] == "a", "label"] = 0
    fig = step_signal_figure(df, "mean_nll", trace_id="a")
    assert not [t for t in fig.data if isinstance(t, go.Scatter)]
    assert list(bars(fig)) == ["correct step"]
    assert list(bars(fig)["correct step"].x) == [0, 1, 2]


def test_step_figure_only_shows_the_chosen_chain_and_signal() -> None:
    fig = step_signal_figure(signals(), "min_prob", trace_id="b")
    by_name = bars(fig)
    assert list(by_name["correct step"].y) == pytest.approx([math.exp(-0.1)])
    assert list(by_name["hallucinated step"].y) == pytest.approx([math.exp(-2.0)])
    assert fig.layout.yaxis.title.text == "min token probability"
    assert "lower = less sure" in fig.layout.title.text


def test_step_figure_hover_shows_escaped_step_text() -> None:
    fig = step_signal_figure(signals(), "mean_entropy", trace_id="b")
    bad = bars(fig)["hallucinated step"]
    assert list(bad.customdata) == ["&lt;b&gt;2&lt;/b&gt; &amp; 2"]
    assert "%{customdata}" in bad.hovertemplate
    good = bars(fig)["correct step"]
    assert list(good.customdata) == ["1 + 1 = 2"]


def test_step_figure_steps_sorted_even_if_rows_are_not() -> None:
    df = signals().iloc[::-1]
    df.loc[:, "label"] = 0
    fig = step_signal_figure(df, "mean_nll", trace_id="a")
    assert list(bars(fig)["correct step"].x) == [0, 1, 2]
    assert list(bars(fig)["correct step"].y) == [0.3, 1.5, 0.7]


def test_step_figure_rejects_unknown_signal_and_chain() -> None:
    with pytest.raises(ValueError, match="Unknown signal"):
        step_signal_figure(signals(), "loudness", trace_id="a")
    with pytest.raises(ValueError, match="no step of chain 'zz'"):
        step_signal_figure(signals(), "mean_nll", trace_id="zz")
    with pytest.raises(ValueError, match="lacks the column"):
        step_signal_figure(signals().drop(columns=["text"]), "mean_nll", trace_id="a")


def test_hover_text_wraps_long_steps() -> None:
    text = "word " * 40
    wrapped = hover_text(text, width=30)
    assert all(len(line) <= 30 for line in wrapped.split("<br>"))
    assert wrapped.replace("<br>", " ").split() == text.split()


def test_signal_by_label_figure_groups_steps() -> None:
    fig = signal_by_label_figure(signals(), "mean_nll")
    boxes = {t.name: t for t in fig.data}
    assert set(boxes) == {"correct (2)", "hallucinated (2)", "unlabelled (1)"}
    assert sorted(boxes["hallucinated (2)"].y) == [0.9, 1.5]
    assert sorted(boxes["correct (2)"].y) == [0.05, 0.3]
    assert [row[0] for row in boxes["hallucinated (2)"].customdata] == ["a", "b"]


def test_chain_table_counts_and_rates() -> None:
    traces = [
        FakeTrace("a", "p1", (FakeStep("x", 0), FakeStep("y", 1), FakeStep("z", None),
                              FakeStep("w", 1)), False, answered=False),
        FakeTrace("b", "p1", (FakeStep("x", None),), None),
        FakeTrace("c", "p2", (FakeStep("x", 0), FakeStep("y", 0)), True, answered=True),
    ]
    table = chain_table(traces)
    assert list(table.columns) == ["id", "problem_id", "steps", "labelled_steps",
                                   "hallucinated_steps", "hallucinated_rate", "answered",
                                   "is_correct"]
    assert table["answered"].tolist() == [False, None, True]
    assert table["steps"].tolist() == [4, 1, 2]
    assert table["labelled_steps"].tolist() == [3, 0, 2]
    assert table["hallucinated_steps"].tolist() == [2, 0, 0]
    assert table.loc[0, "hallucinated_rate"] == pytest.approx(2 / 3)
    assert table["hallucinated_rate"].isna().tolist() == [False, True, False]
    assert table.loc[2, "hallucinated_rate"] == 0.0
    assert table["is_correct"].tolist() == [False, None, True]


def test_chain_table_empty() -> None:
    assert chain_table([]).empty
    assert list(chain_table([]).columns)[0] == "id"


def test_steps_table_names_labels() -> None:
    trace = FakeTrace("a", "p1", (FakeStep("x", 0, 0), FakeStep("y", 1, 1),
                                  FakeStep("z", None, None)), None)
    table = steps_table(trace)
    assert table["label"].tolist() == ["correct", "hallucinated", "unlabelled"]
    assert table["text"].tolist() == ["x", "y", "z"]
    assert table["step"].tolist() == [0, 1, 2]
    assert not table["back_on_track"].any()  # step 2's prefix label is unknown


def test_recovered_steps_follow_the_papers_prefix_labels() -> None:
    # a chain that breaks at step 1 and ends right is back on track from step 2 on
    prefix = derive_prefix_labels([0, 1, 0, 0], True)
    assert recovered_steps(prefix) == [False, False, True, True]
    # the same chain under "any-so-far" never recovers; a wrong chain never does either
    assert not any(recovered_steps(derive_prefix_labels([0, 1, 0, 0], True, "any-so-far")))
    assert not any(recovered_steps(derive_prefix_labels([0, 1, 0, 0], False)))
    # two broken stretches: back on track after each; unknown and NaN labels are never
    assert recovered_steps([1, 0, 1, 1, 0]) == [False, True, False, False, True]
    assert recovered_steps([0, None, 1, math.nan, 0]) == [False] * 4 + [True]
    assert recovered_steps([]) == []
    trace = FakeTrace("r", "p", tuple(FakeStep(t, s, p) for t, s, p in zip(
        "abcd", [0, 1, 0, 0], prefix, strict=True)), True)
    assert steps_table(trace)["back_on_track"].tolist() == [False, False, True, True]


def test_outcome_text_says_whether_an_answer_was_stated() -> None:
    steps = (FakeStep("x", 0),)
    right = FakeTrace("a", "p", steps, True, answered=True, answer="14", gold="14")
    assert outcome_text(right) == "stated answer 14 · gold 14 · right"
    none = FakeTrace("b", "p", steps, False, answered=False, gold="14")
    assert outcome_text(none) == "no answer stated · gold 14 · counts as wrong"
    old = FakeTrace("c", "p", steps, False, answer="15", gold="14")  # answered not recorded
    assert outcome_text(old).startswith("answer 15 (whether the reply stated it is not")
    assert outcome_text(FakeTrace("d", "p", steps, None)) == ("no answer recorded · gold - · "
                                                              "right or wrong unknown")


def test_answers_sentence_puts_chance_beside_the_accuracy() -> None:
    # 4 problems, 2 chains each; 6 of 8 state an answer, 3 state the right one
    answers = ["1", "1", "9", None, "3", None, "7", "7"]
    golds = ["1", "1", "2", "2", "3", "3", "4", "4"]
    problems = ["a", "a", "b", "b", "c", "c", "d", "d"]
    found = accuracy_with_chance(answers, golds, problems, n_shuffles=10)
    text = answers_sentence(found)
    assert text.startswith("Of the 8 chains with a gold answer (4 problems), 6 state an answer "
                           "(75.0%) and 3 state the right one (37.5%)")
    assert "golds shuffled across problems" in text and "over 10 shuffles" in text
    assert chance_text(found) in text
    assert chance_text(found) == f"{found.chance_mean:.1%} ± {found.chance_sd:.1%}"
    # right far above what shuffled golds give: clear of chance
    many = accuracy_with_chance([str(i) for i in range(40)], [str(i) for i in range(40)])
    assert "clear of chance" in answers_sentence(many)
    lucky = accuracy_with_chance(["1"] * 40, ["1", "2"] * 20, [str(i) for i in range(40)])
    assert "not shown to be better than luck" in answers_sentence(lucky)
    assert "neither accuracy" in answers_sentence(accuracy_with_chance([None], [None]))


def test_summary_counts_pool_all_chains() -> None:
    traces = [
        FakeTrace("a", "p1", (FakeStep("x", 0), FakeStep("y", 1), FakeStep("z", None)), False),
        FakeTrace("b", "p2", (FakeStep("x", 1),), None),
        FakeTrace("c", "p3", (FakeStep("x", 0), FakeStep("y", 0)), True),
    ]
    counts = summary_counts(chain_table(traces))
    assert counts["chains"] == 3 and counts["steps"] == 6
    assert counts["labelled_steps"] == 5 and counts["hallucinated_steps"] == 2
    assert counts["hallucinated_rate"] == pytest.approx(2 / 5)  # pooled, not a mean of rates
    assert counts["correct_rate"] == pytest.approx(1 / 2)  # chain b's outcome is unknown


def test_summary_counts_without_labels() -> None:
    counts = summary_counts(chain_table([FakeTrace("a", None, (FakeStep("x", None),), None)]))
    assert counts["hallucinated_rate"] is None and counts["correct_rate"] is None
    assert summary_counts(chain_table([]))["chains"] == 0


def test_labelled_scores_skip_unlabelled_and_orient_min_prob() -> None:
    labels, scores = labelled_scores(signals(), "max_nll")
    assert labels == [0, 1, 0, 1] and scores == [0.9, 4.0, 0.1, 2.0]
    labels, scores = labelled_scores(signals(), "min_prob")
    assert labels == [0, 1, 0, 1]
    assert scores == pytest.approx([-math.exp(-0.9), -math.exp(-4.0), -math.exp(-0.1),
                                    -math.exp(-2.0)])


def test_issue_table_keeps_line_field_and_message() -> None:
    @dataclass(frozen=True)
    class Issue:
        source: str
        line: int
        field: str
        message: str

    table = issue_table([Issue("f.jsonl", 3, "steps[1].label", "label must be 0, 1 or null"),
                         Issue("f.jsonl", 7, "", "invalid JSON at column 1")])
    assert table.to_dict("records") == [
        {"line": 3, "field": "steps[1].label", "problem": "label must be 0, 1 or null"},
        {"line": 7, "field": "", "problem": "invalid JSON at column 1"}]
    assert list(issue_table([]).columns) == ["line", "field", "problem"]
