"""Fine-tuning page: before training, see which tokens of a fine-tuning set fight what the model
already knows (confident conflicts: low p, low entropy), where the gradient of SFT and of EAFT
would push, and each example's conflicts; export per-token weights; then run a short SFT-against-
EAFT comparison and see what each method learned and forgot.

Thin by design: reading, scanning, the shares and the comparison are `core` calls
(`core.control.finetune_data`, `core.control.conflicts`, `core.control.finetune`) made through
`dashboard.finetune_state` (cached, and a background thread for the comparison); figures,
tables, HTML and export bytes come from `dashboard.charts_finetune`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.control.conflicts import (
    ConflictScan,
    ConflictSummary,
    default_gates,
    example_scores,
    summarise_conflicts,
    token_gates,
    with_quadrants,
)
from core.control.eaft import LossConfig
from core.control.entropy import NORMS, Cuts, Thresholds
from core.control.finetune import METHODS
from core.control.finetune_data import FinetuneExample, FinetuneLoad
from dashboard.common import state
from dashboard.diagnose import trace_charts as charts
from dashboard.control import charts as cf
from dashboard.control import state as fs
from dashboard.common.sidebar import request_model

SAMPLE_KEY = "finetune_sample"
UPLOAD_KEY = "finetune_upload"
K_KEY = "finetune_k"
NORM_KEY = "finetune_norm"
MAX_TOKENS_KEY = "finetune_max_tokens"
MAX_EXAMPLES_KEY = "finetune_max_examples"
SCAN_KEY = "finetune_scan_request"  # session state: what "Scan tokens" asked for (a dict)
SCAN_PENDING_KEY = "finetune_scan_pending"
MODE_KEY = "finetune_threshold_mode"
ALPHA_KEY = "finetune_alpha"
QUADRANT_FILTER_KEY = "finetune_filter_quadrants"
TEXT_FILTER_KEY = "finetune_filter_text"
EXAMPLE_FILTER_KEY = "finetune_filter_example"
NEW_FACTS_KEY = "finetune_filter_new_facts"
EXAMPLE_KEY = "finetune_example"
COLOUR_KEY = "finetune_colour_by"
EXPORT_KEY = "finetune_export_format"
GENERAL_SAMPLE_KEY = "finetune_general_sample"
GENERAL_UPLOAD_KEY = "finetune_general_upload"
METHODS_KEY = "finetune_methods"
STEPS_KEY = "finetune_steps"
BATCH_KEY = "finetune_batch_size"
LORA_KEY = "finetune_lora"
MAX_EVAL_KEY = "finetune_max_eval"
LR_KEY = "finetune_lr"
COMPARE_PENDING_KEY = "finetune_compare_pending"
COMPARE_JOB_KEY = "finetune_compare_job"  # session state: the key of this session's latest run

MAX_ISSUES_SHOWN = 1000
ALL_EXAMPLES = "(every example)"
GENERAL_SAMPLE = "finetune_general.jsonl"
DEFAULT_METHODS = ("sft", "eaft", "sft_lr_matched")
POLL_S = 0.5
LEARNING_RATES = ("default", "1e-5", "3e-5", "1e-4", "2e-4", "5e-4", "1e-3")
# Threshold defaults per mode (the CLI's `eaft-stats`): percentiles of this file's tokens, or
# values of p and H~. Each mode keeps its own inputs, so switching does not carry 15 over as a
# probability.
THRESHOLD_DEFAULTS = {"percentile": (15.0, 15.0, 50.0), "absolute": (0.1, 0.2, 0.5)}
THRESHOLD_HELP = {
    "percentile": "bottom p% of this file's tokens by p, and by H~ (the paper's pilot: 15 and "
                  "15); uncertain above that percentile of H~",
    "absolute": "a probability for p and values of H~ (0 = sure, 1 = as spread as the top K)",
}
COLOUR_TITLES = {"p": "p of the target (low = red)", "gate": "EAFT weight H~^alpha",
                 "quadrant": "quadrant"}
METHOD_HELP = ("sft: plain cross-entropy. eaft: each token weighted by H~^alpha. sft_kl: SFT plus "
               "KL to the frozen base. hard_mask: drop tokens below the 15th percentile of H~. "
               "sft_lr_matched: SFT at the learning rate times EAFT's mean gate (needs eaft "
               "first): separates EAFT's protection from its smaller total update.")
SHAPE_TITLES = {"messages": "chat", "prompt_completion": "prompt/completion", "text": "text"}


# ---------------------------------------------------------------------------- the file


def choose_file() -> tuple[str, bytes] | None:
    """The fine-tuning file: an upload wins over the chosen sample. (name, bytes) or None."""
    samples = {path.name: path for path in fs.finetune_samples()}
    left, right = st.columns(2)
    with right:
        upload = st.file_uploader(
            "Upload a fine-tuning file (JSONL)", type=["jsonl", "json"], key=UPLOAD_KEY,
            help="One example per line: {\"messages\": [{\"role\", \"content\"}, ...]}, "
                 "{\"prompt\", \"completion\"} (or \"response\"), or {\"text\"}. Optional: "
                 "\"id\", \"answer\", \"new_facts\" (true, or substrings of the response that "
                 "state new facts).")
    with left:
        if samples:
            sample = st.selectbox("Sample fine-tuning file", list(samples), key=SAMPLE_KEY,
                                  disabled=upload is not None,
                                  help="finetune_conflicts: capitals the model knows, swapped "
                                       "(conflicts by design). finetune_target: arithmetic in "
                                       "a house style. finetune_general: questions the model "
                                       "answers right.")
        else:
            sample = None
            st.info("No sample file in sample_traces/ (run `telltale make-finetune-data`); "
                    "upload a file.")
    if upload is not None:
        return upload.name, upload.getvalue()
    if sample is not None:
        return sample, samples[sample].read_bytes()
    return None


def report_issues(load: FinetuneLoad, name: str, what: str = "example") -> None:
    """How many lines were skipped and why, naming each line and field (in a table: the
    messages quote file content, which must not render as markdown)."""
    if not load.issues:
        return
    st.warning(f"{len(load.issues)} problem(s) in {name}: {load.n_skipped} line(s) skipped, "
               f"{len(load.examples)} valid {what}(s) loaded.")
    with st.expander(f"Problems in {name}"):
        shown = load.issues[:MAX_ISSUES_SHOWN]
        st.dataframe(charts.issue_table(shown), hide_index=True, column_config={
            "field": st.column_config.TextColumn("field", help="'' = the line is not an "
                                                              "example at all"),
            "problem": st.column_config.TextColumn("problem", width="large")})
        if len(load.issues) > len(shown):
            st.caption(f"... and {len(load.issues) - len(shown)} more.")


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


def choose_scan_settings(n_examples: int) -> fs.ScanSettings | None:
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
                                            step=1, key=MAX_EXAMPLES_KEY,
                                            help="the first N of the file")
    try:
        return fs.ScanSettings(k=int(k), norm=str(norm), max_tokens=int(max_tokens),
                               max_examples=None if int(max_examples) >= n_examples
                               else int(max_examples))
    except ValueError as error:
        st.error(str(error))
        return None


def request_scan() -> None:
    """on_click of Scan tokens: the scan starts further down this rerun, after the sidebar has
    loaded the model (the one typed there, when none is loaded yet)."""
    if state.model_choice() is None:
        request_model()
    st.session_state[SCAN_PENDING_KEY] = True


def scan_request() -> fs.ScanRequest | None:
    return fs.ScanRequest.from_state(st.session_state.get(SCAN_KEY))


def current_scan(file_hash: str, settings: fs.ScanSettings,
                 examples: list[FinetuneExample]) -> ConflictScan | None:
    """The scan of this file with these settings on the loaded model (computed with a progress
    bar, or from the cache), or None with a note saying what to do."""
    choice = state.model_choice()
    if st.session_state.pop(SCAN_PENDING_KEY, False) and choice is not None:
        st.session_state[SCAN_KEY] = fs.ScanRequest(choice.as_tuple(), file_hash,
                                                    settings).to_state()
    request = scan_request()
    if request is None or request.file_hash != file_hash or request.settings != settings:
        st.info("Press **Scan tokens** to read every response token with the model: its "
                "probability p, its top-K entropy H~ and the model's own top token. "
                + ("" if choice else "No model is loaded yet: the scan loads the one typed in "
                                     "the sidebar."))
        return None
    if choice is None or choice.as_tuple() != request.model:
        st.info("The model changed since the last scan: press **Scan tokens** again.")
        return None
    total = settings.max_examples or len(examples)
    bar = st.progress(0.0, text=f"Scanning {total} example(s) ...")

    def report(done: int, n: int) -> None:
        bar.progress(done / max(n, 1), text=f"Scanned {done} of {n} example(s)")

    try:
        scan = fs.scan_file(request, examples, progress=report)
    except Exception as error:  # noqa: BLE001 - shown as a sentence, the page keeps working
        bar.empty()
        st.error(f"The scan failed: {type(error).__name__}: {error}")
        return None
    bar.empty()
    if scan.skipped:
        st.caption(f"{len(scan.skipped)} example(s) left out: " + "; ".join(scan.skipped[:3]))
    if scan.tokens.empty:
        st.warning("No example has a response token to score.")
        return None
    return scan


# ---------------------------------------------------------------------------- thresholds


def threshold_inputs(mode: str, disabled: bool = False) -> tuple[float, float, float]:
    """The three cuts of one mode (their own widgets, so each mode keeps its values)."""
    p0, h0, u0 = THRESHOLD_DEFAULTS[mode]
    percent = mode == "percentile"
    cols = st.columns(3)
    p = cols[0].number_input("low p: " + ("percentile" if percent else "p at most"),
                             min_value=0.0, max_value=100.0 if percent else 1.0, value=p0,
                             step=1.0 if percent else 0.01, key=f"finetune_{mode}_p",
                             disabled=disabled, format="%.1f" if percent else "%.3f")
    h = cols[1].number_input("low H~: " + ("percentile" if percent else "H~ at most"),
                             min_value=0.0, max_value=100.0 if percent else 10.0, value=h0,
                             step=1.0 if percent else 0.01, key=f"finetune_{mode}_h",
                             disabled=disabled, format="%.1f" if percent else "%.3f")
    u = cols[2].number_input("uncertain: " + ("percentile of H~" if percent else "H~ at least"),
                             min_value=0.0, max_value=100.0 if percent else 10.0, value=u0,
                             step=1.0 if percent else 0.05, key=f"finetune_{mode}_u",
                             disabled=disabled, format="%.1f" if percent else "%.3f")
    return float(p), float(h), float(u)


def choose_thresholds() -> tuple[Thresholds, Thresholds, float] | None:
    """The chosen thresholds, the other mode's defaults (to count its conflicts too) and EAFT's
    alpha; None (with an error) when a cut is invalid."""
    left, right = st.columns([3, 1])
    with left:
        mode = str(st.radio("Cut the plane by", list(THRESHOLD_DEFAULTS), key=MODE_KEY,
                            horizontal=True, format_func=lambda m: {
                                "percentile": "percentiles of this file",
                                "absolute": "absolute values"}[m]))
        st.caption(THRESHOLD_HELP[mode])
        values = threshold_inputs(mode)
    alpha = right.number_input("EAFT alpha", min_value=0.0, max_value=5.0, value=1.0, step=0.25,
                               key=ALPHA_KEY, help="EAFT weighs each token by H~^alpha")
    other = "absolute" if mode == "percentile" else "percentile"
    p_other, h_other, u_other = THRESHOLD_DEFAULTS[other]
    try:
        chosen = Thresholds(values[0], values[1], values[2], mode=mode)
        compared = Thresholds(p_other, h_other, u_other, mode=other)
    except ValueError as error:
        st.error(str(error))
        return None
    return chosen, compared, float(alpha)


def cut_sentence(thresholds: Thresholds, p_cut: float, h_cut: float, u_cut: float) -> str:
    where = (f" (the {thresholds.p:g}th and {thresholds.h:g}th percentiles of this file)"
             if thresholds.mode == "percentile" else "")
    return (f"confident conflict: p ≤ **{p_cut:.3g}** and H~ ≤ **{h_cut:.3g}**{where}; "
            f"uncertain: H~ ≥ **{u_cut:.3g}**")


# ---------------------------------------------------------------------------- the results


def export_gates(tokens: pd.DataFrame, thresholds: Thresholds,
                 alpha: float) -> dict[str, np.ndarray]:
    """Per-token weights of every gate worth exporting (percentile gates over the whole scan);
    the three-way gate uses the page's conflict cuts."""
    configs = {**default_gates(alpha),
               "hard_mask": LossConfig(kind="hard_mask"),
               "sigmoid": LossConfig(kind="sigmoid"),
               "three_way": LossConfig(kind="three_way", alpha=alpha, conflict=thresholds)}
    return token_gates(tokens, configs)


