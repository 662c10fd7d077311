"""Pure functions for the Fine-tuning page: token statistics in, a plotly figure, a table, HTML or
export bytes out (the plane's figures are `plane_charts`). No Streamlit here, and no torch (the
quadrant names are written out; a test checks they match `core.control.entropy.QUADRANTS`).

The token table is `core.control.conflicts.scan_conflicts(...).tokens` with a `quadrant` column
(`core.control.conflicts.with_quadrants`) and the decoded token text (`target_text`,
`top_text`) that `dashboard.control.state` adds.

    html = example_html(tokens_of_one_example, colour_by="p")
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

QUADRANTS = ("confident_conflict", "confident_right", "uncertain", "other")
QUADRANT_TITLES = {
    "confident_conflict": "confident conflict",
    "confident_right": "confident and right",
    "uncertain": "uncertain",
    "other": "other",
}
QUADRANT_COLOURS = {
    "confident_conflict": "#D62728",
    "confident_right": "#4C78A8",
    "uncertain": "#F2B701",
    "other": "#BAB0AC",
}
# quadrant table columns of `core.control.conflicts.ConflictSummary.quadrants` -> page titles
SHARE_TITLES = {
    "token_share": "tokens",
    "loss_share": "SFT loss",
    "sft_grad_share": "SFT gradient",
    "eaft_grad_share": "EAFT gradient",
}
CORNER_COLOUR = "#D62728"
CONFLICT_COLUMNS = ("example_id", "position", "context", "target", "model_top", "p",
                    "entropy_norm", "quadrant", "new_fact", "ce")
EXPORT_COLUMNS = ("example_id", "position", "target_id", "target_token", "p", "entropy_norm",
                  "quadrant", "new_fact")
COLOUR_MODES = ("p", "gate", "quadrant")


# ---------------------------------------------------------------------------- quadrants


def numbers(table: pd.DataFrame, column: str) -> pd.Series[float]:
    """A numeric column as floats, by the table's index: `numbers(t, "p").loc[row]` is a
    float (pandas types a frame's cells as any scalar at all)."""
    return table[column].astype(float)


def quadrant_table(quadrants: pd.DataFrame) -> pd.DataFrame:
    """`ConflictSummary.quadrants` for display: quadrant (its title), tokens (a count) and the
    four shares (tokens, SFT loss, SFT gradient, EAFT gradient) as fractions."""
    rows = []
    for name in QUADRANTS:
        if name not in quadrants.index:
            continue
        rows.append({"quadrant": QUADRANT_TITLES[name],
                     "n_tokens": int(numbers(quadrants, "n_tokens").loc[name]),
                     **{title: float(numbers(quadrants, col).loc[name])
                        for col, title in SHARE_TITLES.items() if col in quadrants.columns}})
    return pd.DataFrame(rows)


def quadrant_share_figure(quadrants: pd.DataFrame) -> go.Figure:
    """One horizontal 100% bar per measure (tokens, SFT loss, SFT gradient, EAFT gradient), cut
    into the quadrants: a conflict corner holding few tokens but much of the loss shows at once."""
    measures = [col for col in SHARE_TITLES if col in quadrants.columns]
    fig = go.Figure()
    for name in QUADRANTS:
        if name not in quadrants.index:
            continue
        values = [100 * float(numbers(quadrants, col).loc[name]) for col in measures]
        fig.add_trace(go.Bar(
            y=[SHARE_TITLES[col] for col in measures], x=values, orientation="h",
            name=QUADRANT_TITLES[name], marker={"color": QUADRANT_COLOURS[name]},
            text=[f"{v:.0f}%" if v >= 4 else "" for v in values], textposition="inside",
            hovertemplate=f"{QUADRANT_TITLES[name]}: " + "%{x:.1f}% of %{y}<extra></extra>"))
    fig.update_layout(barmode="stack", height=260, title={"text": "Shares per quadrant",
                                                          "font": {"size": 14}},
                      margin={"t": 40, "l": 100, "r": 10, "b": 30},
                      legend={"orientation": "h", "y": -0.2, "traceorder": "normal"},
                      xaxis={"range": [0, 100], "ticksuffix": "%"},
                      yaxis={"autorange": "reversed"})
    return fig


# ---------------------------------------------------------------------------- tokens


def visible_token(text: str) -> str:
    """A token's text with its whitespace made visible: newline ↵, tab ⇥, a token of spaces ␣."""
    shown = str(text).replace("\r", "").replace("\n", "↵").replace("\t", "⇥")
    return shown if shown.strip() else "␣" * max(1, len(shown))


def conflict_rows(tokens: pd.DataFrame, quadrants: Sequence[str] = ("confident_conflict",),
                  contains: str = "", example: str | None = None, max_p: float = 1.0,
                  new_facts_only: bool = False, limit: int = 200) -> pd.DataFrame:
    """The strongest conflicts first: the tokens of the chosen quadrants whose target, the
    model's top token or context contains `contains` (plain text, any case), of `example` (None:
    every example), with p <= max_p, sorted by p then H~ (the model surest of something else
    first). Columns CONFLICT_COLUMNS; target and model_top with their whitespace made visible."""
    chosen = tokens[tokens["quadrant"].isin(list(quadrants)) & (tokens["p"] <= max_p)]
    if example is not None:
        chosen = chosen[chosen["example_id"] == example]
    if new_facts_only:
        chosen = chosen[chosen["new_fact"].astype(bool)]
    needle = contains.strip().lower()
    if needle:
        hay = (chosen["target_text"].astype(str) + "\x00" + chosen["top_text"].astype(str)
               + "\x00" + chosen["context"].astype(str)).str.lower()
        chosen = chosen[hay.str.contains(needle, regex=False)]
    chosen = chosen.sort_values(["p", "entropy_norm"], kind="stable").head(limit)
    out = pd.DataFrame({
        "example_id": chosen["example_id"], "position": chosen["position"],
        "context": chosen["context"].astype(str).str.replace("\n", "↵", regex=False),
        "target": chosen["target_text"].map(visible_token),
        "model_top": chosen["top_text"].map(visible_token),
        "p": chosen["p"], "entropy_norm": chosen["entropy_norm"],
        "quadrant": chosen["quadrant"].map(lambda q: QUADRANT_TITLES.get(q, q)),
        "new_fact": chosen["new_fact"].astype(bool), "ce": chosen["ce"]})
    return out.reset_index(drop=True)[list(CONFLICT_COLUMNS)]


def _p_colour(p: float) -> str:
    """Low p red, p = 1 white."""
    return f"rgba(214, 39, 40, {0.8 * (1.0 - min(max(p, 0.0), 1.0)):.3f})"


def _gate_colour(weight: float) -> str:
    """Weight 0 white, 1 blue: how much the loss learns from the token."""
    return f"rgba(76, 120, 168, {0.8 * min(max(weight, 0.0), 1.0):.3f})"


def _quadrant_colour(quadrant: str) -> str:
    colour = QUADRANT_COLOURS.get(quadrant, "#BAB0AC").lstrip("#")
    r, g, b = (int(colour[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r}, {g}, {b}, {0.15 if quadrant == 'other' else 0.45})"


def example_html(tokens: pd.DataFrame, colour_by: str = "p", weight_column: str = "weight_eaft",
                 gate_title: str = "EAFT weight") -> str:
    """The response tokens of one example, each behind a colour: by p (low red), by the gate
    (`weight_column`, 0 white to 1 blue) or by quadrant; confident conflicts are underlined in
    red whatever the colour, and hovering a token shows its numbers and the model's own top
    token. Token text is HTML-escaped."""
    if colour_by not in COLOUR_MODES:
        raise ValueError(f"colour_by must be one of {', '.join(COLOUR_MODES)}, not {colour_by!r}.")
    if colour_by == "gate" and weight_column not in tokens.columns:
        raise ValueError(f"Colouring by the gate needs a {weight_column!r} column.")
    spans = []
    weights = (tokens[weight_column].to_numpy(dtype=float) if weight_column in tokens.columns
               else np.full(len(tokens), math.nan))
    for quadrant, p, h, weight, target, top in zip(
            tokens["quadrant"].astype(str), tokens["p"].to_numpy(dtype=float),
            tokens["entropy_norm"].to_numpy(dtype=float), weights,
            tokens["target_text"].astype(str), tokens["top_text"].astype(str), strict=True):
        colour = (_p_colour(float(p)) if colour_by == "p" else
                  _gate_colour(float(weight)) if colour_by == "gate"
                  else _quadrant_colour(quadrant))
        tip = (f"target {visible_token(target)!r} · model's top {visible_token(top)!r} · p "
               f"{p:.3f} · H~ {h:.3f}"
               + (f" · {gate_title} {weight:.3f}" if not math.isnan(weight) else "")
               + f" · {QUADRANT_TITLES.get(quadrant, quadrant)}")
        mark = (f"border-bottom:2px solid {CORNER_COLOUR};" if quadrant == "confident_conflict"
                else "")
        spans.append(f'<span title="{html.escape(tip)}" style="background:{colour};{mark}'
                     f'border-radius:3px;padding:1px 0">{html.escape(target)}</span>')
    if colour_by == "p":
        scale = "".join(f'<span style="background:{_p_colour(v / 4)};padding:1px 6px">'
                        f"{v / 4:.2f}</span>" for v in range(5))
        legend = f"p: {scale}"
    elif colour_by == "gate":
        scale = "".join(f'<span style="background:{_gate_colour(v / 4)};padding:1px 6px">'
                        f"{v / 4:.2f}</span>" for v in range(5))
        legend = f"{html.escape(gate_title)}: {scale}"
    else:
        legend = " ".join(f'<span style="background:{_quadrant_colour(q)};padding:1px 6px">'
                          f"{QUADRANT_TITLES[q]}</span>" for q in QUADRANTS)
    legend += (f' &nbsp;<span style="border-bottom:2px solid {CORNER_COLOUR}">underlined</span>'
               " = confident conflict")
    body = "".join(spans) or '<span style="color:#999">(no response token)</span>'
    return ('<div><div style="border:1px solid #e6e6e6;border-radius:6px;padding:6px 10px;'
            'white-space:pre-wrap;font-family:monospace;font-size:0.9rem;line-height:1.8">'
            f'{body}</div><div style="font-size:0.8rem;color:#666;margin-top:4px">{legend}'
            "</div></div>")


# ---------------------------------------------------------------------------- export


def weights_table(tokens: pd.DataFrame, gates: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per response token to train with elsewhere: EXPORT_COLUMNS (target_token is the
    decoded text) and `weight_{name}` for each gate. Positions index the token ids of the
    chat-templated example under the scanning model's tokenizer (the Hugging Face labels
    convention: the logits that predict it sit at position - 1)."""
    out = pd.DataFrame({
        "example_id": tokens["example_id"].astype(str), "position": tokens["position"],
        "target_id": tokens["target_id"], "target_token": tokens["target_text"].astype(str),
        "p": tokens["p"].astype(float), "entropy_norm": tokens["entropy_norm"].astype(float),
        "quadrant": tokens["quadrant"].astype(str), "new_fact": tokens["new_fact"].astype(bool)})
    for name, weights in gates.items():
        values = np.asarray(weights, dtype=np.float64)
        if values.shape != (len(tokens),):
            raise ValueError(f"The {name} weights have shape {values.shape}; expected "
                             f"({len(tokens)},), one per token.")
        out[f"weight_{name}"] = values
    return out.reset_index(drop=True)


def table_bytes(table: pd.DataFrame, fmt: str) -> bytes:
    """A table as JSONL (one JSON object per line, UTF-8) or Parquet."""
    if fmt == "jsonl":
        if table.empty:
            return b""
        return table.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8")
    if fmt == "parquet":
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        return buffer.getvalue()
    raise ValueError(f"The export format must be 'jsonl' or 'parquet', not {fmt!r}.")


# ---------------------------------------------------------------------------- hover


def hover_label(target: str, top: str, p: float, h: float, example_id: str) -> str:
    """The hover text of one token point: its example, target, the model's top token, p, H~."""
    return (f"{html.escape(example_id)}<br>target {html.escape(repr(visible_token(target)))}"
            f" · model's top {html.escape(repr(visible_token(top)))}<br>p {p:.3f} · H~ {h:.3f}")


def hover_labels(tokens: pd.DataFrame) -> list[str]:
    """`hover_label` of every row of a token table."""
    return [hover_label(str(t), str(o), float(p), float(h), str(e)) for t, o, p, h, e in zip(
        tokens["target_text"], tokens["top_text"], tokens["p"], tokens["entropy_norm"],
        tokens["example_id"], strict=True)]


__all__ = [
    "COLOUR_MODES", "CONFLICT_COLUMNS", "EXPORT_COLUMNS", "QUADRANTS", "QUADRANT_TITLES",
    "SHARE_TITLES", "conflict_rows", "example_html", "hover_label",
    "hover_labels", "numbers", "quadrant_share_figure", "quadrant_table", "table_bytes",
    "visible_token", "weights_table",
]
