"""The Live page's display of one monitor job: the status line, the reply and the score chart,
redrawn in place while the job writes (`LiveView.follow`), then the summary, the step table and
the downloads (`show_result`). Figures and the transcript come from `live_charts`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

import streamlit as st

from dashboard.common.jobs import Job
from dashboard.common.widgets import download, figure_download
from dashboard.diagnose import live_charts
from dashboard.diagnose.live_state import live_progress, live_run

POLL_S = 0.15  # how often a running job is read; the text and chart redraw only on change
PANEL_HEIGHT = 440
LIVE_BLOCKS = 7  # steps shown in the reply box while writing, so the newest stays in view


class LiveView:
    """The placeholders of one run's display, redrawn in place."""

    def __init__(self) -> None:
        self.status = st.empty()
        text_col, chart_col = st.columns([5, 6])
        with text_col:
            st.markdown("**Reply**, step by step")
            self.transcript = st.container(height=PANEL_HEIGHT, border=True).empty()
        self.chart = chart_col.empty()
        self.details = st.empty()
        self.draws = 0
        self.steps_drawn = -1

    def draw(self, job: Job[Any]) -> None:
        progress, run = live_progress(job), live_run(job)
        writing = not job.finished
        self.transcript.html(live_charts.transcript_html(
            progress.text, progress.kept, progress.discarded, writing=writing,
            last_blocks=LIVE_BLOCKS if writing else None))
        n_steps = len(progress.kept) + len(progress.discarded)
        if n_steps != self.steps_drawn or not writing:
            self.draws += 1
            title = "Probe scores per step" + (" (writing ...)" if writing else "")
            figure = live_charts.live_figure(progress.kept, progress.discarded, run.threshold,
                                             title=title)
            self.chart.plotly_chart(figure, key=f"live_chart_{job.key}_{self.draws}")
            self.steps_drawn = n_steps
        if writing and progress.tokens == 0:
            self.status.info(f"Reading the prompt ({run.config.mode} mode) ...",
                             icon=":material/hourglass_top:")
        elif writing:
            alarms = sum(step.alarm for step in progress.kept)
            self.status.info(
                f"Writing ({run.config.mode} mode): {progress.tokens} tokens, "
                f"{len(progress.kept)} steps scored, {alarms} alarm(s), "
                f"{len(progress.discarded)} discarded. **Stop** ends it.",
                icon=":material/edit_note:")

    def follow(self, job: Job[Any]) -> None:
        """Redraw while the job runs; returns once it has finished."""
        seen = -1
        while True:
            version = job.version
            if version != seen:
                seen = version
                self.draw(job)
            if job.finished:
                return
            time.sleep(POLL_S)


def show_result(job: Job[Any], view: LiveView) -> None:
    """The finished run: ending, summary numbers, step table, downloads."""
    run = live_run(job)
    view.draw(job)
    if job.error:
        view.status.error(job.error)
    result = live_progress(job).result
    if result is None:
        return
    counts = live_charts.summary_counts(result)
    if job.stop_requested and not result.stopped_by_alarm:
        view.status.warning("Stopped by you before the end.", icon=":material/stop_circle:")
    elif result.stopped_by_alarm:
        view.status.error("The alarm stopped generation (stop mode: the kill switch).",
                          icon=":material/front_hand:")
    elif not job.error:
        view.status.success("Finished.", icon=":material/check_circle:")
    config = run.config
    with view.details.container():
        cols = st.columns(6)
        cols[0].metric("steps", counts["steps"])
        cols[1].metric("alarms", counts["alarms"])
        cols[2].metric("discarded", counts["discarded"], help="attempts dropped by backtracking")
        cols[3].metric("tokens generated", counts["tokens_generated"],
                       help="tokens in the final reply")
        cols[4].metric("tokens processed", counts["tokens_processed"],
                       help="every token the model read after the prompt, retries included")
        cols[5].metric("stopped by alarm", "yes" if counts["stopped_by_alarm"] else "no")
        rule = live_charts.alarm_rule(config.trigger, result.threshold, config.rise_margin)
        st.caption(f"probe **{run.probe_name}** · mode **{result.mode}** · {rule} · "
                   f"temperature {config.temperature} · top-p "
                   f"{config.top_p} · seed {config.seed} · max {config.max_new_tokens} new "
                   "tokens")
        rows = live_charts.step_rows(result.steps, result.discarded)
        with st.expander(f"Step table ({len(rows)} rows; discarded attempts struck through)"):
            if rows.empty:
                st.caption("No complete step.")
            else:
                st.table(live_charts.style_step_rows(rows), hide_index=True,
                         border="horizontal")
        record = {**result.as_dict(), "run": {"probe": run.probe_name,
                                              "config": asdict(config)}}
        figure = live_charts.live_figure(result.steps, result.discarded, result.threshold)
        left, right = st.columns(2)
        name = f"telltale-{job.key}"
        download("Download the result (JSON)", json.dumps(record, indent=2), f"{name}.json",
                 "application/json", where=left)
        figure_download("Download the figure (HTML)", figure, f"{name}.html", where=right)