def show_headline(summary: ConflictSummary, compared_count: int, compared: Thresholds,
                  n_examples: int) -> None:
    quadrants = summary.quadrants
    conflict = quadrants.loc["confident_conflict"]
    cols = st.columns(5)
    cols[0].metric("response tokens", f"{summary.n_tokens:,}",
                   help=f"in {n_examples} example(s)")
    cols[1].metric("confident conflicts", f"{int(conflict['n_tokens'])}",
                   f"{conflict['token_share']:.1%} of tokens", delta_color="off", delta_arrow="off")
    cols[2].metric("their share of SFT loss", f"{conflict['loss_share']:.1%}")
    cols[3].metric("of SFT / EAFT gradient",
                   f"{conflict['sft_grad_share']:.1%} / {conflict['eaft_grad_share']:.1%}")
    label = ("at absolute cuts" if compared.mode == "absolute" else "at percentile cuts")
    cuts = (f"p ≤ {compared.p:g}, H~ ≤ {compared.h:g}" if compared.mode == "absolute"
            else f"bottom {compared.p:g}% / {compared.h:g}%")
    cols[4].metric(f"conflicts {label}", f"{compared_count}", cuts, delta_color="off",
                   delta_arrow="off",
                   help="The same count under the other way of cutting the plane. Percentile "
                        "cuts are relative to the file: when the model is sure (low H~) it is "
                        "mostly right, so the bottom 15% by p and the bottom 15% by H~ barely "
                        "overlap and few conflicts are found; absolute cuts say what 'low' "
                        "means.")


