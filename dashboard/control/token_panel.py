"""The Fine-tuning page's token tables under the chosen cuts: the strongest conflicts
(filtered), the examples by conflict score with one example's tokens coloured, and the
per-token weights to export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.control.conflicts import ConflictScan, example_scores
from core.control.entropy import Thresholds
from core.control.finetune_data import FinetuneExample
from dashboard.common.widgets import download, table_download
from dashboard.control import charts as cf

QUADRANT_FILTER_KEY = "finetune_filter_quadrants"
TEXT_FILTER_KEY = "finetune_filter_text"
EXAMPLE_FILTER_KEY = "finetune_filter_example"
NEW_FACTS_KEY = "finetune_filter_new_facts"
EXAMPLE_KEY = "finetune_example"
COLOUR_KEY = "finetune_colour_by"
EXPORT_KEY = "finetune_export_format"
ALL_EXAMPLES = "(every example)"
COLOUR_TITLES = {"p": "p of the target (low = red)", "gate": "EAFT weight H~^alpha",
                 "quadrant": "quadrant"}


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
    table_download("Download these tokens (CSV)", rows, f"{stem}-conflicts.csv")


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
        n_conflicts = int(cf.numbers(by_id, "n_conflicts").loc[chosen])
        n_tokens = int(cf.numbers(by_id, "n_tokens").loc[chosen])
        st.caption(f"{n_conflicts} confident conflict(s) in {n_tokens} response tokens; the "
                   "prompt:")
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
    download(f"Download weights ({fmt.upper()})", lambda: cf.table_bytes(table, fmt),
             f"{stem}-weights.{fmt}", mime, where=left, type="primary")
    right.caption(f"{len(table):,} rows, one per response token: example_id, position, target "
                  "token, p, H~, quadrant, new_fact, and the weight of each gate: "
                  f"weight_sft (1), weight_eaft (H~^{alpha:g}), weight_hard_mask, "
                  "weight_sigmoid, weight_three_way. Positions index the token ids of the "
                  "chat-templated example under this model's tokenizer (labels convention: the "
                  f"logits that predict a token sit one position earlier); K={scan.k}, "
                  f"H normalised by {'ln K' if scan.norm == 'lnk' else '3.0'}.")
    right.dataframe(table.head(5), hide_index=True)
