"""Telltale's dashboard: `streamlit run dashboard/app.py`.

This file is the frame around every page: it sets up the page, draws the shared model sidebar
and runs the page chosen in the navigation. Each page is a module with a `render()` function in
its layer's folder (dashboard/diagnose, sense, control: ordinary modules, importable and
testable); to add a page, add one `st.Page` line to `PAGES`.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
if str(REPO_ROOT) not in sys.path:  # `streamlit run` puts only dashboard/ on the path
    sys.path.insert(0, str(REPO_ROOT))

import streamlit as st  # noqa: E402

from dashboard.common.jobs import board, current_session  # noqa: E402
from dashboard.common.sidebar import render_model_sidebar  # noqa: E402
from dashboard.control import page as finetune  # noqa: E402
from dashboard.diagnose import live_page, traces_page  # noqa: E402
from dashboard.sense import page as introspection  # noqa: E402

# One line per page: a module's render() function, its title, icon and URL. The pages live in
# the layer folders, never in pages/: a pages/ folder beside app.py turns on Streamlit's old
# file-per-page mode before the first st.navigation call.
PAGES = [
    st.Page(traces_page.render, title="Traces", icon=":material/timeline:", url_path="traces",
            default=True),
    st.Page(live_page.render, title="Live", icon=":material/monitor_heart:", url_path="live"),
    st.Page(finetune.render, title="Fine-tuning", icon=":material/tune:", url_path="fine-tuning"),
    st.Page(introspection.render, title="Introspection", icon=":material/neurology:",
            url_path="introspection"),
]


def main() -> None:
    st.set_page_config(page_title="Telltale", page_icon=":material/psychology:", layout="wide")
    page = st.navigation(PAGES)
    board().leave_others(current_session(), page.url_path)  # the Live run stops when left
    render_model_sidebar()
    page.run()


if __name__ == "__main__":  # streamlit runs this file as __main__; tests import PAGES
    main()
