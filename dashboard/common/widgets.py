"""Widgets more than one page draws: the file chooser (a shipped sample or an upload) with the
table of a file's bad lines, and downloads of figures, tables and files.

    chosen = choose_file(sample_files(), FileChoice("Sample trace file", "traces_sample",
                         "Upload a trace file (JSONL or JSON)", "traces_upload"))
    report_issues(name, load.issues, load.n_skipped, len(load.traces), "chain")
    figure_download("Download this chart (HTML)", fig, "chart.html", key="chart_download")

Every download is built when clicked (the data may be a function) and does not rerun the page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dashboard.common.charts import figure_html, issue_table

MAX_ISSUES_SHOWN = 1000

Data = str | bytes | Callable[[], str | bytes]


# ---------------------------------------------------------------------------- files


@dataclass(frozen=True)
class FileChoice:
    """The labels, keys and notes of one file chooser: a select of shipped samples beside an
    uploader. `default` is the sample chosen first; `missing` the note when none ships (None:
    no note)."""

    sample_label: str
    sample_key: str
    upload_label: str
    upload_key: str
    sample_help: str | None = None
    upload_help: str | None = None
    missing: str | None = None
    default: str | None = None
    types: tuple[str, ...] = ("jsonl", "json")


def choose_file(samples: Sequence[Path], choice: FileChoice) -> tuple[str, bytes] | None:
    """The file to read: an upload wins over the chosen sample. (name, bytes) or None."""
    by_name = {path.name: path for path in samples}
    names = list(by_name)
    left, right = st.columns(2)
    with right:
        upload = st.file_uploader(choice.upload_label, type=list(choice.types),
                                  key=choice.upload_key, help=choice.upload_help)
    sample = None
    with left:
        if names:
            index = names.index(choice.default) if choice.default in names else 0
            sample = st.selectbox(choice.sample_label, names, index=index, key=choice.sample_key,
                                  disabled=upload is not None, help=choice.sample_help)
        elif choice.missing:
            st.info(choice.missing)
    if upload is not None:
        return upload.name, upload.getvalue()
    if sample is not None:
        return str(sample), by_name[str(sample)].read_bytes()
    return None


def report_issues(name: str, issues: Sequence[Any], n_skipped: int, n_valid: int, noun: str,
                  field_help: str | None = None) -> None:
    """How many lines of a file were skipped and why, naming each line and field. A table, not
    markdown: the messages quote file content, which must not render."""
    if not issues:
        return
    st.warning(f"{len(issues)} problem(s) in {name}: {n_skipped} line(s) skipped, "
               f"{n_valid} valid {noun}(s) loaded.")
    with st.expander(f"Problems in {name}"):
        shown = issues[:MAX_ISSUES_SHOWN]
        st.dataframe(issue_table(shown), hide_index=True, column_config={
            "field": st.column_config.TextColumn(
                "field", help=field_help or f"'' = the line is not a {noun} at all"),
            "problem": st.column_config.TextColumn("problem", width="large")})
        if len(issues) > len(shown):
            st.caption(f"... and {len(issues) - len(shown)} more.")


# ---------------------------------------------------------------------------- downloads


def download(label: str, data: Data, file_name: str, mime: str, *, key: str | None = None,
             where: DeltaGenerator | None = None, **options: Any) -> None:
    """A download button that builds its data when clicked and does not rerun the page."""
    draw = where.download_button if where is not None else st.download_button
    draw(label, data, file_name=file_name, mime=mime, key=key, on_click="ignore", **options)


def figure_download(label: str, figure: go.Figure, file_name: str, key: str | None = None, *,
                    where: DeltaGenerator | None = None) -> None:
    """The figure as a stand-alone HTML page (plotly.js inlined, opens offline)."""
    download(label, lambda: figure_html(figure), file_name, "text/html", key=key, where=where)


def table_download(label: str, table: pd.DataFrame, file_name: str, key: str | None = None, *,
                   where: DeltaGenerator | None = None) -> None:
    """The table as CSV, without its index."""
    download(label, lambda: table.to_csv(index=False), file_name, "text/csv", key=key,
             where=where)


__all__ = ["MAX_ISSUES_SHOWN", "FileChoice", "choose_file", "download", "figure_download",
           "report_issues", "table_download"]
