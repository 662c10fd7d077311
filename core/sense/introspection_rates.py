"""Rates from a trial table (one row per reply, `core.sense.introspection.TRIAL_COLUMNS`), each
with its 95% Wilson interval and the rate of its chance arm beside it.

- `condition_rates`: the paper's four conditions (detection, identification, coherence);
- `setting_summary` / `sweep_summary`: one wide row per (layer, strength, concept), every control
  as columns (the dashboard's heatmaps read these);
- `control_table`: one long row per arm and setting with a `control` column, the rate of the
  arm's measure, the rate of its reference arm (its chance: no injection for the detection arms,
  the same questions without injection for the yes/no arm, the mismatched concept for the named
  one) and their difference with Newcombe's interval (`telltale sweep --json` rows).

Arms without injection are shared by every setting of a run (`core.sense.arms.Arm.shared`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

import pandas as pd

from core.sense.arms import ARMS, CONDITIONS, Arm
from core.sense.introspection_grading import Rate, rate

SETTING_KEYS = ["layer", "strength", "concept"]


def rate_columns(prefix: str, k: int, n: int) -> dict[str, Any]:
    """{prefix: p, prefix_lo: lo, prefix_hi: hi} (None when n == 0)."""
    r = rate(k, n)
    return {prefix: r.p, f"{prefix}_lo": r.lo, f"{prefix}_hi": r.hi}


def difference_interval(a: Rate, b: Rate) -> tuple[float | None, float | None, float | None]:
    """a.p - b.p with Newcombe's hybrid score interval (from the two Wilson intervals):
    lo = d - sqrt((p_a - lo_a)^2 + (hi_b - p_b)^2), hi = d + sqrt((hi_a - p_a)^2 + (p_b - lo_b)^2).
    (None, None, None) when either rate is empty."""
    if a.p is None or b.p is None or a.lo is None or a.hi is None or b.lo is None \
            or b.hi is None:
        return None, None, None
    d = a.p - b.p
    lo = d - math.sqrt((a.p - a.lo) ** 2 + (b.hi - b.p) ** 2)
    hi = d + math.sqrt((a.hi - a.p) ** 2 + (b.p - b.lo) ** 2)
    return d, lo, hi


def _count(group: pd.DataFrame, column: str) -> int:
    """Rows of `group` whose `column` is True (missing column or values: none)."""
    if column not in group.columns:
        return 0
    return int((group[column] == True).sum())  # noqa: E712 (object columns hold None too)


def measure_rate(group: pd.DataFrame, arm: Arm) -> Rate:
    """The arm's measure over its rows: detection = coherent and affirmative; yes = opens with
    yes."""
    column = "detected" if arm.measure == "detection" else "answer_yes"
    return rate(_count(group, column), len(group))


def _first(group: pd.DataFrame, column: str) -> Any:
    if column not in group.columns or group.empty:
        return None
    value = group[column].iloc[0]
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def condition_rates(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per condition of the paper's question that was run: n, detection,
    identification, coherence (each with _lo/_hi)."""
    rows = []
    for condition in CONDITIONS:
        group = trials[trials["condition"] == condition]
        if group.empty:
            continue
        n = len(group)
        rows.append({"condition": condition, "n": n,
                     **rate_columns("detection", _count(group, "detected"), n),
                     **rate_columns("identification", _count(group, "identified"), n),
                     **rate_columns("coherence", _count(group, "coherent"), n)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ wide: one row per setting

_WIDE_CONTROLS = ("random", "negated", "generation_only", "named", "mismatch")
SUMMARY_KEYS = [
    "layer", "strength", "concept", "effective_magnitude", "relative_magnitude", "n",
    "detection", "detection_lo", "detection_hi", "identification", "identification_lo",
    "identification_hi", "false_positive", "false_positive_lo", "false_positive_hi", "n_none",
    "net", "coherence", "coherence_lo", "coherence_hi",
    *[f"{arm}_{key}" for arm in _WIDE_CONTROLS
      for key in ("n", "detection", "detection_lo", "detection_hi", "identification",
                  "coherence")],
    "yes_no_n", "yes_no_yes", "yes_no_yes_lo", "yes_no_yes_hi",
    "yes_no_none_n", "yes_no_none_yes", "yes_no_none_yes_lo", "yes_no_none_yes_hi",
]


def _shared(trials: pd.DataFrame, name: str, given: pd.DataFrame | None) -> pd.DataFrame:
    return given if given is not None else trials[trials["condition"] == name]


def setting_summary(trials: pd.DataFrame, none_trials: pd.DataFrame | None = None,
                    yes_no_none_trials: pd.DataFrame | None = None) -> dict[str, Any]:
    """Headline numbers of one setting.

    detection = P(coherent and affirmative | injected); identification = P(identified |
    injected); false_positive = P(coherent and affirmative | no injection); net =
    identification - false_positive; coherence = P(coherent | injected); then per control arm
    (random, negated, generation_only, named, mismatch) its n, detection with interval,
    identification and coherence, and the yes rates of the unrelated questions with and without
    injection. `none_trials` / `yes_no_none_trials` override the shared arms' rows (a sweep
    shares one set of each). Controls that were not run have n 0 and rates None.
    """
    injected = trials[trials["condition"] == "injected"]
    none = _shared(trials, "none", none_trials)
    out: dict[str, Any] = {"effective_magnitude": _first(injected, "effective_magnitude"),
                           "relative_magnitude": _first(injected, "relative_magnitude"),
                           "n": len(injected)}
    out.update(rate_columns("detection", _count(injected, "detected"), len(injected)))
    out.update(rate_columns("identification", _count(injected, "identified"), len(injected)))
    out.update(rate_columns("false_positive", _count(none, "detected"), len(none)))
    out["n_none"] = len(none)
    ident, fp = out["identification"], out["false_positive"]
    out["net"] = None if ident is None or fp is None else ident - fp
    out.update(rate_columns("coherence", _count(injected, "coherent"), len(injected)))
    for name in _WIDE_CONTROLS:
        group = trials[trials["condition"] == name]
        n = len(group)
        out[f"{name}_n"] = n
        out.update(rate_columns(f"{name}_detection", _count(group, "detected"), n))
        out[f"{name}_identification"] = rate(_count(group, "identified"), n).p
        out[f"{name}_coherence"] = rate(_count(group, "coherent"), n).p
    for name, group in (("yes_no", trials[trials["condition"] == "yes_no"]),
                        ("yes_no_none", _shared(trials, "yes_no_none", yes_no_none_trials))):
        out[f"{name}_n"] = len(group)
        out.update(rate_columns(f"{name}_yes", _count(group, "answer_yes"), len(group)))
    return out


def _is_shared(trials: pd.DataFrame) -> pd.Series:
    shared = {name for name, arm in ARMS.items() if arm.shared}
    return trials["condition"].isin(shared)


def _settings(trials: pd.DataFrame) -> Iterable[tuple[tuple[Any, Any, Any], pd.DataFrame]]:
    setting_rows = trials[~_is_shared(trials)]
    for key, group in setting_rows.groupby(SETTING_KEYS, sort=False, dropna=False):
        yield cast(tuple[Any, Any, Any], key), group


def sweep_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, strength, concept) with the keys of SUMMARY_KEYS; the false-positive
    and the plain yes/no rates come from the shared arms."""
    none = trials[trials["condition"] == "none"]
    yes_no_none = trials[trials["condition"] == "yes_no_none"]
    rows = []
    for (layer, strength, concept), group in _settings(trials):
        rows.append({"layer": int(layer), "strength": float(strength), "concept": concept,
                     **setting_summary(group, none, yes_no_none)})
    return pd.DataFrame(rows, columns=SUMMARY_KEYS)


# ------------------------------------------------------------------ long: one row per arm

CONTROL_KEYS = [
    "layer", "strength", "concept", "control", "question", "positions", "injected",
    "effective_magnitude", "relative_magnitude", "measure", "n", "rate", "rate_lo", "rate_hi",
    "reference", "reference_n", "reference_rate", "reference_lo", "reference_hi", "difference",
    "difference_lo", "difference_hi", "identification", "identification_lo",
    "identification_hi", "coherence", "coherence_lo", "coherence_hi",
]


def _arm_row(group: pd.DataFrame, arm: Arm, setting: tuple[Any, Any, Any],
             reference: pd.DataFrame | None) -> dict[str, Any]:
    layer, strength, concept = setting
    n = len(group)
    measured = measure_rate(group, arm)
    row: dict[str, Any] = {
        "layer": None if layer is None or pd.isna(layer) else int(layer),
        "strength": None if strength is None or pd.isna(strength) else float(strength),
        "concept": None if concept is None or pd.isna(concept) else concept,
        "control": arm.name, "question": arm.question, "positions": _first(group, "positions"),
        "injected": _first(group, "injected"),
        "effective_magnitude": _first(group, "effective_magnitude"),
        "relative_magnitude": _first(group, "relative_magnitude"), "measure": arm.measure,
        "n": n, "rate": measured.p, "rate_lo": measured.lo, "rate_hi": measured.hi,
        "reference": arm.reference,
    }
    if reference is not None and arm.reference is not None:
        chance = measure_rate(reference, ARMS[arm.reference])
        d, lo, hi = difference_interval(measured, chance)
        row.update({"reference_n": chance.n, "reference_rate": chance.p,
                    "reference_lo": chance.lo, "reference_hi": chance.hi, "difference": d,
                    "difference_lo": lo, "difference_hi": hi})
    else:
        row["reference"] = None
    if arm.measure == "detection":
        row.update(rate_columns("identification", _count(group, "identified"), n))
    row.update(rate_columns("coherence", _count(group, "coherent"), n))
    return row


def control_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: first the shared arms (nothing injected: layer, strength and concept
    empty), then per setting each arm that ran, with the rate of its measure, its reference
    arm's rate (its chance) and the difference with its interval. Columns: CONTROL_KEYS."""
    rows: list[dict[str, Any]] = []
    shared = {name: trials[trials["condition"] == name]
              for name, arm in ARMS.items() if arm.shared}
    for name, group in shared.items():
        if not group.empty:
            rows.append(_arm_row(group, ARMS[name], (None, None, None), None))
    for setting, group in _settings(trials):
        for name in dict.fromkeys(group["condition"]):
            arm = ARMS[name]
            reference = None
            if arm.reference is not None:
                pool = shared.get(arm.reference)
                reference = pool if pool is not None else group[
                    group["condition"] == arm.reference]
                reference = None if reference.empty else reference
            rows.append(_arm_row(group[group["condition"] == name], arm, setting, reference))
    return pd.DataFrame(rows, columns=CONTROL_KEYS)
