"""The Introspection page's pure pieces for the controls and the strength units
(`dashboard.sense.control_charts`, `dashboard.sense.replies`): arm names as core spells them,
every arm's rate beside its chance arm's from a control table computed by core on hand-made
trials, the confound heatmaps, the no-injection arm's n and interval in words, yes/no reply
cards, and strengths as effective magnitude and ratio to the residual norm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from core.sense.arms import ALL_CONTROLS, ARMS
from core.sense.introspection_rates import control_table, setting_summary, sweep_summary
from dashboard.sense import control_charts as cc
from dashboard.sense import replies as rp

BASE = {"scale": "relative", "positions": "window", "reply": "", "coherent": True,
        "names_concept": False, "immediate": False, "claim_at": None, "concept_at": None,
        "injected": None, "effective_magnitude": 0.0, "relative_magnitude": 0.0}


def arm_rows(condition: str, n: int, hits: int, setting: bool = True,
             **extra: Any) -> list[dict[str, Any]]:
    """n trials of an arm, the first `hits` of them positive for its measure."""
    place = ({"concept": "bread", "layer": 15, "strength": 0.5} if setting else
             {"concept": None, "layer": None, "strength": None})
    measure = ("answer_yes" if ARMS[condition].measure == "yes" else "detected")
    return [{**BASE, **place, **extra, "condition": condition, "trial": t,
             "affirmative": t < hits, "detected": t < hits if measure == "detected" else None,
             "identified": False, "answer_yes": t < hits if measure == "answer_yes" else None}
            for t in range(n)]


def trial_table() -> pd.DataFrame:
    """One setting with every arm: 2/10 detections injected, 3/100 with no injection, 1/10
    generation-only, 4/10 'yes' injected against 5/100 without, 6/10 named against 2/10
    mismatched."""
    moved = {"effective_magnitude": 120.0, "relative_magnitude": 0.5}
    rows = (arm_rows("none", 100, 3, setting=False) + arm_rows("yes_no_none", 100, 5, False)
            + arm_rows("injected", 10, 2, **moved) + arm_rows("random", 10, 0, **moved)
            + arm_rows("negated", 10, 1, **moved) + arm_rows("generation_only", 10, 1, **moved)
            + arm_rows("yes_no", 10, 4, **moved) + arm_rows("named", 10, 6, **moved)
            + arm_rows("mismatch", 10, 2, **moved))
    return pd.DataFrame(rows)


def test_arm_and_control_names_match_core() -> None:
    assert set(cc.ARM_TITLES) == set(ARMS) == set(cc.ARM_SHORT)
    assert tuple(cc.CONTROL_TITLES) == ALL_CONTROLS


def test_controls_figure_pairs_every_arm_with_its_chance() -> None:
    controls = control_table(trial_table())
    fig = cc.controls_figure(controls)
    arm, chance = fig.data
    assert [x.split("<br>")[0] for x in arm.x] == [
        cc.ARM_SHORT[a] for a in ("injected", "random", "negated", "generation_only", "yes_no",
                                  "named")]
    assert arm.x[-1].endswith("vs another injected") and arm.x[0].endswith("vs no injection")
    assert list(arm.y) == pytest.approx([0.2, 0.0, 0.1, 0.1, 0.4, 0.6])
    # the chance arms: no injection (3/100) four times, the plain questions (5/100), mismatch
    assert list(chance.y) == pytest.approx([0.03, 0.03, 0.03, 0.03, 0.05, 0.2])
    assert "<br>says yes<br>" in arm.x[4] and "<br>detection<br>" in arm.x[0]
    assert [c[1] for c in chance.customdata] == [100, 100, 100, 100, 100, 10]
    assert all(a >= 0 for a in arm.error_y.array) and all(a >= 0 for a in chance.error_y.array)
    subtitle = fig.layout.title.subtitle.text
    assert "no injection: detection 0.03 [0.01, 0.08] (n 100)" in subtitle
    assert "unrelated yes/no question, no injection: says yes 0.05 [" in subtitle


def test_confound_heatmaps_and_the_yes_no_chance_in_words() -> None:
    summary = sweep_summary(trial_table())
    fig = cc.confound_heatmaps(summary)
    generation, named, mismatch, yes = fig.data
    assert list(generation.z[0]) == pytest.approx([0.1])
    assert list(named.z[0]) == pytest.approx([0.6]) and list(mismatch.z[0]) == pytest.approx(
        [0.2])
    assert list(yes.z[0]) == pytest.approx([0.4])
    assert "says yes 0.05 [0.02, 0.11] (n 100)" in fig.layout.title.subtitle.text
    empty = cc.confound_heatmaps(sweep_summary(pd.DataFrame(
        arm_rows("none", 100, 0, setting=False) + arm_rows("injected", 4, 1))))
    assert [a.text for a in empty.layout.annotations].count("not run") == 4
    assert "unrelated questions without injection: not run" in empty.layout.title.subtitle.text


def test_rate_text_and_the_no_injection_arm_in_words() -> None:
    assert cc.rate_text(0.25, 0.05, 0.7, 4) == "0.25 [0.05, 0.70] (n 4)"
    assert cc.rate_text(None, None, None, 0) == "not run"
    summary = setting_summary(trial_table())
    assert rp.false_positive_text(summary) == "no injection: false positives 0.03 [0.01, 0.08] " \
                                              "(n 100)"
    assert rp.false_positive_text({"false_positive": None, "n_none": 0}) == \
        "no injection: not run"


def test_yes_no_cards_show_the_question_and_whether_it_says_yes() -> None:
    row = {"condition": "yes_no", "question": "Is the Earth flat? Answer yes or no.",
           "reply": "Yes <b>", "coherent": False, "answer_yes": True, "affirmative": None}
    card = rp.trial_card_html(row)
    assert "✓ says yes" in card and "✗ coherent" in card and "names the concept" not in card
    assert "Is the Earth flat?" in card and "Yes &lt;b&gt;" in card


def test_a_card_says_whether_its_reply_counts_as_a_detection() -> None:
    """A "yes" the rates do not count (here: marked incoherent) says so on its card."""
    row = {"condition": "none", "reply": "Yes.", "concept": None, "coherent": False,
           "affirmative": True, "detected": False, "claim_at": 0, "concept_at": None}
    card = rp.trial_card_html(row)
    assert "✓ affirmative" in card and "✗ counted as detection" in card
    counted = rp.trial_card_html({**row, "coherent": True, "detected": True})
    assert "✓ counted as detection" in counted


def test_strength_as_effective_magnitude_and_ratio_to_the_residual_norm() -> None:
    assert rp.magnitude(4.0, "raw", 13.0, 239.0) == pytest.approx((52.0, 52.0 / 239.0))
    assert rp.magnitude(0.5, "relative", None, 240.0) == pytest.approx((120.0, 0.5))
    assert rp.magnitude(0.5, "relative", None, None) == (None, 0.5)
    assert rp.magnitude(4.0, "raw", None, 239.0) == (None, None)
    raw = rp.strength_help(4.0, "raw", 20, 13.0, 239.0)
    assert "At layer 20, ‖v‖ = 13.00, mean residual norm = 239.0" in raw
    assert "strength 4: effective magnitude 52.0, 0.22× the mean residual norm" in raw
    unknown = rp.strength_help(4.0, "raw", 20, None, 239.0)
    assert "‖v‖ is measured when the concept is built" in unknown and "×" not in unknown.split(
        "At layer")[1]
    relative = rp.strength_help(0.5, "relative", 20, None, 240.0)
    assert "strength is the ratio to the residual norm" in relative
    assert "effective magnitude 120.0, 0.50× the mean residual norm" in relative


def test_the_control_charts_load_neither_streamlit_nor_torch() -> None:
    code = ("import sys, dashboard.sense.control_charts; "
            "print(sorted({'streamlit', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
