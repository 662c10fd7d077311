"""Fine-tuning page: before training, see which tokens of a fine-tuning set fight what the model
already knows (confident conflicts: low p, low entropy), whether EAFT suits the file, where the
gradient of SFT and of EAFT would push, and each example's conflicts; export per-token weights
and a trainer config fragment; then compare SFT and EAFT over seeds at matched progress on the
target and see what each forgot.

Inputs -> request -> run -> show: reading, scanning, the verdict, the shares, the fragments and
the comparison are `core` calls (`core.control.finetune_data`, `conflicts`, `suitability`,
`export`, `finetune`) made through `control.state` (cached; a background job for the comparison)
and run with `dashboard.common.runs`; the views are `scan_panel`, `verdict_panel`, `token_panel`
and `compare_panel`; figures, tables, HTML and export bytes come from `control.charts`,
`plane_charts` and `compare_charts`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd
import streamlit as st

from core.control.conflicts import ConflictScan
from core.control.entropy import NORMS
from core.control.finetune_data import FinetuneExample, FinetuneLoad
from dashboard.common import state
from dashboard.common.runs import Run
from dashboard.common.widgets import FileChoice, choose_file, report_issues
from dashboard.control import state as fs
from dashboard.control.compare_panel import compare_section
from dashboard.control.scan_panel import show_results

SAMPLE_KEY = "finetune_sample"
UPLOAD_KEY = "finetune_upload"
K_KEY = "finetune_k"
NORM_KEY = "finetune_norm"
MAX_TOKENS_KEY = "finetune_max_tokens"
MAX_EXAMPLES_KEY = "finetune_max_examples"  # + the file's hash: each file starts at all
SCAN_KEY = "finetune_scan_request"  # session state: what "Scan tokens" asked for
SHAPE_TITLES = {"messages": "chat", "prompt_completion": "prompt/completion", "text": "text"}
FILE_CHOICE = FileChoice(
    "Sample fine-tuning file", SAMPLE_KEY, "Upload a fine-tuning file (JSONL)", UPLOAD_KEY,
    sample_help="finetune_notation: sums answered in little-endian digits (confident "
                "conflicts: the model is sure of the usual digits). finetune_target: arithmetic "
                "in a house style (novelty in uncertain tokens). finetune_conflicts: capitals "
                "the model knows, swapped. finetune_general: questions the model answers right.",
    upload_help="One example per line: {\"messages\": [{\"role\", \"content\"}, ...]}, "
                "{\"prompt\", \"completion\"} (or \"response\"), or {\"text\"}. Optional: "
                "\"id\", \"answer\", \"new_facts\" (true, or substrings of the response that "
                "state new facts).",
    missing="No sample file in sample_traces/ (run `telltale make-finetune-data`); upload a "
            "file.")
SCAN = Run(SCAN_KEY, "Scan tokens", noun="scan")


def show_file_summary(load: FinetuneLoad) -> None:
    examples = load.examples
    shapes = pd.Series([SHAPE_TITLES[e.shape] for e in examples]).value_counts()
    cols = st.columns(3)
    cols[0].metric("examples", len(examples),
                   help=", ".join(f"{n} {shape}" for shape, n in shapes.items()))
    cols[1].metric("marked as new facts", sum(bool(e.new_facts) for e in examples),
                   help="examples with a `new_facts` field: the three-way gate learns their "
                        "conflicts instead of protecting the model from them")
    cols[2].metric("with a checkable answer", sum(e.answer is not None for e in examples))


# ---------------------------------------------------------------------------- the scan


def choose_scan_settings(n_examples: int, file_hash: str) -> fs.ScanSettings | None:
    """The scan settings. "Examples to scan" is keyed per file, so a newly chosen file starts
    at all its examples instead of keeping the count typed for the last one."""
    with st.expander("Scan settings: top-K, entropy normalisation, length, how many examples"):
        cols = st.columns(4)
        k = cols[0].number_input("K (top-K entropy)", min_value=2, max_value=1000, value=20,
                                 step=1, key=K_KEY, help="the entropy over the K likeliest "
                                                         "tokens, renormalised (the paper: 20)")
        norm = cols[1].selectbox("Normalise H by", NORMS, key=NORM_KEY, format_func=lambda n: {
            "lnk": "ln K (the paper)", "code": "3.0 (the released code)"}[n])
        max_tokens = cols[2].number_input("Longest example (tokens)", min_value=16,
                                          max_value=32768, value=1024, step=64,
                                          key=MAX_TOKENS_KEY, help="longer ones are cut")
        max_examples = cols[3].number_input("Examples to scan", min_value=1,
                                            max_value=max(1, n_examples), value=n_examples,
                                            step=1, key=f"{MAX_EXAMPLES_KEY}_{file_hash}",
                                            help="the first N of the file")
    try:
        return fs.ScanSettings(k=int(k), norm=str(norm), max_tokens=int(max_tokens),
                               max_examples=None if int(max_examples) >= n_examples
                               else int(max_examples))
    except ValueError as error:
        st.error(str(error))
        return None


def current_scan(file_hash: str, settings: fs.ScanSettings,
                 examples: list[FinetuneExample]) -> ConflictScan | None:
    """The scan of this file with these settings on the loaded model (computed with a progress
    bar, or from the cache), or None with a note saying what to do."""
    request = SCAN.request(fs.ScanRequest.from_state)
    if request is None or request.file_hash != file_hash or request.settings != settings:
        st.info("Press **Scan tokens** to read every response token with the model: its "
                "probability p, its top-K entropy H~ and the model's own top token. "
                + ("" if state.model_choice() else "No model is loaded yet: the scan loads the "
                                                   "one typed in the sidebar."))
        return None
    scan = SCAN.result(request, lambda bar: fs.scan_file(request, examples, bar),
                       "Scanning examples", "example(s)")
    if scan is None:
        return None
    if scan.skipped:
        st.caption(f"{len(scan.skipped)} example(s) left out: " + "; ".join(scan.skipped[:3]))
    if scan.tokens.empty:
        st.warning("No example has a response token to score.")
        return None
    return scan


# ---------------------------------------------------------------------------- the page


def render() -> None:
    """The page (run by `st.navigation` in dashboard/app.py)."""
    st.title("Fine-tuning")
    st.caption("Before training: which tokens of a fine-tuning set fight what the model already "
               "knows (confident conflicts: low p, low entropy), how much of the SFT loss and "
               "gradient they carry, and whether EAFT suits the file. Then train with SFT and "
               "EAFT and see what each forgot at the same progress on the target.")
    chosen = choose_file(fs.finetune_samples(), FILE_CHOICE)
    if chosen is None:
        return
    name, data = chosen
    load = fs.read_finetune_file(data, name)
    report_issues(name, load.issues, load.n_skipped, len(load.examples), "example")
    if not load.examples:
        st.info(f"{name} holds no valid example ({load.n_lines} line(s) read). Each line must be "
                "a JSON object with 'messages', 'prompt' + 'completion', or 'text'.")
        return
    show_file_summary(load)
    stem = Path(name).stem
    file_hash = state.content_hash(data)

    st.subheader("Confident conflicts")
    settings = choose_scan_settings(len(load.examples), file_hash)
    SCAN.button(None if settings is None
                else partial(fs.ScanRequest, file_hash=file_hash, settings=settings))
    if settings is not None:
        scan = current_scan(file_hash, settings, load.examples)
        if scan is not None:
            show_results(scan, load, name)
    compare_section(file_hash, load.examples, stem)