def show_plane(tokens: pd.DataFrame, gates: dict[str, np.ndarray], cuts: Cuts) -> None:
    st.markdown("**The entropy-probability plane** (the paper's figure)")
    p = tokens["p"].to_numpy(dtype=float)
    h = tokens["entropy_norm"].to_numpy(dtype=float)
    figures = cf.plane_figures(p, h, tokens["grad_norm"].to_numpy(dtype=float),
                               {"sft": gates["sft"], "eaft": gates["eaft"]}, cuts,
                               labels=cf.hover_labels(tokens))
    cols = st.columns(3)
    for col, name in zip(cols, ("density", "sft", "eaft"), strict=True):
        col.plotly_chart(figures[name], key=f"finetune_plane_{name}")
    st.caption("Left: where the response tokens sit (darker = more tokens; the crosses are the "
               "confident conflicts, hover one for its tokens). Middle and right: where the "
               "gradient of each loss goes (||dCE/dlogits|| times the token's weight), both as "
               "a share of SFT's total. SFT pushes hardest on low-p tokens, the confident "
               "conflicts among them; EAFT weighs each token by H~^alpha, so it barely touches "
               "the low-entropy corner, and its map is lighter overall too: its weights are "
               "≤ 1, which is why the comparison below includes SFT at a matched learning rate.")


