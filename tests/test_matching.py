"""Matched-progress comparison by hand: interpolation at a target-loss reduction, the common
reach, the matched table, the seed summary and the seed-by-seed differences."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.control.matching import (
    CURVE_COLUMNS,
    at_level,
    common_reach,
    matched_table,
    paired_differences,
    relative_reduction,
    seed_summary,
    spread_text,
)


def test_relative_reduction() -> None:
    assert relative_reduction(2.0, np.array([2.0, 1.5, 1.0, 2.5])).tolist() == [0, 0.25, 0.5,
                                                                                -0.25]
    with pytest.raises(ValueError, match="positive"):
        relative_reduction(0.0, 1.0)


def test_interpolation_at_a_level_by_hand() -> None:
    # target loss 2.0, 1.5, 1.0, 0.8 at steps 0, 2, 4, 6: reductions 0, .25, .5, .6
    reduction = [0.0, 0.25, 0.5, 0.6]
    values = {"step": [0, 2, 4, 6], "general_loss": [1.0, 1.2, 1.6, 2.0]}
    # 0.4 lies between .25 and .5, at 0.6 of the way: step 3.2, general loss 1.2 + 0.6 * 0.4
    got = at_level(reduction, values, 0.4)
    assert got["step"] == pytest.approx(3.2)
    assert got["general_loss"] == pytest.approx(1.44)
    # exactly on a point, and the first point itself
    assert at_level(reduction, values, 0.5) == {"step": 4.0, "general_loss": 1.6}
    assert at_level(reduction, values, 0.0) == {"step": 0.0, "general_loss": 1.0}
    # never reached: NaN everywhere
    assert all(math.isnan(v) for v in at_level(reduction, values, 0.7).values())


def test_interpolation_takes_the_first_crossing() -> None:
    # the curve reaches .5 at step 2, falls back, and reaches it again at step 6
    reduction = [0.0, 0.5, 0.2, 0.6]
    values = {"step": [0, 2, 4, 6], "general_loss": [1.0, 3.0, 5.0, 7.0]}
    got = at_level(reduction, values, 0.4)
    assert got["step"] == pytest.approx(1.6) and got["general_loss"] == pytest.approx(2.6)
    with pytest.raises(ValueError, match="points"):
        at_level(reduction, {"step": [0, 1]}, 0.1)


def _curves() -> tuple[pd.DataFrame, dict[int, dict[str, float]]]:
    """Two seeds x two methods. Base target loss 2 in both seeds; general loss 1, acc 1."""
    rows = []
    # (seed, method): target losses at steps 0, 2, 4; general losses; accuracies; |dtheta|
    table = {
        (0, "sft"): ([2.0, 1.0, 0.5], [1.0, 1.4, 2.0], [1.0, 0.8, 0.6], [0.0, 1.0, 2.0]),
        (0, "eaft"): ([2.0, 1.5, 1.0], [1.0, 1.1, 1.2], [1.0, 1.0, 0.9], [0.0, 0.5, 1.0]),
        (1, "sft"): ([2.0, 1.2, 0.4], [1.0, 1.3, 1.9], [1.0, 0.9, 0.5], [0.0, 1.2, 2.2]),
        (1, "eaft"): ([2.0, 1.4, 0.9], [1.0, 1.2, 1.5], [1.0, 1.0, 1.0], [0.0, 0.6, 1.1]),
    }
    for (seed, method), (target, general, acc, theta) in table.items():
        for step, t, g, a, d in zip((0, 2, 4), target, general, acc, theta, strict=True):
            rows.append({"seed": seed, "method": method, "step": step,
                         "reduction": (2.0 - t) / 2.0, "target_loss": t, "general_loss": g,
                         "general_acc": a, "d_theta": d})
    base = {0: {"general_loss": 1.0, "general_acc": 1.0},
            1: {"general_loss": 1.0, "general_acc": 1.0}}
    return pd.DataFrame(rows)[list(CURVE_COLUMNS)], base


def test_common_reach_and_matched_table_by_hand() -> None:
    curves, base = _curves()
    # largest reductions: sft .75/.8, eaft .5/.55: every run reaches 0.5
    assert common_reach(curves) == pytest.approx(0.5)
    matched = matched_table(curves, base, [0.5])
    rows = matched.set_index(["seed", "method"])
    # seed 0 sft: reduction .5 exactly at step 2 (target loss 1.0)
    assert rows.loc[(0, "sft"), "step"] == 2.0
    assert rows.loc[(0, "sft"), "d_general_loss"] == pytest.approx(0.4)
    assert rows.loc[(0, "sft"), "d_general_acc"] == pytest.approx(-0.2)
    # seed 0 eaft: reduction .25 at step 2, .5 at step 4: exactly step 4
    assert rows.loc[(0, "eaft"), "d_theta"] == pytest.approx(1.0)
    # seed 1 sft: .4 at step 2, .8 at step 4: a quarter of the way; general 1.3 + .25 * .6
    assert rows.loc[(1, "sft"), "step"] == pytest.approx(2.5)
    assert rows.loc[(1, "sft"), "general_loss"] == pytest.approx(1.45)
    assert rows.loc[(1, "sft"), "target_loss"] == pytest.approx(1.0)  # base x (1 - level)
    # seed 1 eaft: .3 at 2, .55 at 4: 0.8 of the way; acc stays 1.0
    assert rows.loc[(1, "eaft"), "general_loss"] == pytest.approx(1.2 + 0.8 * 0.3)
    assert rows.loc[(1, "eaft"), "d_general_acc"] == pytest.approx(0.0)
    assert rows["reached"].all()
    # a level no EAFT run reaches: NaN and not reached
    high = matched_table(curves, base, [0.7]).set_index(["seed", "method"])
    assert not high.loc[(0, "eaft"), "reached"] and math.isnan(high.loc[(0, "eaft"), "step"])
    assert high.loc[(0, "sft"), "reached"]


def test_seed_summary_and_paired_differences_by_hand() -> None:
    curves, base = _curves()
    matched = matched_table(curves, base, [0.5])
    summary = seed_summary(matched).set_index("method")
    sft_losses = [0.4, 0.45]
    assert summary.loc["sft", "n_seeds"] == 2
    assert summary.loc["sft", "d_general_loss_mean"] == pytest.approx(np.mean(sft_losses))
    assert summary.loc["sft", "d_general_loss_sd"] == pytest.approx(np.std(sft_losses, ddof=1))
    assert summary.loc["sft", "d_general_loss_min"] == pytest.approx(0.4)
    eaft_losses = [0.2, 0.44]
    diffs = paired_differences(matched).set_index("method")
    assert diffs.loc["eaft", "reference"] == "sft" and diffs.loc["eaft", "n_seeds"] == 2
    want = [e - s for e, s in zip(eaft_losses, sft_losses, strict=True)]
    assert diffs.loc["eaft", "diff_d_general_loss_mean"] == pytest.approx(np.mean(want))
    assert diffs.loc["eaft", "diff_d_general_loss_sd"] == pytest.approx(np.std(want, ddof=1))
    assert diffs.loc["eaft", "n_less_loss"] == 2
    # without the reference method there is nothing to difference
    assert paired_differences(matched[matched["method"] == "eaft"]).empty
    # one seed: the sd is undefined (NaN), not 0
    one = seed_summary(matched[matched["seed"] == 0]).set_index("method")
    assert math.isnan(one.loc["sft", "d_general_loss_sd"])


def test_spread_text_by_hand() -> None:
    row = {"d_theta_mean": 0.5, "d_theta_sd": 0.125, "d_theta_min": 0.25, "d_theta_max": 0.75,
           "acc_mean": -0.05, "acc_sd": math.nan, "acc_min": -0.05, "acc_max": -0.05,
           "gone_mean": None, "gone_sd": None}
    assert spread_text(row, "d_theta") == "+0.500 ± 0.125 [+0.250, +0.750]"
    assert spread_text(row, "d_theta", signed=False) == "0.500 ± 0.125 [0.250, 0.750]"
    assert spread_text(row, "d_theta", scale=100, digits=1) == "+50.0 ± 12.5 [+25.0, +75.0]"
    assert spread_text(row, "acc") == "-0.050"  # one seed: no sd
    assert spread_text(row, "gone") == "n/a" and spread_text(row, "missing") == "n/a"
