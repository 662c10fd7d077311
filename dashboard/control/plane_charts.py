"""Pure figures of the entropy-probability plane for the Fine-tuning page: where a file's
response tokens sit (p against normalised top-K entropy H~), and where the gradient of SFT and
of EAFT pushes, with the confident-conflict corner and the uncertain line marked. Arrays in, a
plotly figure out; no Streamlit and no torch. Cuts are anything with `p`, `h` and `uncertain`
(a `core.control.entropy.Cuts`).

    figures = plane_figures(p, h, grad, {"sft": w_sft, "eaft": w_eaft}, cuts)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import plotly.graph_objects as go

from dashboard.control.charts import CORNER_COLOUR

# light to dark blue; empty cells are left blank, so even a cell of one token must show
DENSITY_SCALE = [[0.0, "#C6DBEF"], [0.5, "#4292C6"], [1.0, "#08306B"]]
BINS = 20
MAX_MARKERS = 400  # conflict tokens drawn as points over the density map
PLANE_HEIGHT = 400
P_TITLE = "p (probability of the target token)"
H_TITLE = "H~ (normalised top-K entropy)"


class CutsLike(Protocol):
    """`core.control.entropy.Cuts`: the resolved p, H~ and uncertain cuts."""

    @property
    def p(self) -> float: ...
    @property
    def h(self) -> float: ...
    @property
    def uncertain(self) -> float: ...


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


__all__ = ["BINS", "CutsLike", "PlaneGrid", "density_figure", "plane_figures", "plane_grid",
           "pressure_figure", "pressure_grids"]
