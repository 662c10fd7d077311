"""Scores for hallucination probes: ranking quality, alarm dynamics along a chain, and the
two Telltale extensions (residual time, recovery statistic).

Everything here is pure numpy on plain arrays so the same numbers can be recomputed from a saved
trace without a model. Conventions shared by every function:

- labels are 0/1 (ints or bools, lists or arrays); scores are finite floats;
- an alarm ("flag") at step t means ``c^prefix_t > threshold`` (strictly greater, as in the paper);
- steps are 0-indexed in code; docstrings give the paper's 1-indexed formula where it matters;
- a metric with nothing to average over is ``None``, never 0, so "no event" cannot be mistaken
  for "perfect" or "worst".

Definitions follow METHODS.md section 1 (dynamic metrics, residual time, recovery statistic).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from core.data.stats import wilson_interval

# ---------------------------------------------------------------------------------------------
# Input checking
# ---------------------------------------------------------------------------------------------


def _as_labels(values: ArrayLike, name: str) -> np.ndarray:
    """Return a 1-D int array of 0/1 labels, or raise ValueError saying what is wrong."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}.")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold 0/1 labels, got dtype {arr.dtype}.")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        raise ValueError(
            f"{name} must hold only 0 and 1; found {arr[bad][0]!r} at index {int(np.argmax(bad))}."
        )
    return arr.astype(np.int64)


