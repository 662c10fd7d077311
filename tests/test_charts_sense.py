"""The Introspection page's pure functions (`dashboard.charts_sense`): marks on replies at the
grader's offsets, and figures whose numbers are checked against hand-made tables."""

from __future__ import annotations

import pandas as pd
import pytest

from core.sense.introspection import CONDITIONS, sweep_summary
from core.sense.introspection_grading import grade_reply
from core.sense.prefill import PREFILL_CONDITIONS
from dashboard.common.charts import figure_html
from dashboard.sense import charts as cs
from dashboard.sense import replies as rp
from dashboard.sense.replies import Span


def test_condition_names_match_core() -> None:
    assert set(cs.CONDITION_TITLES) == set(CONDITIONS) == set(cs.CONDITION_COLOURS)
    assert set(cs.CONDITION_SHORT) == set(CONDITIONS)
    assert tuple(cs.PREFILL_TITLES) == PREFILL_CONDITIONS == tuple(cs.PREFILL_COLOURS)


# ---------------------------------------------------------------------------- marks


def marked(reply: str, concept: str, claim_at: object = "grader",
           concept_at: object = "grader") -> list[tuple[str, str]]:
    """(kind, text) of each span, at the given offsets or the ones the core grader gives."""
    grade = grade_reply(reply, concept)
    spans = rp.mark_spans(reply, grade.claim_at if claim_at == "grader" else claim_at,
                          grade.concept_at if concept_at == "grader" else concept_at, concept)
    return [(s.kind, reply[s.start : s.end]) for s in spans]


def test_claim_runs_to_the_concept_and_the_concept_is_one_word() -> None:
    reply = "I detect an injected thought about bread."
    assert marked(reply, "bread", 0, reply.index("bread")) == [
        ("claim", "I detect an injected thought about"), ("concept", "bread")]
    graded = marked(reply, "bread")  # where the grader puts the claim is the grader's business
    assert [kind for kind, _ in graded] == ["claim", "concept"]
    assert graded[0][1].endswith("thought about") and graded[1][1] == "bread"


def test_claim_stops_at_punctuation_and_inflected_multiword_concept() -> None:
    assert marked("Yes! Something about ice creams.", "ice cream") == [
        ("claim", "Yes"), ("concept", "ice creams")]


def test_concept_named_first_is_marked_before_the_claim() -> None:
    reply = "Bread. I notice a thought, yes."
    assert marked(reply, "bread", 7, 0) == [("concept", "Bread"), ("claim", "I notice a thought")]
    graded = marked(reply, "bread")
    assert [kind for kind, _ in graded] == ["concept", "claim"] and graded[0][1] == "Bread"
    page = rp.reply_html(reply, 7, 0, "bread")
    assert rp.LATE_CLAIM_CONCEPT_COLOUR in page and rp.CONCEPT_COLOUR not in page
    after = rp.reply_html("I detect an injected thought about bread.", 0, 35, "bread")
    assert rp.CONCEPT_COLOUR in after and rp.LATE_CLAIM_CONCEPT_COLOUR not in after


def test_no_claim_no_concept_and_missing_offsets_mark_nothing() -> None:
    assert marked("No, I do not detect anything.", "bread") == []
    assert rp.mark_spans("text", float("nan"), None, "bread") == []
    assert rp.mark_spans("bread", None, 0, None) == []  # no concept: nothing to name


def test_long_claims_are_capped_and_overlaps_clipped() -> None:
    reply = "I notice " + "very " * 30 + "much"
    (span,) = rp.mark_spans(reply, 0, None, None)
    # "I notice " and ten "very " fill 59 characters: the cap falls inside the 11th "very"
    assert span == Span(0, 58, "claim") and reply[:58].endswith("very very")
    # a claim that starts inside the concept's mention starts where the mention ends
    assert rp.mark_spans("breadsticks now", 2, 0, "breadsticks now") == [
        Span(0, 15, "concept")]
    assert rp.mark_spans("bread yes, ok", 6, 0, "bread") == [
        Span(0, 5, "concept"), Span(6, 9, "claim")]


def test_reply_html_escapes_and_keeps_text() -> None:
    reply = "<b>Yes</b> & bread"
    page = rp.reply_html(reply, None, 13, "bread")
    assert "<b>" not in page and "&lt;b&gt;Yes&lt;/b&gt; &amp; " in page
    assert page.endswith(">bread</mark>")
    assert "(empty reply)" in rp.reply_html("", None, None, "bread")