def show_shares(summary: ConflictSummary) -> None:
    quadrants = summary.quadrants
    left, right = st.columns(2)
    left.plotly_chart(cf.quadrant_share_figure(quadrants), key="finetune_shares")
    table = cf.quadrant_table(quadrants)
    right.dataframe(table, hide_index=True, column_config={
        "n_tokens": st.column_config.NumberColumn("tokens (n)"),
        **{title: st.column_config.NumberColumn(title, format="percent")
           for title in cf.SHARE_TITLES.values()}})
    right.caption("Share of the tokens, of the summed SFT loss, and of the gradient pressure "
                  "under SFT and under EAFT in each quadrant.")


def show_conflict_table(marked: pd.DataFrame, stem: str) -> None:
    st.markdown("**The strongest conflicts** (lowest p first: the model surest of something "
                "else)")
    cols = st.columns([2, 2, 2, 1])
    quadrants = cols[0].multiselect("Quadrants", list(cf.QUADRANTS),
                                    default=["confident_conflict"], key=QUADRANT_FILTER_KEY,
                                    format_func=lambda q: cf.QUADRANT_TITLES[q])
    contains = cols[1].text_input("Token or context contains", key=TEXT_FILTER_KEY)
    ids = list(dict.fromkeys(marked["example_id"]))
    example = cols[2].selectbox("Example", [ALL_EXAMPLES, *ids], key=EXAMPLE_FILTER_KEY)
    new_only = cols[3].checkbox("new facts only", key=NEW_FACTS_KEY,
                                help="tokens the file marks as new facts (`new_facts`)")
    rows = cf.conflict_rows(marked, quadrants, contains,
                            None if example == ALL_EXAMPLES else str(example),
                            new_facts_only=new_only, limit=len(marked))
    if rows.empty:
        st.info("No token matches. " + ("Under these cuts no token is a confident conflict: "
                                        "try absolute thresholds, or widen the cuts."
                                        if quadrants == ["confident_conflict"] else ""))
        return
    st.dataframe(rows, hide_index=True, height=min(38 + 35 * len(rows), 360), column_config={
        "example_id": st.column_config.TextColumn("example"),
        "context": st.column_config.TextColumn("context (before the token)", width="large"),
        "target": st.column_config.TextColumn("target token"),
        "model_top": st.column_config.TextColumn("model's top token"),
        "p": st.column_config.NumberColumn("p", format="%.3g"),
        "entropy_norm": st.column_config.NumberColumn("H~", format="%.3f"),
        "new_fact": st.column_config.CheckboxColumn("new fact"),
        "ce": st.column_config.NumberColumn("CE (nats)", format="%.2f")})
    st.caption(f"{len(rows)} token(s).")
    st.download_button("Download these tokens (CSV)", rows.to_csv(index=False),
                       file_name=f"{stem}-conflicts.csv", mime="text/csv", on_click="ignore")


