"""Tests for core.diagnose.metrics: scikit-learn as the oracle for ranking metrics,
hand-computed answers for the dynamic metrics, residual time and recovery statistic, textbook
Wilson intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

from core.data.stats import wilson_interval
from core.diagnose.metrics import (
    ChainScores,
    auprc,
    auroc,
    calibrate_threshold,
    dynamic_metrics,
    f1_at,
    grouped_bootstrap,
    recovery_statistic,
    residual_time,
    roc_curve_points,
    summarize_binary,
)

# ---------------------------------------------------------------------------------------------
# Ranking metrics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auroc_and_auprc_match_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    labels = rng.integers(0, 2, size=n)
    # Rounded to one decimal: many ties, some across classes.
    scores = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1), 1)
    assert len(np.unique(scores)) < n / 5
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auprc(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )


def test_roc_curve_points_match_sklearn() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=60)
    scores = np.round(rng.random(60), 1)
    fpr, tpr, thresholds = roc_curve_points(labels, scores)
    ref_fpr, ref_tpr, ref_thr = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert np.isinf(thresholds[0])
    np.testing.assert_allclose(thresholds[1:], ref_thr[1:])


def test_ranking_hand_cases() -> None:
    labels = [0, 0, 1, 1]
    assert auroc(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auroc(labels, [0.9, 0.8, 0.2, 0.1]) == 0.0
    # All scores tied: every pair counts one half.
    assert auroc(labels, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auprc(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    # Inverted: positives found last; precision 1/3 at recall 1/2, 2/4 at recall 1
    # -> AP = 0.5 * 1/3 + 0.5 * 1/2 = 5/12.
    assert auprc(labels, [0.9, 0.8, 0.2, 0.1]) == pytest.approx(5 / 12)


def test_single_class_gives_none() -> None:
    assert auroc([1, 1, 1], [0.2, 0.5, 0.9]) is None
    assert auroc([0, 0], [0.2, 0.5]) is None
    assert auprc([0, 0, 0], [0.2, 0.5, 0.9]) is None
    assert auprc([1, 1], [0.2, 0.5]) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        roc_curve_points([0, 0], [0.1, 0.2])


def test_lists_and_arrays_agree() -> None:
    labels = [0, 1, 0, 1, 1]
    scores = [0.3, 0.6, 0.6, 0.2, 0.9]
    from_lists = auroc(labels, scores)
    from_arrays = auroc(np.array(labels), np.array(scores))
    from_bools = auroc(np.array(labels, dtype=bool), np.array(scores))
    assert from_lists == from_arrays == from_bools
    # Pairs (pos, neg): 0.6>0.3, 0.6=0.6 (1/2), 0.2<0.3, 0.2<0.6, 0.9>0.3, 0.9>0.6 -> 3.5 / 6.
    assert from_lists == pytest.approx(3.5 / 6)


def test_length_mismatch_and_bad_labels_raise() -> None:
    with pytest.raises(ValueError, match="labels has 3 entries but scores has 2"):
        auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="only 0 and 1"):
        auprc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        f1_at([0, 1], [0.1, float("nan")], 0.5)


# ---------------------------------------------------------------------------------------------
# F1 and threshold
# ---------------------------------------------------------------------------------------------


def test_f1_hand_case() -> None:
    labels = [1, 1, 0, 0, 1]
    scores = [0.9, 0.4, 0.6, 0.1, 0.7]
    # Predicted [1, 0, 1, 0, 1]: TP 2, FP 1, FN 1 -> F1 = 4 / 6.
    assert f1_at(labels, scores, 0.5) == pytest.approx(4 / 6)
    # A score equal to the threshold is not flagged (strict >).
    assert f1_at([1, 0], [0.5, 0.2], 0.5) == 0.0
    # No positive label, no positive prediction: 0/0.
    assert f1_at([0, 0], [0.1, 0.2], 0.5) is None


def test_calibrate_threshold_separable() -> None:
    labels = [0, 0, 0, 1, 1]
    scores = [0.1, 0.2, 0.25, 0.6, 0.9]
    # Only the gap between 0.25 and 0.6 separates the classes: midpoint 0.425.
    assert calibrate_threshold(labels, scores) == pytest.approx(0.425)


def test_calibrate_threshold_maximises_f1_against_sklearn() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=80)
    scores = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1), 2)
    chosen = calibrate_threshold(labels, scores)
    distinct = np.unique(scores)
    midpoints = (distinct[:-1] + distinct[1:]) / 2
    f1s = [f1_score(labels, (scores > m).astype(int)) for m in midpoints]
    assert chosen in midpoints
    assert f1_score(labels, (scores > chosen).astype(int)) == pytest.approx(max(f1s))


def test_calibrate_threshold_degenerate() -> None:
    assert calibrate_threshold([0, 1, 1], [0.3, 0.3, 0.3]) == 0.5
    assert calibrate_threshold([0, 0, 0], [0.1, 0.4, 0.9]) == 0.5


def test_summarize_binary() -> None:
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.2, 0.8, 0.9]
    out = summarize_binary(labels, scores, threshold=0.5)
    assert out == {"auroc": 1.0, "auprc": 1.0, "f1": 1.0, "threshold": 0.5, "n": 4, "n_pos": 2}
    assert summarize_binary(labels, scores)["f1"] is None


# ---------------------------------------------------------------------------------------------
# Dynamic metrics
# ---------------------------------------------------------------------------------------------

# Chain A: flags (c > 0.5) = [F, T, T, F]; t_on = 1 (0-indexed), t_rec = 3.
#   Snap 0.8 - 0.1 = 0.7; Lag 0; caught at onset; R_Score 1 - 0.3 (the recovered step 3) = 0.7;
#   Brake 0.9 - 0.3 = 0.6; Ling 0 (flag already down at t_rec); healed; no false alarm.
CHAIN_A = ChainScores(
    prefix_scores=np.array([0.1, 0.8, 0.9, 0.3]),
    prefix_labels=[0, 1, 1, 0],
    step_labels=[0, 1, 1, 0],
    is_correct=True,
)
# Chain B: flags = [T, F, F, T, T, T, F]; t_on = 2, t_rec = 4.
#   Snap 0.3 - 0.2 = 0.1; Lag 1 (first alarm at step 3); not caught at onset;
#   R_Score 1 - mean(0.8, 0.9, 0.4) (recovered steps 4-6) = 0.3; Brake 0.7 - 0.8 = -0.1;
#   Ling 2 (steps 4, 5);
#   healed (flag down at step 6 = t_rec + 2); false-alarm runs: [step 0], [steps 4, 5] -> 1, 2.
CHAIN_B = ChainScores(
    prefix_scores=[0.6, 0.2, 0.3, 0.7, 0.8, 0.9, 0.4],
    prefix_labels=[0, 0, 1, 1, 0, 0, 0],
    step_labels=[0, 0, 1, 1, 0, 0, 0],
    is_correct=False,
)
# Chain C: never hallucinated, no step labels. flags = [T, T, F] -> one false-alarm run of 2.
CHAIN_C = ChainScores(prefix_scores=[0.7, 0.7, 0.2], prefix_labels=[0, 0, 0])
# Chain D: onset at the first step, never caught. Snap left out (no step before onset);
#   Lag = T - t_on + 1 = 3 - 1 + 1 = 3 (1-indexed); no recovered step.
CHAIN_D = ChainScores(prefix_scores=[0.2, 0.3, 0.4], prefix_labels=[1, 1, 1])
# Chain E: onset at the first step, caught; t_rec = 1 but the alarm lingers to the end.
#   Lag 0; caught; recovered steps 1-4; Brake 0.9 - 0.9 = 0;
#   Ling 4; not healed (steps 1, 2, 3 all flagged); false-alarm run of 4 (steps 1-4).
CHAIN_E = ChainScores(
    prefix_scores=[0.9, 0.9, 0.8, 0.7, 0.6],
    prefix_labels=[1, 0, 0, 0, 0],
    step_labels=[1, 0, 0, 0, 0],
)


def test_dynamic_metrics_single_chain_a() -> None:
    m = dynamic_metrics([CHAIN_A])
    expected = {
        "Snap_M": 0.7,
        "Lag": 0.0,
        "ICR": 1.0,
        "Brake_S": 0.6,
        "Ling_T": 0.0,
        "Heal_3": 1.0,
        "R_Score": 0.7,
        "FP_Len": None,
    }
    got = m.as_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    assert (m.n_onsets, m.n_recoveries, m.n_recovered_steps) == (1, 1, 1)


def test_dynamic_metrics_single_chain_b() -> None:
    got = dynamic_metrics([CHAIN_B]).as_dict()
    expected = {
        "Snap_M": 0.1,
        "Lag": 1.0,
        "ICR": 0.0,
        "Brake_S": -0.1,
        "Ling_T": 2.0,
        "Heal_3": 1.0,
        "R_Score": 0.3,
        "FP_Len": 1.5,
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_dynamic_metrics_pooled_over_chains() -> None:
    m = dynamic_metrics([CHAIN_A, CHAIN_B, CHAIN_C, CHAIN_D, CHAIN_E])
    # Snap: A 0.7, B 0.1 (D, E start hallucinated) -> 0.4.
    assert m.snap_m == pytest.approx(0.4)
    # Lag: A 0, B 1, D 3, E 0 -> 1.0; ICR: A, E caught of 4 -> 0.5.
    assert m.lag == pytest.approx(1.0)
    assert m.icr == pytest.approx(0.5)
    # R_Score pools the recovered steps: A 0.3; B 0.8, 0.9, 0.4; E 0.9, 0.8, 0.7, 0.6 (D has
    # none) -> 1 - 5.4 / 8.
    assert m.r_score == pytest.approx(1 - 5.4 / 8)
    assert m.n_recovered_steps == 8
    # Recoveries A, B, E: Brake (0.6 - 0.1 + 0) / 3; Ling (0 + 2 + 4) / 3; Heal 2 / 3.
    assert m.brake_s == pytest.approx(0.5 / 3)
    assert m.ling_t == pytest.approx(2.0)
    assert m.heal_3 == pytest.approx(2 / 3)
    # False-alarm runs: B 1, 2; C 2; E 4 -> 9 / 4.
    assert m.fp_len == pytest.approx(2.25)
    assert (m.n_onsets, m.n_recoveries) == (4, 3)


def test_dynamic_metrics_threshold_moves_flags() -> None:
    # With threshold 0.85 chain A is flagged only at step 2: Lag 1, not caught at onset,
    # and the flag is already down at t_rec: Ling 0, healed.
    m = dynamic_metrics([CHAIN_A], threshold=0.85)
    assert (m.lag, m.icr, m.ling_t, m.heal_3) == (1.0, 0.0, 0.0, 1.0)


def test_ling_t_counts_consecutive_steps_and_heal_3_window_is_three() -> None:
    # t_rec = 1; flags from t_rec: [T, T, T, F, T]. Ling_T = 3 (the run stops at step 4; the
    # later alarm at step 5 is not lingering). The flag drops at t_rec + 3, outside the
    # window {t_rec, t_rec + 1, t_rec + 2}: not healed.
    chain = ChainScores([0.9, 0.8, 0.7, 0.6, 0.2, 0.9], [1, 0, 0, 0, 0, 0])
    m = dynamic_metrics([chain])
    assert m.ling_t == 3.0
    assert m.heal_3 == 0.0


def test_dynamic_metrics_none_when_no_event() -> None:
    empty = dynamic_metrics([])
    assert all(v is None for v in empty.as_dict().values())
    assert (empty.n_onsets, empty.n_recoveries) == (0, 0)
    clean = dynamic_metrics([CHAIN_C]).as_dict()
    assert clean.pop("FP_Len") == pytest.approx(2.0)
    assert all(v is None for v in clean.values())
    # Onset at the last step: no recovered step for R_Score, no recovery, no false alarm.
    late = dynamic_metrics([ChainScores([0.1, 0.9], [0, 1])])
    assert late.snap_m == pytest.approx(0.8)
    assert (late.lag, late.icr) == (0.0, 1.0)
    assert late.r_score is None
    assert late.brake_s is None and late.ling_t is None and late.heal_3 is None
    assert late.fp_len is None
    # A chain that stays wrong to the end has no recovered step either: R_Score is None.
    assert dynamic_metrics([CHAIN_D]).r_score is None
    # Onset at the first step only: Snap_M has no supporting chain.
    assert dynamic_metrics([CHAIN_D]).snap_m is None


def test_chain_scores_validation() -> None:
    with pytest.raises(ValueError, match="prefix_scores has 3 entries but prefix_labels has 2"):
        ChainScores([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="prefix_scores has 2 entries but step_labels has 3"):
        ChainScores([0.1, 0.2], [0, 1], step_labels=[0, 1, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ChainScores([0.1, 2.3], [0, 1])
    with pytest.raises(ValueError, match="only 0 and 1"):
        ChainScores([0.1, 0.3], [0, -1])
    chain = ChainScores([0.1, 0.3], np.array([0, 1]))
    assert not chain.prefix_scores.flags.writeable


# ---------------------------------------------------------------------------------------------
# Residual time
# ---------------------------------------------------------------------------------------------


def test_residual_time_hand_case() -> None:
    # Text recoveries: A at step 3 (flag down: 0); B at step 4 (flags at 4, 5: 2);
    # E at step 1 (flags to the end: 4, censored). C has no step labels and is skipped.
    # F recovers twice: at step 2 (flags at 2: 1) and at step 5 (flags at 5, 6: 2, censored).
    chain_f = ChainScores(
        prefix_scores=[0.9, 0.9, 0.6, 0.4, 0.9, 0.8, 0.7],
        prefix_labels=[1, 1, 1, 1, 1, 1, 1],
        step_labels=[1, 1, 0, 0, 1, 0, 0],
    )
    res = residual_time([CHAIN_A, CHAIN_B, CHAIN_C, CHAIN_E, chain_f])
    np.testing.assert_array_equal(res.values, [0, 2, 4, 1, 2])
    np.testing.assert_array_equal(res.censored, [False, False, True, False, True])
    summary = res.summary()
    assert summary["n"] == 5
    assert summary["n_censored"] == 2
    assert summary["mean"] == pytest.approx(9 / 5)
    assert summary["median"] == pytest.approx(2.0)
    # Sorted [0, 1, 2, 2, 4]: 90th percentile at position 3.6 -> 2 + 0.6 * (4 - 2) = 3.2.
    assert summary["p90"] == pytest.approx(3.2)
    assert summary["max"] == 4
    assert summary["counts"] == [1, 1, 2, 0, 1]


def test_residual_time_empty() -> None:
    summary = residual_time([CHAIN_C, CHAIN_D]).summary()
    assert summary["n"] == 0
    assert summary["mean"] is None and summary["median"] is None
    assert summary["p90"] is None and summary["max"] is None
    assert summary["counts"] == []


# ---------------------------------------------------------------------------------------------
# Recovery statistic
# ---------------------------------------------------------------------------------------------


def test_wilson_interval_textbook_values() -> None:
    # 3/10 at 95%: (0.1078, 0.6032) in the standard tables.
    low, high = wilson_interval(3, 10)
    assert (low, high) == pytest.approx((0.1078, 0.6032), abs=5e-5)
    # 0/10: lower 0, upper z^2 / (n + z^2) = 3.8415 / 13.8415 = 0.2775.
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12)
    assert high == pytest.approx(0.2775, abs=5e-5)
    with pytest.raises(ValueError):
        wilson_interval(1, 0)
    with pytest.raises(ValueError):
        wilson_interval(4, 3)


def test_recovery_statistic_hand_set() -> None:
    def chain(steps: list[int], correct: bool | None) -> ChainScores:
        n = len(steps)
        return ChainScores([0.5] * n, [0] * n, step_labels=steps, is_correct=correct)

    chains = [
        chain([1, 1, 1, 0], True),  # run of 3: counts, correct
        chain([1, 1, 0, 1, 1], True),  # longest run 2: out
        chain([0, 1, 1, 1, 1], False),  # run of 4: counts, wrong
        chain([1, 1, 1], None),  # correctness unknown: skipped
        ChainScores([0.5] * 3, [0] * 3, step_labels=None, is_correct=False),  # no labels: skipped
        chain([1, 1, 1, 1, 1, 1], False),  # run of 6: counts, wrong
    ]
    stat = recovery_statistic(chains, k=3)
    assert (stat.k, stat.n_chains, stat.n_correct) == (3, 3, 1)
    assert stat.share_correct == pytest.approx(1 / 3)
    # Wilson 1/3 at 95% (z = 1.96): centre (1/3 + 3.8415/6) / (1 + 3.8415/3) = 0.4269,
    # half 0.8600 * sqrt(2/27 + 0.1067) = 0.3654 -> (0.0615, 0.7923).
    assert (stat.ci_low, stat.ci_high) == pytest.approx((0.0615, 0.7923), abs=5e-4)
    # With k = 5 only the run of 6 qualifies, and it is wrong.
    stat5 = recovery_statistic(chains, k=5)
    assert (stat5.n_chains, stat5.n_correct, stat5.share_correct) == (1, 0, 0.0)
    # k = 7: no chain qualifies -> None, not 0.
    stat7 = recovery_statistic(chains, k=7)
    assert stat7.n_chains == 0
    assert stat7.share_correct is None and stat7.ci_low is None and stat7.ci_high is None


def test_grouped_bootstrap_resamples_whole_groups() -> None:
    groups = [np.array([1.0, 1.0, 1.0]), np.array([3.0])]  # step means differ by grouping
    seen: list[np.ndarray] = []

    def statistic(picked: np.ndarray) -> dict[str, float | None]:
        seen.append(picked)
        values = np.concatenate([groups[i] for i in picked])
        return {"mean": float(values.mean()), "never": None}

    found = grouped_bootstrap(statistic, n_groups=2, n_resamples=400, seed=1)
    assert all(len(p) == 2 and set(p) <= {0, 1} for p in seen) and len(seen) == 400
    # possible resample means: 1 (two of group 0), 1.5 (one each), 3 (two of group 1)
    assert found["mean"] == (1.0, 3.0)
    assert found["never"] is None
    constant = grouped_bootstrap(lambda p: {"c": 0.25}, n_groups=5, n_resamples=10)
    assert constant["c"] == (0.25, 0.25)
    with pytest.raises(ValueError, match="confidence"):
        grouped_bootstrap(lambda p: {}, 3, confidence=1.0)


def _naive_dynamics(chains: list[tuple[list[float], list[int]]], thr: float) -> dict:
    """The paper's dynamic metrics written as plain loops over 0-indexed steps (the oracle)."""
    snaps, lags, icr, brakes, heals, recovered, fp_runs = [], [], [], [], [], [], []
    for c, y in chains:
        n = len(y)
        if 1 in y:
            on = y.index(1)
            if on > 0:
                snaps.append(c[on] - c[on - 1])
            later = [t for t in range(on, n) if c[t] > thr]
            lags.append(later[0] - on if later else n - on)
            icr.append(1.0 if c[on] > thr else 0.0)
        for t in range(1, n):
            if y[t - 1] == 1 and y[t] == 0:
                brakes.append(c[t - 1] - c[t])
                heals.append(1.0 if any(c[k] <= thr for k in range(t, min(n, t + 3))) else 0.0)
        gone_wrong = False
        for t in range(n):
            gone_wrong = gone_wrong or y[t] == 1
            if gone_wrong and y[t] == 0:
                recovered.append(c[t])
        run = 0
        for t in range(n):
            if y[t] == 0 and c[t] > thr:
                run += 1
            elif run:
                fp_runs.append(run)
                run = 0
        if run:
            fp_runs.append(run)

    def mean(values: list) -> float | None:
        return sum(values) / len(values) if values else None

    return {"Snap_M": mean(snaps), "Lag": mean(lags), "ICR": mean(icr), "Brake_S": mean(brakes),
            "Heal_3": mean(heals),
            "R_Score": None if not recovered else 1 - sum(recovered) / len(recovered),
            "FP_Len": mean(fp_runs)}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.5, 0.73])
def test_dynamic_metrics_equal_plain_loops_on_random_chains(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    chains = []
    for _ in range(30):
        n = int(rng.integers(1, 9))
        labels = [int(x) for x in rng.random(n) < 0.4]
        chains.append(([float(x) for x in rng.random(n)], labels))
    got = dynamic_metrics([ChainScores(c, y) for c, y in chains], threshold).as_dict()
    for key, value in _naive_dynamics(chains, threshold).items():
        assert got[key] == (None if value is None else pytest.approx(value)), key
