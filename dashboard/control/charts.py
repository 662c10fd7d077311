"""Pure functions for the Fine-tuning page: token statistics in, a plotly figure, a table, HTML or
export bytes out. No Streamlit here, and no torch (the quadrant names are written out; a test
checks they match `core.control.entropy.QUADRANTS`).

The token table is `core.control.conflicts.scan_conflicts(...).tokens` with a `quadrant` column
(`core.control.conflicts.with_quadrants`) and the decoded token text (`target_text`,
`top_text`) that `dashboard.control.state` adds. Cuts are anything with `p`, `h` and
`uncertain` (a `core.control.entropy.Cuts`).

    figures = plane_figures(p, h, grad, {"sft": w_sft, "eaft": w_eaft}, cuts)
    html = example_html(tokens_of_one_example, colour_by="p")
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

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
# light to dark blue; empty cells are left blank, so even a cell of one token must show
DENSITY_SCALE = [[0.0, "#C6DBEF"], [0.5, "#4292C6"], [1.0, "#08306B"]]
BINS = 20
MAX_MARKERS = 400  # conflict tokens drawn as points over the density map
PLANE_HEIGHT = 400
P_TITLE = "p (probability of the target token)"
H_TITLE = "H~ (normalised top-K entropy)"
CONFLICT_COLUMNS = ("example_id", "position", "context", "target", "model_top", "p",
                    "entropy_norm", "quadrant", "new_fact", "ce")
EXPORT_COLUMNS = ("example_id", "position", "target_id", "target_token", "p", "entropy_norm",
                  "quadrant", "new_fact")
COLOUR_MODES = ("p", "gate", "quadrant")


class CutsLike(Protocol):
    """`core.control.entropy.Cuts`: the resolved p, H~ and uncertain cuts."""

    @property
    def p(self) -> float: ...
    @property
    def h(self) -> float: ...
    @property
    def uncertain(self) -> float: ...


# ---------------------------------------------------------------------------- the plane


@dataclass(frozen=True)
class PlaneGrid:
    """The (p, H~) plane cut into cells: `values[i, j]` sums the weights of the tokens with H~ in
    bin i and p in bin j (rows are H~, as a heat map draws them), `counts` counts them."""

    p_edges: np.ndarray  # [p_bins + 1]
    h_edges: np.ndarray  # [h_bins + 1]
    values: np.ndarray  # [h_bins, p_bins]
    counts: np.ndarray  # [h_bins, p_bins]

    @property
    def p_centres(self) -> np.ndarray:
        return (self.p_edges[:-1] + self.p_edges[1:]) / 2

    @property
    def h_centres(self) -> np.ndarray:
        return (self.h_edges[:-1] + self.h_edges[1:]) / 2


def plane_grid(p: np.ndarray, h: np.ndarray, weights: np.ndarray | None = None,
               bins: int = BINS, h_max: float | None = None) -> PlaneGrid:
    """Bin tokens on the plane p in [0, 1] x H~ in [0, h_max] (default: 1, or the largest H~
    when the code's normalisation lets it pass 1). Naive: values[i, j] = sum of w_t over tokens
    with h_edges[i] <= H~_t < h_edges[i+1] and p_edges[j] <= p_t < p_edges[j+1] (the last bin
    includes its right edge)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}.")
    p = np.asarray(p, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    if p.shape != h.shape:
        raise ValueError(f"p {p.shape} and H~ {h.shape} must have the same shape.")
    top = max(1.0, float(h.max()) if h.size else 1.0) if h_max is None else h_max
    p_edges = np.linspace(0.0, 1.0, bins + 1)
    h_edges = np.linspace(0.0, top, bins + 1)
    counts, _, _ = np.histogram2d(h, p, bins=[h_edges, p_edges])
    if weights is None:
        values = counts
    else:
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), p.shape)
        values, _, _ = np.histogram2d(h, p, bins=[h_edges, p_edges], weights=w)
    return PlaneGrid(p_edges, h_edges, values, counts.astype(np.int64))


