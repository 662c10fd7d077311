"""The Fine-tuning page's pure figures and tables, checked against hand-counted cells and
hand-built token tables: binning of the (p, H~) plane, gradient pressure as a share of SFT's,
the conflict corner, quadrant shares, the conflict filter and its order, the token HTML, and the
exported weights (read back from JSONL and Parquet)."""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from dashboard.control import charts as cf
from dashboard.control import plane_charts as pc

CUTS = SimpleNamespace(p=0.1, h=0.2, uncertain=0.5)


def tokens_table() -> pd.DataFrame:
    """Five scanned tokens of two examples, already marked with their quadrant by CUTS."""
    return pd.DataFrame({
        "example_id": ["a", "a", "a", "b", "b"],
        "position": [10, 11, 12, 7, 8],
        "context": ["The capital is", "capital is Tokyo", "x\ny", "2 + 2 =", "= 5"],
        "target_id": [101, 102, 103, 104, 105],
        "target_text": [" Tokyo", ".", "\n", " 5", "<b>"],
        "top_text": [" Paris", ".", "\n", " 4", " ok"],
        "p": [0.01, 0.9, 0.3, 0.05, 0.6],
        "ce": [4.6, 0.1, 1.2, 3.0, 0.5],
        "entropy_norm": [0.1, 0.05, 0.7, 0.15, 0.3],
        "grad_norm": [1.0, 0.1, 0.8, 0.9, 0.4],
        "new_fact": [True, False, False, False, False],
        "quadrant": ["confident_conflict", "confident_right", "uncertain",
                     "confident_conflict", "other"],
    })


# ---------------------------------------------------------------------------- the plane


def test_plane_grid_counts_and_sums_tokens_per_cell() -> None:
    p = np.array([0.05, 0.05, 0.95, 0.5, 1.0])
    h = np.array([0.05, 0.10, 0.90, 0.5, 0.2])
    grid = pc.plane_grid(p, h, bins=2)
    assert grid.p_edges.tolist() == [0.0, 0.5, 1.0] and grid.h_edges.tolist() == [0.0, 0.5, 1.0]
    # rows are H~ bins, columns p bins; 0.5 falls in the upper bin, p = 1.0 in the last one
    assert grid.counts.tolist() == [[2, 1], [0, 2]]
    weighted = pc.plane_grid(p, h, weights=np.array([1.0, 2.0, 3.0, 4.0, 5.0]), bins=2)
    assert weighted.values.tolist() == [[3.0, 5.0], [0.0, 7.0]]
    assert grid.p_centres.tolist() == [0.25, 0.75]


def test_plane_grid_stretches_past_one_only_for_larger_entropies() -> None:
    assert pc.plane_grid(np.array([0.5]), np.array([0.3]), bins=4).h_edges[-1] == 1.0
    # the code's normalisation (/ 3.0) lets H~ pass 1 for K > 20
    assert pc.plane_grid(np.array([0.5]), np.array([1.3]), bins=4).h_edges[-1] == 1.3
    with pytest.raises(ValueError, match="bins"):
        pc.plane_grid(np.array([0.5]), np.array([0.3]), bins=0)
    with pytest.raises(ValueError, match="same shape"):
        pc.plane_grid(np.array([0.5, 0.2]), np.array([0.3]))


def test_pressure_grids_are_shares_of_sft_total() -> None:
    p = np.array([0.05, 0.05, 0.95])
    h = np.array([0.05, 0.10, 0.90])
    grad = np.array([1.0, 1.0, 2.0])
    grids = pc.pressure_grids(p, h, grad, {"sft": np.ones(3), "eaft": h}, bins=2)
    # SFT: total pressure 4; the corner cell holds 2 of it, the top-right cell 2
    assert grids["sft"].values.tolist() == [[50.0, 0.0], [0.0, 50.0]]
    # EAFT weighs by H~: (0.05 + 0.10) / 4 and 0.9 * 2 / 4 of SFT's total
    assert grids["eaft"].values[0, 0] == pytest.approx(100 * 0.15 / 4)
    assert grids["eaft"].values[1, 1] == pytest.approx(100 * 1.8 / 4)
    # lighter overall (weights <= 1): a global scale, which Adam cancels; the corner is what counts
    assert grids["eaft"].values.sum() < grids["sft"].values.sum()