def prompt_lines(example: FinetuneExample) -> str:
    if example.text is not None:
        return "(plain text: every token is trained)"
    return "\n".join(f"{t.role}: {t.content}" for t in example.prompt_turns)


def show_examples(marked: pd.DataFrame, thresholds: Thresholds,
                  examples: dict[str, FinetuneExample]) -> None:
    st.markdown("**Examples by conflict score**")
    scores = example_scores(marked, thresholds).sort_values(
        ["conflict_share", "mean_p"], ascending=[False, True], kind="stable")
    left, right = st.columns([2, 3])
    left.dataframe(scores, hide_index=True, height=min(38 + 35 * len(scores), 400),
                   column_config={
                       "example_id": st.column_config.TextColumn("example"),
                       "n_tokens": st.column_config.NumberColumn("tokens"),
                       "n_conflicts": st.column_config.NumberColumn("conflicts"),
                       "conflict_share": st.column_config.NumberColumn("conflict score",
                                                                       format="percent"),
                       "mean_p": st.column_config.NumberColumn("mean p", format="%.3f"),
                       "mean_entropy_norm": st.column_config.NumberColumn("mean H~",
                                                                          format="%.3f")})
    by_id = scores.set_index("example_id")
    ids = scores["example_id"].astype(str).tolist()
    with right:
        # plain ids: a label with the counts would go stale in the browser when the cuts change
        chosen = st.selectbox("Example", ids, key=EXAMPLE_KEY,
                              help="sorted by conflict score, as in the table")
        colour_by = str(st.radio("Colour tokens by", cf.COLOUR_MODES, key=COLOUR_KEY,
                                 horizontal=True, format_func=COLOUR_TITLES.get))
        if chosen is None or chosen not in by_id.index:
            return
        row = by_id.loc[chosen]
        st.caption(f"{int(row['n_conflicts'])} confident conflict(s) in "
                   f"{int(row['n_tokens'])} response tokens; the prompt:")
        example = examples.get(str(chosen))
        if example is not None:
            st.text(prompt_lines(example))
        tokens = marked[marked["example_id"] == chosen].sort_values("position")
        st.html(cf.example_html(tokens, colour_by))
        st.caption("The trained (response) tokens; hover a token for p, H~, its EAFT weight and "
                   "the model's own top token.")