def _mark_cuts(fig: go.Figure, cuts: CutsLike, h_top: float) -> None:
    """The confident-conflict corner (a dashed box) and the uncertain line."""
    fig.add_shape(type="rect", x0=0, y0=0, x1=max(cuts.p, 0.004), y1=max(cuts.h, 0.004 * h_top),
                  line={"color": CORNER_COLOUR, "width": 2, "dash": "dash"},
                  fillcolor="rgba(214, 39, 40, 0.06)", layer="above")
    fig.add_annotation(x=max(cuts.p, 0.004), y=max(cuts.h, 0.004 * h_top),
                       text="confident conflict", showarrow=False, xanchor="left",
                       yanchor="bottom", font={"color": CORNER_COLOUR, "size": 11})
    if cuts.uncertain <= h_top:
        fig.add_hline(y=cuts.uncertain, line={"color": "#8C6D00", "width": 1, "dash": "dot"},
                      annotation_text="uncertain above", annotation_position="top right",
                      annotation_font={"color": "#8C6D00", "size": 10})


def _plane_layout(fig: go.Figure, title: str, h_top: float) -> None:
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=PLANE_HEIGHT,
                      margin={"t": 50, "l": 60, "r": 10, "b": 50}, plot_bgcolor="white",
                      showlegend=False)
    fig.update_xaxes(title=P_TITLE, range=[-0.02, 1.02], showgrid=False, zeroline=False,
                     linecolor="#ccc", mirror=True)
    fig.update_yaxes(title=H_TITLE, range=[-0.02 * h_top, 1.02 * h_top], showgrid=False,
                     zeroline=False, linecolor="#ccc", mirror=True)


def density_figure(p: np.ndarray, h: np.ndarray, cuts: CutsLike,
                   labels: Sequence[str] | None = None, bins: int = BINS) -> go.Figure:
    """How many tokens sit where on the (p, H~) plane: a heat map (log colour: a few dense cells
    would wash out the rest), the conflict corner boxed; with `labels` (one hover text per token)
    the tokens inside the corner are drawn as points too."""
    grid = plane_grid(p, h, bins=bins)
    shown = np.where(grid.counts > 0, np.log10(np.maximum(grid.counts, 1)) + 0.3, np.nan)
    top = max(1, int(grid.counts.max()) if grid.counts.size else 1)
    ticks = [v for v in (1, 10, 100, 1000, 10000, 100000) if v <= top] or [1]
    fig = go.Figure(go.Heatmap(
        x=grid.p_centres, y=grid.h_centres, z=shown, customdata=grid.counts,
        colorscale=DENSITY_SCALE, zmin=0, zmax=math.log10(top) + 0.3, xgap=1, ygap=1,
        colorbar={"title": {"text": "tokens", "side": "right"}, "thickness": 12,
                  "tickvals": [math.log10(v) + 0.3 for v in ticks],
                  "ticktext": [str(v) for v in ticks]},
        hovertemplate="p %{x:.2f}, H~ %{y:.2f}<br>%{customdata} token(s)<extra></extra>"))
    h_top = float(grid.h_edges[-1])
    if labels is not None:
        p_arr, h_arr = np.asarray(p), np.asarray(h)
        inside = np.flatnonzero((p_arr <= cuts.p) & (h_arr <= cuts.h))[:MAX_MARKERS]
        if inside.size:
            fig.add_trace(go.Scatter(
                x=p_arr[inside], y=h_arr[inside], mode="markers", name="confident conflict",
                marker={"color": CORNER_COLOUR, "size": 7, "symbol": "x"}, cliponaxis=False,
                text=[labels[i] for i in inside], hovertemplate="%{text}<extra></extra>"))
    _mark_cuts(fig, cuts, h_top)
    _plane_layout(fig, f"Where the {len(np.asarray(p))} response tokens sit", h_top)
    return fig


def pressure_grids(p: np.ndarray, h: np.ndarray, grad_norm: np.ndarray,
                   gates: Mapping[str, np.ndarray], reference: str = "sft",
                   bins: int = BINS) -> dict[str, PlaneGrid]:
    """Gradient pressure per cell under each loss, in percent of the reference loss's total:
    values[i, j] = 100 * sum_cell w_t g_t / sum_all w_ref g_t (g_t = ||dCE/dz||, w the gate).
    Sharing the reference keeps the maps comparable: EAFT's map is lighter overall, because its
    weights are <= 1, as well as lighter in the conflict corner."""
    grad = np.asarray(grad_norm, dtype=np.float64)
    total = float((np.broadcast_to(np.asarray(gates[reference], dtype=np.float64), grad.shape)
                   * grad).sum())
    scale = 100.0 / total if total > 0 else 0.0
    return {name: plane_grid(p, h, np.asarray(w, dtype=np.float64) * grad * scale, bins=bins)
            for name, w in gates.items()}