def test_trial_card_shows_each_grade() -> None:
    row = {"reply": "I detect bread.", "concept": "bread", "claim_at": 0, "concept_at": 9,
           "coherent": True, "affirmative": True, "names_concept": True, "immediate": True,
           "identified": False}
    page = rp.trial_card_html(row)
    for label in ("coherent", "affirmative", "names the concept", "claim first"):
        assert f"✓ {label}" in page
    assert "✗ identified" in page
    assert '<mark class="claim"' in page and '<mark class="concept"' in page


# ---------------------------------------------------------------------------- small helpers


def test_fraction_text_and_push_sentence() -> None:
    assert rp.fraction_text(0.25) == "0.25"
    assert rp.fraction_text(0.25, 1, 4) == "0.25 (1/4)"
    assert rp.fraction_text(None) == rp.fraction_text(float("nan")) == "n/a"
    raw = rp.push_sentence(13.0, 239.0, 4.0, "raw")  # 4 x 13 = 52 = 0.22 x 239
    assert "effective magnitude of 52.0 (strength × ‖v‖), 0.22× the mean residual norm" in raw
    assert "‖v‖ = 13.00" in raw
    relative = rp.push_sentence(13.0, 239.0, 4.0, "relative")  # 4 x 239 = 956
    assert "magnitude of 956.0 (strength × the mean residual norm), 4.00× the mean" in relative


# ---------------------------------------------------------------------------- figures


def test_condition_rates_figure_bars_and_intervals() -> None:
    rates = pd.DataFrame([
        {"condition": "injected", "n": 4, "detection": 0.5, "detection_lo": 0.2,
         "detection_hi": 0.8, "identification": 0.25, "identification_lo": 0.05,
         "identification_hi": 0.7, "coherence": 1.0, "coherence_lo": 0.5, "coherence_hi": 1.0},
        {"condition": "none", "n": 4, "detection": 0.0, "detection_lo": 0.0,
         "detection_hi": 0.49, "identification": 0.0, "identification_lo": 0.0,
         "identification_hi": 0.49, "coherence": 0.75, "coherence_lo": 0.3,
         "coherence_hi": 0.95}])
    fig = cs.condition_rates_figure(rates)
    assert [t.name for t in fig.data] == ["detection", "identification", "coherence"]
    detection = fig.data[0]
    assert list(detection.x) == ["concept", "no injection"]
    assert list(detection.y) == [0.5, 0.0]
    assert list(detection.error_y.array) == pytest.approx([0.3, 0.49])
    assert list(detection.error_y.arrayminus) == pytest.approx([0.3, 0.0])


def lens_table() -> pd.DataFrame:
    rows = []
    for condition, ranks in (("none", [900, 40, 7]), ("injected", [900, 12, 2])):
        for layer, rank in enumerate(ranks):
            rows.append({"layer": layer, "condition": condition, "token": " bread",
                         "token_id": 6956, "prob": 1 / rank, "rank": rank})
    return pd.DataFrame(rows[::-1])  # out of order on purpose


def test_logit_lens_figure_curves_axes_and_layer_marker() -> None:
    fig = cs.logit_lens_figure(lens_table(), layer=1, strength=4)
    names = [t.name for t in fig.data]
    assert names == ["with injection (strength 4)"] * 2 + ["without injection"] * 2
    rank_injected, prob_injected, rank_none, _ = fig.data
    assert list(rank_injected.x) == [0, 1, 2] and list(rank_injected.y) == [900, 12, 2]
    assert list(rank_none.y) == [900, 40, 7]
    assert list(prob_injected.y) == pytest.approx([1 / 900, 1 / 12, 1 / 2])
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.yaxis2.type == "log"
    assert [s.x0 for s in fig.layout.shapes] == [1, 1]
    assert "' bread'" in fig.layout.title.text


def summary_rows() -> pd.DataFrame:
    """Two concepts at layers 5, 10 and strengths 1, 2: identification = layer/100 + strength/10
    for bread and half of that for ocean."""
    rows = []
    for concept, factor in (("bread", 1.0), ("ocean", 0.5)):
        for layer in (10, 5):
            for strength in (2.0, 1.0):
                ident = factor * (layer / 100 + strength / 10)
                rows.append({"layer": layer, "strength": strength, "concept": concept,
                             "identification": ident, "net": ident - 0.25, "coherence": 0.9,
                             "detection": 0.5,
                             "random_detection": 0.1 * strength, "negated_detection": None,
                             "false_positive": 0.25, "false_positive_lo": 0.05,
                             "false_positive_hi": 0.7, "n_none": 4})
    return pd.DataFrame(rows)