def show_export(marked: pd.DataFrame, gates: dict[str, np.ndarray], scan: ConflictScan,
                alpha: float, stem: str) -> None:
    st.markdown("**Per-token weights to train with elsewhere**")
    table = cf.weights_table(marked, gates)
    left, right = st.columns([1, 3])
    fmt = str(left.radio("Format", ["jsonl", "parquet"], key=EXPORT_KEY, horizontal=True,
                         format_func=str.upper))
    mime = "application/jsonl" if fmt == "jsonl" else "application/vnd.apache.parquet"
    left.download_button(f"Download weights ({fmt.upper()})",
                         lambda: cf.table_bytes(table, fmt), file_name=f"{stem}-weights.{fmt}",
                         mime=mime, on_click="ignore", type="primary")
    right.caption(f"{len(table):,} rows, one per response token: example_id, position, target "
                  "token, p, H~, quadrant, new_fact, and the weight of each gate: "
                  f"weight_sft (1), weight_eaft (H~^{alpha:g}), weight_hard_mask, "
                  "weight_sigmoid, weight_three_way. Positions index the token ids of the "
                  "chat-templated example under this model's tokenizer (labels convention: the "
                  f"logits that predict a token sit one position earlier); K={scan.k}, "
                  f"H normalised by {'ln K' if scan.norm == 'lnk' else '3.0'}.")
    right.dataframe(table.head(5), hide_index=True)


def show_results(scan: ConflictScan, load: FinetuneLoad, stem: str) -> None:
    """Everything drawn from one scan under the chosen thresholds (no model call here)."""
    st.markdown("**Thresholds**")
    picked = choose_thresholds()
    if picked is None:
        return
    thresholds, compared, alpha = picked
    tokens = scan.tokens
    try:
        summary = summarise_conflicts(tokens, thresholds, default_gates(alpha))
        compared_marked = with_quadrants(tokens, compared)
    except ValueError as error:
        st.error(str(error))
        return
    cuts = summary.cuts
    st.caption(cut_sentence(thresholds, cuts.p, cuts.h, cuts.uncertain))
    compared_count = int((compared_marked["quadrant"] == "confident_conflict").sum())
    show_headline(summary, compared_count, compared, scan.n_examples)
    gates = export_gates(tokens, thresholds, alpha)
    marked = with_quadrants(tokens, thresholds).assign(weight_eaft=gates["eaft"])
    show_plane(marked, gates, cuts)
    show_shares(summary)
    show_conflict_table(marked, stem)
    show_examples(marked, thresholds, {e.id: e for e in load.examples})
    show_export(marked, gates, scan, alpha, stem)


# ---------------------------------------------------------------------------- the comparison