def pressure_figure(grid: PlaneGrid, cuts: CutsLike, title: str, zmax: float) -> go.Figure:
    """One gradient-pressure map (from `pressure_grids`), its colour scale running to `zmax` so
    that two maps side by side read on the same scale."""
    shown = np.where(grid.counts > 0, grid.values, np.nan)
    fig = go.Figure(go.Heatmap(
        x=grid.p_centres, y=grid.h_centres, z=shown, customdata=grid.counts,
        colorscale="Reds", zmin=0, zmax=max(zmax, 1e-9), xgap=1, ygap=1,
        colorbar={"title": {"text": "% of SFT pressure", "side": "right"}, "thickness": 12},
        hovertemplate=("p %{x:.2f}, H~ %{y:.2f}<br>%{z:.2f}% of SFT's gradient pressure"
                       "<br>%{customdata} token(s)<extra></extra>")))
    h_top = float(grid.h_edges[-1])
    _mark_cuts(fig, cuts, h_top)
    _plane_layout(fig, title, h_top)
    return fig


def plane_figures(p: np.ndarray, h: np.ndarray, grad_norm: np.ndarray,
                  gates: Mapping[str, np.ndarray], cuts: CutsLike,
                  labels: Sequence[str] | None = None, bins: int = BINS) -> dict[str, go.Figure]:
    """The paper's figure: "density" (where tokens sit) and, for each gate (keys of `gates`,
    "sft" first), where the gradient pressure of that loss goes, on one colour scale."""
    grids = pressure_grids(p, h, grad_norm, gates, bins=bins)
    zmax = max((float(np.nanmax(g.values)) if g.values.size else 0.0) for g in grids.values())
    titles = {"sft": "Gradient pressure under SFT", "eaft": "Gradient pressure under EAFT"}
    figures = {"density": density_figure(p, h, cuts, labels, bins)}
    for name, grid in grids.items():
        figures[name] = pressure_figure(grid, cuts, titles.get(name, f"Gradient pressure ({name})"),
                                        zmax)
    return figures


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


# ---------------------------------------------------------------------------- comparison


def compare_figure(table: pd.DataFrame) -> go.Figure:
    """What each method learned and forgot: per method (not the base row), the change of the
    held-out target loss (below 0: it learned the target) and of the general loss (above 0: it
    forgot), side by side."""
    rows = table[table["method"] != "base"]
    fig = go.Figure([
        go.Bar(x=rows["method"], y=rows["d_target_loss"],
               name="held-out target loss (down = learned)",
               marker={"color": "#4C78A8"},
               hovertemplate="%{x}: target loss %{y:+.3f}<extra></extra>"),
        go.Bar(x=rows["method"], y=rows["d_general_loss"],
               name="general loss (up = forgot)", marker={"color": "#E45756"},
               hovertemplate="%{x}: general loss %{y:+.3f}<extra></extra>"),
    ])
    fig.update_layout(barmode="group", height=320, title={
        "text": "Loss change from the base model", "font": {"size": 14}},
        yaxis={"title": "change of mean CE (nats)", "zeroline": True,
               "zerolinecolor": "#888"},
        margin={"t": 50, "l": 60, "r": 10, "b": 40}, legend={"orientation": "h", "y": -0.15})
    return fig


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
    "BINS", "COLOUR_MODES", "CONFLICT_COLUMNS", "EXPORT_COLUMNS", "QUADRANTS", "QUADRANT_TITLES",
    "SHARE_TITLES", "PlaneGrid", "compare_figure", "conflict_rows", "density_figure",
    "example_html", "hover_label", "hover_labels", "numbers", "plane_figures", "plane_grid",
    "pressure_figure", "pressure_grids", "quadrant_share_figure", "quadrant_table",
    "table_bytes", "visible_token", "weights_table",
]