def test_heatmap_grid_pivots_one_concept_or_the_mean() -> None:
    grid = cs.heatmap_grid(summary_rows(), "identification", "bread")
    assert list(grid.index) == [1.0, 2.0] and list(grid.columns) == [5, 10]
    assert grid.loc[1.0, 5] == pytest.approx(0.15) and grid.loc[2.0, 10] == pytest.approx(0.3)
    mean = cs.heatmap_grid(summary_rows(), "identification")
    assert mean.loc[2.0, 10] == pytest.approx((0.3 + 0.15) / 2)
    assert cs.heatmap_grid(summary_rows(), "identification", "nothing").empty


def test_sweep_heatmaps_show_the_grids() -> None:
    fig = cs.sweep_heatmaps(summary_rows(), "bread")
    net, ident, coherence = fig.data
    assert list(ident.x) == ["5", "10"] and list(ident.y) == ["1", "2"]
    assert ident.z[0] == pytest.approx([0.15, 0.2]) and ident.z[1] == pytest.approx([0.25, 0.3])
    assert net.z[0] == pytest.approx([-0.1, -0.05]) and (net.zmin, net.zmax) == (-1.0, 1.0)
    assert coherence.z[1] == pytest.approx([0.9, 0.9])
    assert "concept 'bread'" in fig.layout.title.subtitle.text
    assert "mean over 2 concepts" in cs.sweep_heatmaps(summary_rows()).layout.title.subtitle.text


def test_control_heatmaps_mark_a_control_not_run_and_give_false_positives() -> None:
    fig = cs.control_heatmaps(summary_rows(), "bread")
    detection, random = fig.data  # the negated control has no values
    assert detection.z[0] == pytest.approx([0.5, 0.5]) and detection.z[1] == pytest.approx(
        [0.5, 0.5])
    assert random.z[0] == pytest.approx([0.1, 0.1]) and random.z[1] == pytest.approx([0.2, 0.2])
    assert "not run" in [a.text for a in fig.layout.annotations]
    assert fig.layout.title.subtitle.text == (
        "no injection: false positives 0.25 [0.05, 0.70] (n 4)")


def test_heatmaps_from_a_core_summary_of_hand_made_trials() -> None:
    """A trial table written by hand through `core.sense.introspection.sweep_summary`: the net cell
    is identified/n minus the shared false-positive rate."""
    base = {"concept": "bread", "scale": "raw", "positions": "window", "reply": "",
            "coherent": True, "affirmative": True, "names_concept": True, "immediate": True,
            "claim_at": 0, "concept_at": 5}
    rows = [{**base, "concept": None, "layer": None, "strength": None, "condition": "none",
             "trial": t, "detected": t == 0, "identified": False} for t in range(4)]
    for layer, hits in ((3, 2), (6, 4)):
        for t in range(4):
            rows.append({**base, "layer": layer, "strength": 2.0, "condition": "injected",
                         "trial": t, "detected": True, "identified": t < hits})
            rows.append({**base, "layer": layer, "strength": 2.0, "condition": "random",
                         "trial": t, "detected": False, "identified": False})
    summary = sweep_summary(pd.DataFrame(rows))
    net, ident, _ = cs.sweep_heatmaps(summary).data
    assert ident.z[0] == pytest.approx([0.5, 1.0])
    assert net.z[0] == pytest.approx([0.5 - 0.25, 1.0 - 0.25])
    assert rp.false_positive_text(summary).startswith("no injection: false positives 0.25 [")
    detection, random = cs.control_heatmaps(summary).data  # the negated control was not run
    assert detection.z[0] == pytest.approx([1.0, 1.0]) and random.z[0] == pytest.approx([0, 0])


def test_prefill_figure_bars_per_condition_and_layer() -> None:
    rows = []
    for layer in (15, 10):
        for condition, p in (("none", 0.5), ("matching", 0.25 if layer == 15 else 0.5),
                             ("random", 0.75)):
            rows.append({"layer": layer, "condition": condition, "n": 4, "apology": p,
                         "apology_lo": p - 0.2, "apology_hi": p + 0.1})
    fig = cs.prefill_figure(pd.DataFrame(rows), strength=16)
    assert [t.name for t in fig.data] == list(cs.PREFILL_TITLES.values())
    none, matching, random = fig.data
    assert list(matching.x) == ["10", "15"] and list(matching.y) == [0.5, 0.25]
    assert list(random.error_y.array) == pytest.approx([0.1, 0.1])
    assert list(none.error_y.arrayminus) == pytest.approx([0.2, 0.2])
    assert "strength 16" in fig.layout.title.text


def test_figure_html_is_a_standalone_page() -> None:
    page = figure_html(cs.logit_lens_figure(lens_table(), layer=1))
    assert page.lower().lstrip().startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "Plotly.newPlot" in page and "' bread'" in page