def choose_general() -> tuple[str, bytes] | None:
    samples = {path.name: path for path in fs.finetune_samples()}
    left, right = st.columns(2)
    with right:
        upload = st.file_uploader("Or upload a general file (JSONL)", type=["jsonl", "json"],
                                  key=GENERAL_UPLOAD_KEY)
    with left:
        names = list(samples)
        sample = None
        if names:
            sample = st.selectbox("General file: what the model should not forget", names,
                                  key=GENERAL_SAMPLE_KEY, disabled=upload is not None,
                                  index=names.index(GENERAL_SAMPLE) if GENERAL_SAMPLE in names
                                  else 0)
    if upload is not None:
        return upload.name, upload.getvalue()
    if sample is not None:
        return sample, samples[sample].read_bytes()
    return None


def request_compare() -> None:
    """on_click of Start comparison: the run starts further down this rerun, after the sidebar
    has loaded the model."""
    if state.model_choice() is None:
        request_model()
    st.session_state[COMPARE_PENDING_KEY] = True


def compare_settings(file_hash: str, general_hash: str) -> fs.CompareRequest | None:
    """The run the inputs describe (the model filled in when it starts)."""
    peft = fs.has_peft()
    cols = st.columns([3, 1, 1, 1, 1, 1])
    methods = cols[0].multiselect("Methods", list(METHODS), default=list(DEFAULT_METHODS),
                                  key=METHODS_KEY, help=METHOD_HELP)
    steps = cols[1].number_input("Steps", min_value=1, max_value=10_000, value=4, step=1,
                                 key=STEPS_KEY, help="training steps per method")
    batch = cols[2].number_input("Batch size", min_value=1, max_value=256, value=2, step=1,
                                 key=BATCH_KEY)
    max_eval = cols[3].number_input("Eval examples", min_value=1, max_value=10_000, value=4,
                                    step=1, key=MAX_EVAL_KEY,
                                    help="at most this many held-out target and general "
                                         "examples are measured (greedy replies take time)")
    lr = cols[4].selectbox("Learning rate", LEARNING_RATES, key=LR_KEY,
                           help="default: 2e-4 with LoRA, 3e-5 without (AdamW, constant)")
    with cols[5]:
        st.write("")  # line the checkbox up with the inputs
        lora = st.checkbox("LoRA", value=peft, key=LORA_KEY, disabled=not peft,
                           help="train LoRA adapters (peft) instead of every weight"
                           if peft else "needs the peft package (pip install peft)")
    model = state.model_choice()
    request = fs.CompareRequest(
        model=model.as_tuple() if model else ("", "", ""), train_hash=file_hash,
        general_hash=general_hash, methods=tuple(str(m) for m in methods), steps=int(steps),
        batch_size=int(batch), lora=bool(lora and peft), max_eval=int(max_eval),
        lr=None if lr == "default" else float(str(lr)))
    try:
        request.config()
    except ValueError as error:
        st.error(str(error))
        return None
    return request


def start_compare(request: fs.CompareRequest, train: list[FinetuneExample],
                  general: list[FinetuneExample]) -> None:
    loaded = state.current_model()
    choice = state.model_choice()
    if loaded is None or choice is None:
        st.warning("No model is loaded (see the sidebar): load one, then press **Start "
                   "comparison**.")
        return
    if len(train) < 2:
        st.error("The comparison holds a quarter of the target examples out: it needs at "
                 "least two.")
        return
    request = replace(request, model=choice.as_tuple())
    try:
        job = fs.compare_board().start(request, loaded, train, general)
    except ValueError as error:
        st.error(str(error))
        return
    st.session_state[COMPARE_JOB_KEY] = job.request.key


def follow(job: fs.CompareJob) -> None:
    """A progress bar while the run works (in its thread; a rerun finds it again)."""
    bar = st.progress(0.0, text="Starting the comparison ...")
    while job.running:
        if job.total:
            bar.progress(min(job.done / job.total, 1.0),
                         text=f"Training and measuring: {job.done} of {job.total} "
                              "(steps and evaluations)")
        time.sleep(POLL_S)
    bar.empty()