def _as_scores(values: ArrayLike, name: str) -> np.ndarray:
    """Return a 1-D float array of finite scores, or raise ValueError."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite; found NaN or infinity.")
    return arr


def _check_same_length(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{a_name} has {a.shape[0]} entries but {b_name} has {b.shape[0]}; "
            "they must match one to one."
        )


def _labels_and_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(labels, "labels")
    s = _as_scores(scores, "scores")
    _check_same_length(y, "labels", s, "scores")
    return y, s


def _mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) > 0 else None


# ---------------------------------------------------------------------------------------------
# Binary metrics (per step or per chain)
# ---------------------------------------------------------------------------------------------


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # Start index of each run of equal values in sorted order.
    is_start = np.r_[True, sorted_vals[1:] != sorted_vals[:-1]]
    starts = np.flatnonzero(is_start)
    ends = np.r_[starts[1:], sorted_vals.size]  # exclusive
    mean_rank_per_run = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    run_id = np.cumsum(is_start) - 1
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = mean_rank_per_run[run_id]
    return ranks


def auroc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Area under the ROC curve; None when only one class is present.

    Naive formula: the share of (positive, negative) pairs where the positive scores higher,
    ties counting one half. Computed in O(n log n) via the Mann-Whitney U statistic with
    average ranks: AUROC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg).
    """
    y, s = _labels_and_scores(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(s)
    u_stat = float(ranks[y == 1].sum()) - n_pos * (n_pos + 1) / 2.0
    return u_stat / (n_pos * n_neg)


def _cumulative_counts_by_threshold(
    y: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives when flagging every score >= each distinct score.

    Returns (tp, fp, distinct_scores), distinct scores in descending order; entry j counts the
    examples whose score is at least distinct_scores[j].
    """
    order = np.argsort(-s, kind="mergesort")
    s_desc = s[order]
    y_desc = y[order]
    last_of_run = np.r_[s_desc[1:] != s_desc[:-1], True]
    idx = np.flatnonzero(last_of_run)
    tp = np.cumsum(y_desc)[idx].astype(np.float64)
    fp = (idx + 1) - tp
    return tp, fp, s_desc[idx]


def auprc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Average precision (area under the precision-recall curve, step-wise); None if no positives.

    Naive formula: AP = sum_n (R_n - R_{n-1}) * P_n over the distinct score thresholds in
    descending order, with R_0 = 0 (the same definition as scikit-learn's
    average_precision_score; no interpolation, so it does not overestimate the area).
    """
    y, s = _labels_and_scores(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    tp, fp, _ = _cumulative_counts_by_threshold(y, s)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    recall_gain = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_gain * precision))


def f1_at(labels: ArrayLike, scores: ArrayLike, threshold: float) -> float | None:
    """F1 of the prediction ``score > threshold``; None when there is no positive label and no
    positive prediction (F1 = 0/0).

    Naive formula: F1 = 2 TP / (2 TP + FP + FN).
    """
    y, s = _labels_and_scores(labels, scores)
    pred = s > threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    denom = 2 * tp + fp + fn
    if denom == 0:
        return None
    return 2.0 * tp / denom


def calibrate_threshold(labels: ArrayLike, scores: ArrayLike) -> float:
    """Threshold that maximises F1 of ``score > threshold`` on (validation) data.

    Candidates are the midpoints between consecutive sorted distinct scores, so every candidate
    separates the data and none sits on a score. Ties in F1 go to the lowest threshold (more
    recall: a missed hallucination costs more than an extra alarm). Returns 0.5 when the data
    cannot pick one: fewer than two distinct scores, or no positive label.
    """
    y, s = _labels_and_scores(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return 0.5
    tp, fp, distinct_desc = _cumulative_counts_by_threshold(y, s)
    if distinct_desc.size < 2:
        return 0.5
    # Candidate j lies between distinct_desc[j] and distinct_desc[j + 1]: it flags exactly the
    # scores >= distinct_desc[j], i.e. the counts tp[j], fp[j]. The last run (flag everything)
    # has no midpoint below it and is not a candidate.
    tp_c, fp_c = tp[:-1], fp[:-1]
    f1 = 2.0 * tp_c / (tp_c + fp_c + n_pos)  # 2TP + FP + FN = TP + FP + n_pos
    midpoints = (distinct_desc[:-1] + distinct_desc[1:]) / 2.0
    best = np.flatnonzero(f1 == f1.max())
    return float(midpoints[best].min())


def roc_curve_points(
    labels: ArrayLike, scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for plotting an ROC curve, one point per distinct score.

    Point j flags every score >= thresholds[j] (the plotting convention of scikit-learn's
    roc_curve with drop_intermediate=False); the first point, threshold +inf, is (0, 0).
    Raises ValueError when only one class is present (one of the rates would be 0/0).
    """
    y, s = _labels_and_scores(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"An ROC curve needs both classes; got {n_pos} positive and {n_neg} negative labels."
        )
    tp, fp, distinct_desc = _cumulative_counts_by_threshold(y, s)
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    thresholds = np.r_[np.inf, distinct_desc]
    return fpr, tpr, thresholds


def summarize_binary(
    labels: ArrayLike, scores: ArrayLike, threshold: float | None = None
) -> dict[str, float | None]:
    """AUROC, AUPRC, F1 at `threshold` (None when no threshold is given), and the counts they
    rest on: keys auroc, auprc, f1, threshold, n, n_pos."""
    y, s = _labels_and_scores(labels, scores)
    return {
        "auroc": auroc(y, s),
        "auprc": auprc(y, s),
        "f1": f1_at(y, s, threshold) if threshold is not None else None,
        "threshold": threshold,
        "n": int(y.size),
        "n_pos": int(y.sum()),
    }


# ---------------------------------------------------------------------------------------------
# Chains
# ---------------------------------------------------------------------------------------------


def _frozen_copy(arr: np.ndarray) -> np.ndarray:
    out = arr.copy()
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class ChainScores:
    """One chain of thought, steps in order: the tracker's prefix scores and the labels.

    prefix_scores: c^prefix_t in [0, 1].
    prefix_labels: A^prefix_t in {0, 1} (chain up to t is in a hallucinated state).
    step_labels: A^step_t in {0, 1} (step t itself is wrong), or None when unknown.
    is_correct: whether the final answer is correct, or None when unknown.

    Lists are accepted; they are stored as read-only numpy copies. eq=False because numpy arrays
    have no single truth value for ==.
    """

    prefix_scores: np.ndarray
    prefix_labels: np.ndarray
    step_labels: np.ndarray | None = None
    is_correct: bool | None = None

    def __post_init__(self) -> None:
        scores = _as_scores(self.prefix_scores, "prefix_scores")
        if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
            raise ValueError(
                "prefix_scores must lie in [0, 1] (probabilities, not logits); "
                f"got range [{scores.min():.4g}, {scores.max():.4g}]."
            )
        prefix_labels = _as_labels(self.prefix_labels, "prefix_labels")
        _check_same_length(scores, "prefix_scores", prefix_labels, "prefix_labels")
        object.__setattr__(self, "prefix_scores", _frozen_copy(scores))
        object.__setattr__(self, "prefix_labels", _frozen_copy(prefix_labels))
        if self.step_labels is not None:
            step_labels = _as_labels(self.step_labels, "step_labels")
            _check_same_length(scores, "prefix_scores", step_labels, "step_labels")
            object.__setattr__(self, "step_labels", _frozen_copy(step_labels))
        if self.is_correct is not None and not isinstance(self.is_correct, (bool, np.bool_)):
            raise ValueError(f"is_correct must be True, False or None, got {self.is_correct!r}.")
        if self.is_correct is not None:
            object.__setattr__(self, "is_correct", bool(self.is_correct))

    @property
    def n_steps(self) -> int:
        return int(self.prefix_scores.shape[0])


def _onset(labels: np.ndarray) -> int | None:
    """Index of the first 1 (t_on), or None when the chain never enters the state."""
    hits = np.flatnonzero(labels == 1)
    return int(hits[0]) if hits.size else None


def _falls(labels: np.ndarray) -> np.ndarray:
    """Indices t with labels[t-1] == 1 and labels[t] == 0 (t_rec for prefix labels)."""
    return np.flatnonzero((labels[:-1] == 1) & (labels[1:] == 0)) + 1


def _run_length_from(flags: np.ndarray, start: int) -> int:
    """Number of consecutive True values in `flags` beginning at index `start`."""
    rest = flags[start:]
    off = np.flatnonzero(~rest)
    return int(off[0]) if off.size else int(rest.size)


def _true_run_lengths(flags: np.ndarray) -> list[int]:
    """Lengths of the maximal runs of True in `flags`."""
    padded = np.r_[False, flags, False].astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [int(n) for n in ends - starts]


@dataclass(frozen=True)
class DynamicMetrics:
    """The paper's eight dynamic metrics over a set of chains (None: no event to average over).

    n_onsets: chains whose prefix label ever becomes 1 (Lag, ICR, Snap_M rest on these).
    n_recoveries: prefix-label falls 1 -> 0 (Brake_S, Ling_T, Heal_3 rest on these).
    n_recovered_steps: steps with prefix label 0 after an onset (R_Score rests on these).
    """

    snap_m: float | None
    lag: float | None
    icr: float | None
    brake_s: float | None
    ling_t: float | None
    heal_3: float | None
    r_score: float | None
    fp_len: float | None
    n_onsets: int
    n_recoveries: int
    n_recovered_steps: int = 0

    def as_dict(self) -> dict[str, float | None]:
        return {
            "Snap_M": self.snap_m,
            "Lag": self.lag,
            "ICR": self.icr,
            "Brake_S": self.brake_s,
            "Ling_T": self.ling_t,
            "Heal_3": self.heal_3,
            "R_Score": self.r_score,
            "FP_Len": self.fp_len,
        }


HEAL_WINDOW = 3  # Heal_3: the flag must drop at t_rec, t_rec + 1 or t_rec + 2.


def dynamic_metrics(chains: Sequence[ChainScores], threshold: float = 0.5) -> DynamicMetrics:
    """Onset, recovery and false-alarm dynamics of the prefix score (paper, 1-indexed steps).

    flag_t = c_t > threshold; t_on = first t with A^prefix_t = 1; t_rec = each t with
    A^prefix_{t-1} = 1 and A^prefix_t = 0; T = number of steps.

    Onset (over chains with a t_on):
    - Snap_M = mean of c(t_on) - c(t_on - 1). Chains with t_on = 1 have no step before the onset
      and are left out (as in the released code) rather than compared with an invented c(0) = 0,
      which would turn a jump into a level.
    - Lag = mean of (first t >= t_on with flag_t) - t_on; T - t_on + 1 when no such t (0 = caught
      at onset).
    - ICR = share of these chains with flag at t_on.

    Recovery (over every t_rec, pooled across chains):
    - Brake_S = mean of c(t_rec - 1) - c(t_rec).
    - Ling_T = mean number of consecutive flagged steps starting at t_rec (0 if not flagged).
    - Heal_3 = share of recoveries with some t in {t_rec, t_rec + 1, t_rec + 2} (within the
      chain) not flagged; a flag already down at t_rec counts as healed.

    Recovered state (the paper and its released code): R_Score = 1 - mean c_t over every
    recovered step, pooled across chains: a step with A^prefix_t = 0 that comes after some step
    with A^prefix = 1 (the chain went wrong and is back on track). High = the score came down
    after the recovery. None when no chain recovers (the released code reports 0.5 there, which
    would read as a measurement).

    False alarms (all chains): FP_Len = mean length of maximal runs of steps with flag_t = 1 and
    A^prefix_t = 0.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}.")
    snaps: list[float] = []
    lags: list[float] = []
    caught_at_onset: list[float] = []
    brakes: list[float] = []
    lingers: list[float] = []
    healed: list[float] = []
    fp_runs: list[int] = []
    recovered_scores: list[np.ndarray] = []

    for chain in chains:
        c = chain.prefix_scores
        labels = chain.prefix_labels
        n_steps = chain.n_steps
        flags = c > threshold

        t_on = _onset(labels)
        if t_on is not None:
            if t_on > 0:
                snaps.append(float(c[t_on] - c[t_on - 1]))
            alarms = np.flatnonzero(flags[t_on:])
            lags.append(float(alarms[0]) if alarms.size else float(n_steps - t_on))
            caught_at_onset.append(float(flags[t_on]))
            seen_hallucination = np.cumsum(labels) > 0
            recovered_scores.append(c[seen_hallucination & (labels == 0)])

        for t_rec in _falls(labels):
            brakes.append(float(c[t_rec - 1] - c[t_rec]))
            lingers.append(float(_run_length_from(flags, t_rec)))
            window = flags[t_rec : t_rec + HEAL_WINDOW]
            healed.append(float(not window.all()))

        fp_runs.extend(_true_run_lengths(flags & (labels == 0)))

    recovered = np.concatenate(recovered_scores) if recovered_scores else np.empty(0)
    return DynamicMetrics(
        snap_m=_mean_or_none(snaps),
        lag=_mean_or_none(lags),
        icr=_mean_or_none(caught_at_onset),
        brake_s=_mean_or_none(brakes),
        ling_t=_mean_or_none(lingers),
        heal_3=_mean_or_none(healed),
        r_score=1.0 - float(recovered.mean()) if recovered.size else None,
        fp_len=_mean_or_none([float(n) for n in fp_runs]),
        n_onsets=len(lags),
        n_recoveries=len(brakes),
        n_recovered_steps=int(recovered.size),
    )


# ---------------------------------------------------------------------------------------------
# [ext] Residual time
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ResidualTime:
    """How long the internal alarm stays up after the text has recovered, in steps.

    values[i]: for the i-th text-level recovery (the step labels fall 1 -> 0: step t is sound
    after a broken step t - 1), the number of consecutive steps from t on whose prefix score is
    above the threshold (0 when the alarm is already down at t). It is the number of steps
    between the recovery and the alarm going down, or, when the alarm never goes down, between
    the recovery and the chain's end.
    censored[i]: True in that second case. A censored value is not a measured residual time
    but a lower bound: the chain ended with the alarm still raised, so we only know the alarm
    would have stayed up at least that many steps.
    """

    values: np.ndarray
    censored: np.ndarray

    def summary(self) -> dict[str, object]:
        """n, n_censored, mean, median, p90, max, and counts (counts[r] = recoveries with
        residual time r, ready for a bar chart); statistics are None when n == 0. Censored
        values enter the statistics as their lower bound (steps to the chain's end), so with
        censored values the mean and median understate the residual time."""
        n = int(self.values.size)
        if n == 0:
            return {
                "n": 0,
                "n_censored": 0,
                "mean": None,
                "median": None,
                "p90": None,
                "max": None,
                "counts": [],
            }
        return {
            "n": n,
            "n_censored": int(self.censored.sum()),
            "mean": float(self.values.mean()),
            "median": float(np.median(self.values)),
            "p90": float(np.percentile(self.values, 90)),
            "max": int(self.values.max()),
            "counts": [int(k) for k in np.bincount(self.values)],
        }


def residual_time(chains: Sequence[ChainScores], threshold: float = 0.5) -> ResidualTime:
    """Residual time of every text-level recovery; chains without step labels are skipped.

    For each t with A^step_{t-1} = 1 and A^step_t = 0: residual = number of consecutive steps
    t, t+1, ... with c^prefix > threshold; censored when that run lasts to the chain's last
    step (the chain ended with the alarm up: the value is a lower bound). See ResidualTime.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}.")
    values: list[int] = []
    censored: list[bool] = []
    for chain in chains:
        if chain.step_labels is None:
            continue
        flags = chain.prefix_scores > threshold
        for t in _falls(chain.step_labels):
            run = _run_length_from(flags, int(t))
            values.append(run)
            censored.append(run > 0 and int(t) + run == chain.n_steps)
    return ResidualTime(
        values=_frozen_copy(np.asarray(values, dtype=np.int64)),
        censored=_frozen_copy(np.asarray(censored, dtype=bool)),
    )


# ---------------------------------------------------------------------------------------------
# [ext] Recovery statistic
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveryStat:
    """Share of chains with a long hallucinated run whose final answer is still correct.

    n_chains: chains with at least k consecutive hallucinated steps and a known is_correct.
    share_correct, ci_low, ci_high: None when n_chains == 0.
    """

    k: int
    n_chains: int
    n_correct: int
    share_correct: float | None
    ci_low: float | None
    ci_high: float | None


def _longest_run_of_ones(labels: np.ndarray) -> int:
    runs = _true_run_lengths(labels == 1)
    return max(runs) if runs else 0


def recovery_statistic(
    chains: Sequence[ChainScores], k: int = 5, confidence: float = 0.95
) -> RecoveryStat:
    """Among chains with >= k consecutive steps where A^step = 1, the share with is_correct True,
    with a Wilson interval. Chains lacking step labels or is_correct are skipped (unknown, not
    wrong)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}.")
    n_chains = 0
    n_correct = 0
    for chain in chains:
        if chain.step_labels is None or chain.is_correct is None:
            continue
        if _longest_run_of_ones(chain.step_labels) >= k:
            n_chains += 1
            n_correct += int(chain.is_correct)
    if n_chains == 0:
        return RecoveryStat(k, 0, 0, None, None, None)
    low, high = wilson_interval(n_correct, n_chains, confidence)
    return RecoveryStat(k, n_chains, n_correct, n_correct / n_chains, low, high)


# ---------------------------------------------------------------------------------------------
# [ext] Confidence intervals for ranking metrics
# ---------------------------------------------------------------------------------------------


def grouped_bootstrap(
    statistic: Callable[[np.ndarray], dict[str, float | None]], n_groups: int,
    n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> dict[str, tuple[float, float] | None]:
    """Percentile intervals of named statistics over a bootstrap that resamples whole groups.

    Resample the independent unit: steps of one chain are not independent, nor are the chains
    of one problem, so evaluation passes problems as groups. Each resample draws `n_groups`
    group indices with replacement and calls `statistic(indices)`. A statistic that is None on
    a resample (e.g. AUROC with one class drawn) is left out of that resample; its interval is
    None when it is defined on fewer than half the resamples.
    """
    if n_groups < 1 or n_resamples < 1:
        raise ValueError("Need at least one group and one resample.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}.")
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        for name, value in statistic(rng.integers(0, n_groups, n_groups)).items():
            values = draws.setdefault(name, [])
            if value is not None:
                values.append(value)
    tail = (1.0 - confidence) / 2.0 * 100.0
    return {name: (float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail)))
            if len(v) >= n_resamples / 2 else None for name, v in draws.items()}
