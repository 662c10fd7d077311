"""Pure helpers every layer's charts share: text for a plotly hover box, the table of a file's
bad lines, a figure as a stand-alone page. No Streamlit and no torch here.

    issue_table(load.issues)          # line, field, problem
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

HOVER_WIDTH = 70  # characters per line of text in a hover box


def hover_text(text: str, width: int = HOVER_WIDTH) -> str:
    """Text for a plotly hover box: HTML-escaped and wrapped with <br> every `width` chars."""
    lines = textwrap.wrap(str(text), width=width) or [""]
    return "<br>".join(html.escape(line) for line in lines)


def issue_table(issues: Sequence[Any]) -> pd.DataFrame:
    """One row per problem of a file: line, field ("" when the line is not a record at all) and
    the problem. Takes `core.data.traces.TraceIssue`-like records (line, field, message)."""
    return pd.DataFrame([{"line": i.line, "field": i.field, "problem": i.message}
                         for i in issues], columns=["line", "field", "problem"])


def figure_html(fig: go.Figure) -> str:
    """A stand-alone HTML page of the figure (plotly.js inlined, so it opens offline)."""
    return str(fig.to_html(include_plotlyjs=True, full_html=True))


__all__ = ["HOVER_WIDTH", "figure_html", "hover_text", "issue_table"]