def show_comparison(job: fs.CompareJob, stem: str) -> None:
    if job.error:
        st.error(job.error)
        return
    table = job.table
    if table is None:
        return
    request = job.request
    st.caption(f"{len(request.methods)} method(s), {request.steps} step(s) of batch "
               f"{request.batch_size}{', LoRA' if request.lora else ''}, measured on at most "
               f"{request.max_eval} held-out target and general example(s); d_ = change from "
               "the base model. Loss: mean CE of the response tokens (lower on the target = "
               "learned; higher on general = forgot); accuracy: share of greedy replies giving "
               "the answer.")
    st.dataframe(table, hide_index=True, column_config={
        "lr": st.column_config.NumberColumn("lr", format="%.1e"),
        "mean_gate": st.column_config.NumberColumn("mean gate", format="%.3f"),
        **{c: st.column_config.NumberColumn(c, format="%.3f") for c in table.columns
           if c.endswith("_loss")},
        **{c: st.column_config.NumberColumn(c, format="percent") for c in table.columns
           if c.endswith("_acc")},
        "train_seconds": st.column_config.NumberColumn("train s", format="%.1f")})
    st.plotly_chart(cf.compare_figure(table), key="finetune_compare_chart")
    st.download_button("Download the comparison (CSV)", table.to_csv(index=False),
                       file_name=f"{stem}-compare.csv", mime="text/csv", on_click="ignore")


def compare_section(file_hash: str, train: list[FinetuneExample], stem: str) -> None:
    st.subheader("SFT against EAFT: does the gate protect the model?")
    st.caption("Fine-tune copies of the model on this file with each method (same seed, same "
               "batches), then measure held-out target data (what it learned) and general data "
               "(what it forgot). A short run: a few steps; on a CPU allow a minute or two per "
               "method.")
    general_file = choose_general()
    if general_file is None:
        st.info("Upload a general file to compare against.")
        return
    general_name, general_data = general_file
    general_load = fs.read_finetune_file(general_data, general_name)
    report_issues(general_load, general_name)
    if not general_load.examples:
        st.info(f"{general_name} holds no valid example.")
        return
    request = compare_settings(file_hash, state.content_hash(general_data))
    if request is not None and st.session_state.pop(COMPARE_PENDING_KEY, False):
        start_compare(request, train, general_load.examples)
    job = fs.compare_board().get(st.session_state.get(COMPARE_JOB_KEY))
    running = job is not None and job.running
    st.button("Start comparison", type="primary", on_click=request_compare,
              disabled=running or request is None)
    if job is None:
        return
    if job.running:
        follow(job)
        st.rerun()  # once, at the end: the button and the table reflect the finished run
    show_comparison(job, stem)


# ---------------------------------------------------------------------------- the page


def render() -> None:
    """The page (run by `st.navigation` in dashboard/app.py)."""
    st.title("Fine-tuning")
    st.caption("Before training: which tokens of a fine-tuning set fight what the model already "
               "knows (confident conflicts: low p, low entropy), and how much of the SFT update "
               "they would take. Then train with SFT and EAFT and see what each forgot.")
    chosen = choose_file()
    if chosen is None:
        return
    name, data = chosen
    load = fs.read_finetune_file(data, name)
    report_issues(load, name)
    if not load.examples:
        st.info(f"{name} holds no valid example ({load.n_lines} line(s) read). Each line must be "
                "a JSON object with 'messages', 'prompt' + 'completion', or 'text'.")
        return
    show_file_summary(load)
    stem = Path(name).stem
    file_hash = state.content_hash(data)

    st.subheader("Confident conflicts")
    settings = choose_scan_settings(len(load.examples))
    st.button("Scan tokens", type="primary", on_click=request_scan, disabled=settings is None)
    if settings is not None:
        scan = current_scan(file_hash, settings, load.examples)
        if scan is not None:
            show_results(scan, load, stem)
    compare_section(file_hash, load.examples, stem)
