"""The Live page's pure figures and tables, checked against hand-built steps: order of kept and
discarded attempts, strike-through, escaping, the open step, and every trace of the figure."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from core.diagnose.monitor import StepRecord
from dashboard.diagnose import live_charts as charts_live


def rec(index: int, text: str, prefix: float, *, step: float | None = 0.2, alarm: bool = False,
        kept: bool = True, attempt: int = 0, n_tokens: int = 5) -> StepRecord:
    return StepRecord(index=index, text=text, n_tokens=n_tokens, step_score=step,
                      prefix_score=prefix, alarm=alarm, kept=kept, attempt=attempt)


# a backtracked reply: step 1 alarmed twice, the third attempt was kept
KEPT = [rec(0, "3 + 4 = 7", 0.10, step=0.05),
        rec(1, "7 * 2 = 14", 0.30, step=0.25, attempt=2),
        rec(2, "Answer: 14", 0.80, step=0.90, alarm=True)]
DISCARDED = [rec(1, "7 * 2 = 15", 0.70, step=0.60, alarm=True, kept=False, attempt=0),
             rec(1, "7 * 2 = 16", 0.65, step=0.55, alarm=True, kept=False, attempt=1)]
TEXT = "3 + 4 = 7\n7 * 2 = 14\nAnswer: 14\n"


def test_step_rows_put_discarded_attempts_beside_their_kept_step() -> None:
    rows = charts_live.step_rows(KEPT, DISCARDED)
    assert list(rows.columns) == list(charts_live.STEP_COLUMNS)
    assert list(zip(rows["step"], rows["attempt"], rows["status"], strict=True)) == [
        (0, 0, "kept"), (1, 0, "discarded"), (1, 1, "discarded"), (1, 2, "kept"), (2, 0, "kept")]
    assert rows["c_prefix"].tolist() == [0.10, 0.70, 0.65, 0.30, 0.80]
    assert rows["alarm"].tolist() == [False, True, True, False, True]
    assert rows["text"].tolist()[1] == "7 * 2 = 15"
    assert charts_live.step_rows([], []).empty


def test_least_alarming_kept_attempt_sorts_before_later_discarded_ones() -> None:
    kept = [rec(0, "a", 0.6, alarm=True, attempt=0)]  # every retry alarmed: attempt 0 kept
    discarded = [rec(0, "b", 0.9, alarm=True, kept=False, attempt=1)]
    rows = charts_live.step_rows(kept, discarded)
    assert rows["status"].tolist() == ["kept", "discarded"]


def rows_with(html_text: str, prop: str) -> set[int]:
    """Row numbers whose cells a Styler's CSS gives `prop`."""
    rows: set[int] = set()
    for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", html_text):
        if prop in body:
            rows.update(int(n) for n in re.findall(r"_row(\d+)_col", selectors))
    return rows


def test_style_strikes_through_discarded_rows_and_tints_alarms() -> None:
    rows = charts_live.step_rows(KEPT, DISCARDED)
    html_text = charts_live.style_step_rows(rows).to_html()
    assert rows_with(html_text, "line-through") == {1, 2}
    assert rows_with(html_text, "background-color") == {1, 2, 4}
    struck = "7\u0336 \u0336*\u0336 \u03362\u0336 \u0336=\u0336 \u03361\u03365\u0336"
    assert charts_live.strike("7 * 2 = 15") == struck and struck in html_text
    assert ">7 * 2 = 14<" in html_text and ">3 + 4 = 7<" in html_text  # kept text plain
    no_step_probe = charts_live.step_rows([rec(0, "x", 0.5, step=None)], [])
    assert ">-<" in charts_live.style_step_rows(no_step_probe).to_html()  # c_step shown as "-"


def test_open_tail_is_the_text_after_the_last_kept_step() -> None:
    assert charts_live.open_tail(TEXT + "Done", KEPT) == "\nDone"
    assert charts_live.open_tail("3 + 4 = 7\n7 *", KEPT[:1]) == "\n7 *"
    assert charts_live.open_tail("abc", []) == "abc"
    # rewound below a kept step: the rest from the last step found
    assert charts_live.open_tail("3 + 4 = 7\n", KEPT) == "\n"


def test_transcript_orders_steps_and_strikes_discarded_attempts() -> None:
    page = charts_live.transcript_html(TEXT, KEPT, DISCARDED)
    order = [page.index(t) for t in ("3 + 4 = 7", "7 * 2 = 15", "7 * 2 = 16", "7 * 2 = 14",
                                     "Answer: 14")]
    assert order == sorted(order)
    assert "<s>7 * 2 = 15</s>" in page and "<s>7 * 2 = 16</s>" in page
    assert "<s>7 * 2 = 14</s>" not in page
    assert "step 1, attempt 1 discarded · c_step 0.550 · c_prefix 0.650 · ⚠ alarm" in page
    assert page.count("⚠ alarm") == 3  # two discarded attempts and the kept step 2
    assert page.count(f"border-left:3px solid {charts_live.ALARM_COLOUR}") == 1
    assert "▌" not in page  # finished: no cursor