def test_plane_figures_mark_the_corner_and_share_one_colour_scale() -> None:
    tokens = tokens_table()
    p, h = tokens["p"].to_numpy(), tokens["entropy_norm"].to_numpy()
    grad = tokens["grad_norm"].to_numpy()
    labels = cf.hover_labels(tokens)
    figures = pc.plane_figures(p, h, grad, {"sft": np.ones(5), "eaft": h}, CUTS, labels=labels,
                               bins=10)
    assert list(figures) == ["density", "sft", "eaft"]
    density = figures["density"]
    heat = density.data[0]
    counts = np.array(heat.customdata)
    # (p 0.01, H~ 0.1) and (p 0.05, H~ 0.15): H~ bin 1, p bin 0
    assert counts.sum() == 5 and counts[1, 0] == 2 and counts[0, 9] == 1
    z = np.array(heat.z, dtype=float)
    assert np.isnan(z[0, 5])  # empty cells stay blank
    points = density.data[1]  # the tokens inside the corner: p <= 0.1 and H~ <= 0.2
    assert list(points.x) == [0.01, 0.05] and list(points.y) == [0.1, 0.15]
    assert "Tokyo" in points.text[0] and "Paris" in points.text[0]
    corner = density.layout.shapes[0]
    assert (corner.x0, corner.y0, corner.x1, corner.y1) == (0, 0, 0.1, 0.2)
    zmax = {name: figures[name].data[0].zmax for name in ("sft", "eaft")}
    assert zmax["sft"] == zmax["eaft"]
    sft_cells = np.nan_to_num(np.array(figures["sft"].data[0].z, dtype=float))
    assert zmax["sft"] == pytest.approx(sft_cells.max()) and sft_cells.sum() == pytest.approx(100)


def test_density_without_labels_draws_no_points() -> None:
    fig = pc.density_figure(np.array([0.01, 0.9]), np.array([0.1, 0.9]), CUTS)
    assert [trace.type for trace in fig.data] == ["heatmap"]


# ---------------------------------------------------------------------------- quadrants


def quadrant_shares() -> pd.DataFrame:
    return pd.DataFrame({
        "n_tokens": [5, 30, 40, 25],
        "token_share": [0.05, 0.30, 0.40, 0.25],
        "loss_share": [0.45, 0.01, 0.34, 0.20],
        "sft_grad_share": [0.30, 0.02, 0.48, 0.20],
        "eaft_grad_share": [0.05, 0.01, 0.74, 0.20],
    }, index=pd.Index(list(cf.QUADRANTS), name="quadrant"))


def test_quadrant_table_and_share_figure() -> None:
    table = cf.quadrant_table(quadrant_shares())
    assert table["quadrant"].tolist() == ["confident conflict", "confident and right",
                                          "uncertain", "other"]
    assert table.columns.tolist() == ["quadrant", "n_tokens", "tokens", "SFT loss",
                                      "SFT gradient", "EAFT gradient"]
    assert table.loc[0, "SFT loss"] == 0.45
    fig = cf.quadrant_share_figure(quadrant_shares())
    assert [t.name for t in fig.data] == list(table["quadrant"])
    assert list(fig.data[0].y) == ["tokens", "SFT loss", "SFT gradient", "EAFT gradient"]
    assert list(fig.data[0].x) == pytest.approx([5, 45, 30, 5])
    stacked = np.sum([list(t.x) for t in fig.data], axis=0)
    assert stacked == pytest.approx([100, 100, 100, 100])


def test_quadrant_names_match_core() -> None:
    from core.control.entropy import QUADRANTS

    assert cf.QUADRANTS == QUADRANTS


# ---------------------------------------------------------------------------- tokens


def test_visible_token_shows_whitespace() -> None:
    assert cf.visible_token(" Paris") == " Paris"
    assert cf.visible_token("\n") == "↵"
    assert cf.visible_token("a\tb") == "a⇥b"
    assert cf.visible_token("  ") == "␣␣"
    assert cf.visible_token("") == "␣"


def test_conflict_rows_filter_and_put_the_surest_disagreement_first() -> None:
    tokens = tokens_table()
    rows = cf.conflict_rows(tokens)
    assert rows.columns.tolist() == list(cf.CONFLICT_COLUMNS)
    assert rows["target"].tolist() == [" Tokyo", " 5"]  # p 0.01 before p 0.05
    assert rows["model_top"].tolist() == [" Paris", " 4"]
    assert rows["quadrant"].unique().tolist() == ["confident conflict"]
    assert cf.conflict_rows(tokens, contains="paris")["example_id"].tolist() == ["a"]
    assert cf.conflict_rows(tokens, contains="2 + 2")["example_id"].tolist() == ["b"]
    assert cf.conflict_rows(tokens, contains="(")["example_id"].tolist() == []  # not a regex
    assert cf.conflict_rows(tokens, example="b")["position"].tolist() == [7]
    assert cf.conflict_rows(tokens, new_facts_only=True)["target"].tolist() == [" Tokyo"]
    assert cf.conflict_rows(tokens, max_p=0.02)["target"].tolist() == [" Tokyo"]
    every = cf.conflict_rows(tokens, quadrants=cf.QUADRANTS, limit=3)
    assert every["p"].tolist() == [0.01, 0.05, 0.3]
    assert every["target"].tolist()[2] == "↵" and every["context"].tolist()[2] == "x↵y"


