"""Compare fine-tuning methods at matched progress on the target, not at a matched step count.

Why: methods learn at different speeds, so at step N one has learned more than another, and
under Adam(W) a loss scale cancels (the update divides by the running gradient scale), so
multiplying SFT's learning rate by EAFT's mean gate is no matched control either. Instead every
run is evaluated every few steps, giving a curve of points (step, target loss, general loss,
general accuracy, |dtheta|), and forgetting is read off each curve where it first reaches the
same relative reduction of the held-out target loss:

    r(step) = (L_target(base) - L_target(step)) / L_target(base)

    level ℓ: the first evaluation i with r_i >= ℓ; between it and the one before (r_{i-1} < ℓ)
             every column is interpolated linearly in r:  v = v_{i-1} + (ℓ - r_{i-1}) /
             (r_i - r_{i-1}) * (v_i - v_{i-1}).  A curve that never reaches ℓ gives NaN.

The default level is the largest one every run reaches (`common_reach`). Seeds are summarised by
mean, standard deviation (ddof 1), min and max; methods are compared with the reference method
(SFT) seed by seed (same seed: same held-out split, batches and LoRA start), as differences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

CURVE_COLUMNS = ("seed", "method", "step", "reduction", "target_loss", "general_loss",
                 "general_acc", "d_theta")
INTERPOLATED = ("step", "target_loss", "general_loss", "general_acc", "d_theta")
MATCHED_COLUMNS = ("seed", "method", "level", "reached", "step", "target_loss", "general_loss",
                   "d_general_loss", "general_acc", "d_general_acc", "d_theta")
SUMMARY_METRICS = ("d_general_loss", "d_general_acc", "d_theta", "step")


def relative_reduction(base_loss: float, loss: np.ndarray | float) -> np.ndarray:
    """(base - loss) / base: 0 at the start, 1 for a loss of 0, negative if it got worse."""
    if not base_loss > 0:
        raise ValueError(f"The base target loss must be positive, got {base_loss}.")
    return (base_loss - np.asarray(loss, dtype=np.float64)) / base_loss


FloatSeq = Sequence[float] | np.ndarray


def at_level(reduction: FloatSeq, values: Mapping[str, FloatSeq], level: float) -> dict[str, float]:
    """Each column of `values` where the curve first reaches `level` (see the module docstring);
    NaN everywhere when it never does. `reduction` and every column follow the curve's order."""
    r = np.asarray(reduction, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError("A curve needs at least one point.")
    for name, column in values.items():
        if len(column) != r.size:
            raise ValueError(f"Column {name} has {len(column)} points, the curve {r.size}.")
    reached = np.flatnonzero(r >= level)
    if reached.size == 0:
        return {name: math.nan for name in values}
    i = int(reached[0])
    if i == 0:
        return {name: float(column[0]) for name, column in values.items()}
    t = (level - r[i - 1]) / (r[i] - r[i - 1])  # r[i-1] < level <= r[i]
    return {name: float(column[i - 1]) + t * (float(column[i]) - float(column[i - 1]))
            for name, column in values.items()}


def common_reach(curves: pd.DataFrame) -> float:
    """The largest reduction every (seed, method) curve reaches: min over runs of max r."""
    if curves.empty:
        raise ValueError("No curves to match.")
    return float(curves.groupby(["seed", "method"])["reduction"].max().min())


def matched_table(curves: pd.DataFrame, base: Mapping[int, Mapping[str, float]],
                  levels: Sequence[float]) -> pd.DataFrame:
    """One row per seed, method and level: the interpolated point (MATCHED_COLUMNS).

    `curves`: CURVE_COLUMNS, step 0 included. `base`: per seed, the base model's general_loss
    and general_acc, for the d_* columns (change from the base model).
    """
    rows = []
    for seed, method in curves[["seed", "method"]].drop_duplicates().itertuples(index=False):
        curve = curves[(curves["seed"] == seed) & (curves["method"] == method)]
        curve = curve.sort_values("step")
        values = {name: curve[name].to_numpy(dtype=np.float64) for name in INTERPOLATED}
        start = base[int(seed)]
        for level in levels:
            point = at_level(curve["reduction"].to_numpy(dtype=np.float64), values, level)
            rows.append({
                "seed": seed, "method": method, "level": float(level),
                "reached": not math.isnan(point["step"]), **point,
                "d_general_loss": point["general_loss"] - start["general_loss"],
                "d_general_acc": point["general_acc"] - start["general_acc"],
            })
    return pd.DataFrame(rows, columns=list(MATCHED_COLUMNS))


def _spread(values: pd.Series) -> dict[str, float]:
    v = values.dropna().to_numpy(dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan,
            "min": float(v.min()), "max": float(v.max())}


def seed_summary(matched: pd.DataFrame) -> pd.DataFrame:
    """Per method and level: n_seeds (runs that reached the level) and, for every metric of
    SUMMARY_METRICS, its mean, sd, min and max over seeds ({metric}_{stat})."""
    rows = []
    for method, level in matched[["method", "level"]].drop_duplicates().itertuples(index=False):
        group = matched[(matched["method"] == method) & (matched["level"] == level)]
        row: dict[str, object] = {"method": method, "level": level,
                                  "n_seeds": int(group["reached"].to_numpy().sum())}
        for metric in SUMMARY_METRICS:
            row.update({f"{metric}_{k}": v for k, v in _spread(group[metric]).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _number(value: Any) -> float:
    """A table cell as a float (None and pandas' missing values: NaN)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def spread_text(row: Mapping[Any, Any] | pd.Series, metric: str, *, signed: bool = True,
                scale: float = 1.0, digits: int = 3) -> str:
    """"mean ± sd [min, max]" of one metric of a `seed_summary` or `paired_differences` row
    (columns {metric}_mean, _sd, _min, _max), each times `scale`; the mean alone when there is
    no sd (one seed); "n/a" when no seed reached the level. `signed`: changes show their sign."""
    mean, sd, lo, hi = (_number(row.get(f"{metric}_{stat}")) * scale
                        for stat in ("mean", "sd", "min", "max"))
    sign = "+" if signed else ""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(sd):
        return f"{mean:{sign}.{digits}f}"
    return (f"{mean:{sign}.{digits}f} ± {abs(sd):.{digits}f} [{lo:{sign}.{digits}f}, "
            f"{hi:{sign}.{digits}f}]")


def paired_differences(matched: pd.DataFrame, reference: str = "sft") -> pd.DataFrame:
    """Per method (not the reference) and level: the seed-by-seed difference method - reference
    of d_general_loss, d_general_acc and d_theta (mean, sd, min, max), and `n_less_loss`, the
    seeds where the method's general loss rose less than the reference's."""
    metrics = ["d_general_loss", "d_general_acc", "d_theta"]
    ref = matched[matched["method"] == reference]
    if ref.empty:
        return pd.DataFrame()
    rows = []
    for method in [m for m in matched["method"].unique() if m != reference]:
        own = matched[matched["method"] == method]
        both = own.merge(ref, on=["seed", "level"], suffixes=("", "_ref"))
        for level in both["level"].unique():
            pair = both[both["level"] == level]
            pair = pair[pair["reached"].to_numpy() & pair["reached_ref"].to_numpy()]
            diff = {m: pair[m] - pair[f"{m}_ref"] for m in metrics}
            row: dict[str, object] = {
                "method": method, "reference": reference, "level": level, "n_seeds": len(pair),
                "n_less_loss": int((diff["d_general_loss"] < 0).to_numpy().sum())}
            for metric in metrics:
                row.update({f"diff_{metric}_{k}": v for k, v in _spread(diff[metric]).items()})
            rows.append(row)
    return pd.DataFrame(rows)


__all__ = [
    "CURVE_COLUMNS", "INTERPOLATED", "MATCHED_COLUMNS", "SUMMARY_METRICS", "at_level",
    "common_reach", "matched_table", "paired_differences", "relative_reduction", "seed_summary",
    "spread_text",
]