def test_transcript_shows_the_retry_in_progress_and_escapes_model_text() -> None:
    retrying = [rec(1, "x <b>bold</b> $5", 0.9, alarm=True, kept=False)]
    page = charts_live.transcript_html("3 + 4 = 7\n<i>", KEPT[:1], retrying, writing=True)
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "$" not in page  # would start LaTeX in Streamlit markdown
    assert page.index("3 + 4 = 7") < page.index("&lt;b&gt;") < page.index("&lt;i&gt;")
    assert page.endswith('▌</span></div></div>')
    assert "(no text)" in charts_live.transcript_html("", [], [])


def test_transcript_keeps_only_the_newest_blocks_when_asked() -> None:
    page = charts_live.transcript_html(TEXT + "Do", KEPT, DISCARDED, writing=True,
                                       last_blocks=2)
    assert "... 4 earlier block(s) above" in page  # 3 kept + 2 discarded + the open tail = 6
    assert "Answer: 14" in page and "Do▌" in page.replace("</span>", "").replace(
        '<span style="color:#999">', "")
    assert "7 * 2 = 14" not in page and "3 + 4 = 7" not in page
    assert charts_live.transcript_html(TEXT, KEPT, DISCARDED, last_blocks=10) == \
        charts_live.transcript_html(TEXT, KEPT, DISCARDED)


def traces_by_name(fig) -> dict[str, object]:
    return {trace.name: trace for trace in fig.data}


def test_live_figure_traces_hold_the_scores() -> None:
    fig = charts_live.live_figure(KEPT, DISCARDED, threshold=0.5, title="t")
    traces = traces_by_name(fig)
    bars = traces["c_step (step probe)"]
    assert list(bars.x) == [0, 1, 2] and list(bars.y) == [0.05, 0.25, 0.90]
    line = traces["c_prefix (prefix tracker)"]
    assert list(line.x) == [0, 1, 2] and list(line.y) == [0.10, 0.30, 0.80]
    alarm = traces["alarm"]
    assert list(alarm.x) == [2] and list(alarm.y) == [0.90]  # on the c_step that fired it
    gone = traces["discarded attempt (c_prefix)"]
    spread = charts_live.DISCARD_SPREAD
    assert list(gone.x) == pytest.approx([1 + spread, 1 + 2 * spread])
    assert list(gone.y) == [0.70, 0.65]
    assert "7 * 2 = 15" in gone.customdata[0]
    (line_shape,) = fig.layout.shapes
    assert line_shape.y0 == line_shape.y1 == 0.5
    assert [a.text for a in fig.layout.annotations] == ["alarm threshold on c_step 0.500"]
    assert list(fig.layout.xaxis.range) == [-0.6, charts_live.MIN_STEPS_SHOWN - 1 + 0.6]
    assert list(fig.layout.yaxis.range) == [0, 1.08]
    assert fig.layout.title.text == "t"


def test_live_figure_grows_the_axis_and_copes_without_steps_or_step_probe() -> None:
    many = [rec(i, f"s{i}", 0.1) for i in range(10)]
    assert list(charts_live.live_figure(many, [], 0.5).layout.xaxis.range) == [-0.6, 9.6]
    empty = charts_live.live_figure([], [], 0.3)
    assert not empty.data and empty.layout.shapes[0].y0 == 0.3
    tracker_only = charts_live.live_figure([rec(0, "a", 0.4, step=None)], [], 0.5)
    assert set(traces_by_name(tracker_only)) == {"c_prefix (prefix tracker)"}


def test_summary_counts_read_the_result() -> None:
    result = SimpleNamespace(steps=KEPT, discarded=DISCARDED, tokens_generated=17,
                             tokens_processed=29, stopped_by_alarm=False)
    assert charts_live.summary_counts(result) == {
        "steps": 3, "alarms": 1, "discarded": 2, "tokens_generated": 17,
        "tokens_processed": 29, "stopped_by_alarm": False}


def test_live_figure_of_the_prefix_rise_trigger_has_no_threshold_line() -> None:
    """The prefix-rise trigger has no fixed line to cross: no dashed line, and the alarm marker
    sits on the c_prefix that rose."""
    fig = charts_live.live_figure(KEPT, DISCARDED, threshold=None)
    assert not fig.layout.shapes and not fig.layout.annotations
    assert list(traces_by_name(fig)["alarm"].y) == [0.80]
    assert charts_live.alarm_rule("prefix-rise", None, 0.2) == \
        "alarm when c_prefix rises by more than **0.20**"
    assert charts_live.alarm_rule("step", 0.25, 0.2) == "alarm when c_step > **0.250**"