def test_example_html_colours_escapes_and_underlines_conflicts() -> None:
    tokens = tokens_table().assign(weight_eaft=lambda t: t["entropy_norm"])
    page = cf.example_html(tokens, "p")
    assert "<b>" not in page and "&lt;b&gt;" in page
    assert page.count("border-bottom:2px solid") == 2 + 1  # two conflicts and the legend
    assert "rgba(214, 39, 40, 0.792)" in page  # p 0.01: almost full red (0.8 * 0.99)
    assert "rgba(214, 39, 40, 0.080)" in page  # p 0.9
    gate = cf.example_html(tokens, "gate")
    assert "rgba(76, 120, 168, 0.560)" in gate  # weight 0.7
    assert "EAFT weight 0.700" in gate
    by_quadrant = cf.example_html(tokens, "quadrant")
    assert "rgba(214, 39, 40, 0.45)" in by_quadrant  # confident conflict
    assert "model&#x27;s top &#x27; Paris&#x27;" in page
    with pytest.raises(ValueError, match="colour_by"):
        cf.example_html(tokens, "loss")
    with pytest.raises(ValueError, match="weight_eaft"):
        cf.example_html(tokens.drop(columns=["weight_eaft"]), "gate")
    assert "no response token" in cf.example_html(tokens.iloc[:0], "p")


# ---------------------------------------------------------------------------- export


def test_weights_table_round_trips_through_jsonl_and_parquet() -> None:
    tokens = tokens_table()
    gates = {"sft": np.ones(5, dtype=np.float32), "eaft": tokens["entropy_norm"].to_numpy()}
    table = cf.weights_table(tokens, gates)
    assert table.columns.tolist() == [*cf.EXPORT_COLUMNS, "weight_sft", "weight_eaft"]
    lines = cf.table_bytes(table, "jsonl").decode("utf-8").splitlines()
    assert len(lines) == 5
    first = json.loads(lines[0])
    assert first["example_id"] == "a" and first["position"] == 10
    assert first["target_token"] == " Tokyo" and first["new_fact"] is True
    assert first["weight_eaft"] == pytest.approx(0.1) and first["weight_sft"] == 1.0
    assert json.loads(lines[4])["target_token"] == "<b>"
    back = pd.read_parquet(io.BytesIO(cf.table_bytes(table, "parquet")))
    pd.testing.assert_frame_equal(back, table)
    assert cf.table_bytes(table.iloc[:0], "jsonl") == b""
    with pytest.raises(ValueError, match="format"):
        cf.table_bytes(table, "csv")
    with pytest.raises(ValueError, match="one per token"):
        cf.weights_table(tokens, {"sft": np.ones(4)})


def test_hover_label_escapes() -> None:
    label = cf.hover_label("<i>", " ok", 0.5, 0.25, "ex<1>")
    assert "<i>" not in label and "&lt;i&gt;" in label and "ex&lt;1&gt;" in label
    assert "p 0.500 · H~ 0.250" in label and not math.isnan(0.5)


# ---------------------------------------------------------------------------- comparison


def comparison_curves() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two seeds x (sft, eaft), evaluated at steps 0, 2, 4 (base target loss 2, general loss 1
    and accuracy 1 in both seeds), and the runs matched at a 50% target-loss reduction."""
    from core.control.matching import CURVE_COLUMNS, matched_table

    runs = {  # (seed, method): target losses, general losses, accuracies, |dtheta|
        (0, "sft"): ([2.0, 1.0, 0.5], [1.0, 1.4, 2.0], [1.0, 0.8, 0.6], [0.0, 1.0, 2.0]),
        (0, "eaft"): ([2.0, 1.5, 1.0], [1.0, 1.1, 1.2], [1.0, 1.0, 0.9], [0.0, 0.5, 1.0]),
        (1, "sft"): ([2.0, 1.2, 0.4], [1.0, 1.3, 1.9], [1.0, 0.9, 0.5], [0.0, 1.2, 2.2]),
        (1, "eaft"): ([2.0, 1.4, 0.9], [1.0, 1.2, 1.5], [1.0, 1.0, 1.0], [0.0, 0.6, 1.1]),
    }
    rows = [{"seed": seed, "method": method, "step": step, "reduction": (2.0 - t) / 2.0,
             "target_loss": t, "general_loss": g, "general_acc": a, "d_theta": d}
            for (seed, method), columns in runs.items()
            for step, t, g, a, d in zip((0, 2, 4), *columns, strict=True)]
    curves = pd.DataFrame(rows)[list(CURVE_COLUMNS)]
    base = {s: {"general_loss": 1.0, "general_acc": 1.0} for s in (0, 1)}
    return curves, matched_table(curves, base, [0.5])


def test_forgetting_figure_draws_each_run_and_its_matched_point() -> None:
    from dashboard.control import compare_charts as cc

    curves, matched = comparison_curves()
    columns = cc.forgetting_columns(curves).set_index(["seed", "method", "step"])
    assert columns.loc[(0, "sft", 4), "d_general_loss"] == pytest.approx(1.0)
    assert columns.loc[(0, "sft", 4), "d_general_acc"] == pytest.approx(-40.0)  # points
    assert columns.loc[(1, "eaft", 2), "reduction_pct"] == pytest.approx(30.0)
    fig = cc.forgetting_figure(curves, matched, [0.5])
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    diamonds = [t for t in fig.data if t.mode == "markers"]
    assert len(lines) == 4 * 3 and len(diamonds) == 4 * 3  # runs x panels
    # seed 1 sft, loss panel: x the reduction in percent, y the change from its step 0
    run = next(t for t in lines if t.xaxis == "x" and "sft, seed 1" in t.hovertemplate)
    assert list(run.x) == pytest.approx([0.0, 40.0, 80.0])
    assert list(run.y) == pytest.approx([0.0, 0.3, 0.9])
    # its matched point sits on that line at 50% (a quarter of the way from 40% to 80%)
    point = next(t for t in diamonds if t.xaxis == "x" and "sft, seed 1" in t.hovertemplate)
    assert list(point.x) == [50.0] and point.y[0] == pytest.approx(0.45)
    theta = next(t for t in diamonds if t.xaxis == "x3" and "eaft, seed 0" in t.hovertemplate)
    assert theta.y[0] == pytest.approx(1.0)
    # one legend entry per method, one colour per method
    assert sorted(t.name for t in fig.data if t.showlegend) == ["eaft", "sft"]
    assert {t.line.color for t in lines if t.name == "eaft"} == {cc.METHOD_COLOURS["eaft"]}
    assert len([s for s in fig.layout.shapes if s.x0 == 50.0]) == 3  # the level in each panel


def test_forgetting_figure_skips_unreached_levels_and_unmeasured_accuracy() -> None:
    from core.control.matching import matched_table
    from dashboard.control import compare_charts as cc

    curves, _ = comparison_curves()
    curves.loc[curves["step"] == 2, "general_acc"] = math.nan  # accuracy only at the ends
    base = {s: {"general_loss": 1.0, "general_acc": 1.0} for s in (0, 1)}
    high = matched_table(curves, base, [0.7])  # only the SFT runs reach 70%
    fig = cc.forgetting_figure(curves, high, [0.7])
    diamonds = [t for t in fig.data if t.mode == "markers"]
    # both SFT runs reach 70% between step 2 and 4, where the accuracy is NaN: no accuracy point
    assert {t.xaxis for t in diamonds} == {"x", "x3"} and len(diamonds) == 2 * 2


def test_summary_and_difference_tables_read_as_text() -> None:
    from core.control.matching import paired_differences, seed_summary
    from dashboard.control import compare_charts as cc

    _, matched = comparison_curves()
    summary = cc.summary_table(seed_summary(matched)).set_index("method")
    assert summary.columns.tolist() == ["level", *cc.SUMMARY_COLUMNS[1:]]
    # SFT forgot 0.4 and 0.45 at 50%: mean .425, sd .0354; accuracy 0.8 in both seeds (seed 1:
    # a quarter of the way from 0.9 to 0.5)
    assert summary.loc["sft", "d general loss"] == "+0.425 ± 0.035 [+0.400, +0.450]"
    assert summary.loc["sft", "d general acc (points)"] == "-20.0 ± 0.0 [-20.0, -20.0]"
    assert summary.loc["eaft", "|dtheta|"].startswith("1.0")
    assert summary.loc["sft", "seeds"] == 2
    paired = cc.differences_table(paired_differences(matched))
    assert paired["method"].tolist() == ["eaft - sft"]
    assert paired.loc[0, "general loss rose less"] == "2 of 2"
    assert paired.loc[0, "d general loss"].startswith("-0.1")  # (-.2 + -.01) / 2


def test_comparison_charts_load_neither_streamlit_nor_torch() -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; import dashboard.control.compare_charts; "
            "print(sorted({'streamlit', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
