"""The arithmetic of `backtrack_eval`, as pure functions: matched token budgets, best-of-N
choices, paired counts against plain sampling, the exact McNemar test, and the summary table.

Paired outcomes on the same problems: a *fix* is a problem answered wrongly plainly and rightly
with the method, a *harm* the reverse. McNemar's exact test asks whether fixes and harms are
equally likely: under that null the fixes among the n = fix + harm discordant problems are
Binomial(n, 1/2), and the two-sided p-value is min(1, 2 * P(X <= min(fix, harm))).

Budgets are matched in expectation on every problem: items (replies, resampled steps) are
taken in order while they fit, and the first that does not fit is taken with the probability
that makes the expected spend equal to the budget (randomised rounding), so a control neither
always undershoots nor always overshoots.

    mcnemar_exact(10, 2)                         # 0.0386 (two-sided, exact)
    take_within_budget([80, 70, 90], 200, 0.5)   # 3: 80 + 70 fit; 90 would overshoot, taken
                                                 # when the draw 0.5 < (200 - 150) / 90
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.data.answers import accuracy_with_chance
from core.data.stats import wilson_interval

PLAIN = "plain"


def mcnemar_exact(fix: int, harm: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none):
    2 * sum_{k <= min(fix, harm)} C(n, k) / 2^n with n = fix + harm, capped at 1."""
    if fix < 0 or harm < 0:
        raise ValueError(f"Counts must be >= 0, got {fix} and {harm}.")
    n = fix + harm
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(fix, harm) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers, one rounding


def paired_counts(plain: Sequence[bool], method: Sequence[bool]) -> tuple[int, int]:
    """(fix, harm): problems wrong plainly and right with the method, and the reverse."""
    if len(plain) != len(method):
        raise ValueError("Both arms must answer the same problems.")
    fix = sum(not p and m for p, m in zip(plain, method, strict=True))
    harm = sum(p and not m for p, m in zip(plain, method, strict=True))
    return fix, harm


def _spend(costs: Sequence[float], budget: float, draw: float, total: float = 0.0) -> int:
    """How many of `costs`, in order, spend `budget` from `total`: each that fits, then the
    first that does not with probability (budget - total) / cost (`draw` uniform in [0, 1))."""
    for taken, cost in enumerate(costs):
        if total + cost <= budget:
            total += cost
            continue
        return taken + int(draw * cost < budget - total)
    return len(costs)


def take_within_budget(costs: Sequence[int], budget: float, draw: float) -> int:
    """How many replies of `costs` (in order) best-of-N uses at `budget`: the first always (a
    reply has to be written), then the randomised rounding of the module docstring. Give
    enough costs to overshoot the budget (sum(costs) > budget), else all are taken."""
    if not costs:
        return 0
    return 1 + _spend(costs[1:], budget, draw, total=costs[0])


def plan_resamples(step_costs: Sequence[int], budget: float, retries: int,
                   seed: int) -> tuple[int, ...]:
    """The random control's resamples: step indices (a step listed twice is resampled twice)
    drawn in random order from the slots (step, retry), at most `retries` per step, spending
    `budget` by their expected cost (the plain reply's step lengths) with the randomised
    rounding of the module docstring; none for a budget of 0."""
    slots = [step for step in range(len(step_costs)) for _ in range(retries)]
    rng = random.Random(seed)
    rng.shuffle(slots)
    taken = _spend([step_costs[step] for step in slots], budget, rng.random())
    return tuple(sorted(slots[:taken]))


def choose_by_prefix(final_prefix: Sequence[float | None]) -> int:
    """The candidate with the lowest final prefix score (the earliest among equals; candidates
    without a score, i.e. without a step, come last; the first when none has one)."""
    scored = [(score, i) for i, score in enumerate(final_prefix) if score is not None]
    return min(scored)[1] if scored else 0


def choose_by_majority(answers: Sequence[str | None]) -> int:
    """The first candidate stating the most common answer (ties: the answer stated first);
    the first candidate when none states one."""
    counts: dict[str, int] = {}
    for answer in answers:
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1
    if not counts:
        return 0
    top = max(counts.values())
    return next(i for i, a in enumerate(answers) if a is not None and counts[a] == top)


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean with a normal 95% interval over problems."""
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    half = 1.96 * float(arr.std(ddof=1)) / math.sqrt(len(arr)) if len(arr) > 1 else math.nan
    return mean, mean - half, mean + half


def summarise(table: pd.DataFrame, arms: Sequence[str], n_shuffles: int = 20,
              seed: int = 0) -> dict[str, Any]:
    """Per arm, over the problems every arm answered: accuracy with its Wilson interval, the
    answered share, the chance rate (the arm's answers against golds shuffled across problems),
    tokens per problem with an interval, and against plain sampling the fixes, harms, their
    rates over all problems and the exact McNemar p-value.

    `table`: one row per problem and arm with problem (its number), problem_id, arm, gold,
    answer (None: unanswered), correct and tokens."""
    done = table.groupby("problem")["arm"].nunique()
    complete = set(done[done == len(arms)].index)
    part = table[table["problem"].isin(complete)].sort_values(["arm", "problem"])
    by_arm = {arm: part[part["arm"] == arm] for arm in arms}
    n = len(complete)
    summary: dict[str, Any] = {"n_problems": n, "arms": {}}
    if n == 0:
        return summary
    plain = by_arm[PLAIN]["correct"].astype(bool).tolist()
    for arm, rows in by_arm.items():
        answers = [None if pd.isna(a) else str(a) for a in rows["answer"]]
        outcome = accuracy_with_chance(answers, rows["gold"].astype(str).tolist(),
                                       rows["problem_id"].astype(str).tolist(),
                                       n_shuffles=n_shuffles, seed=seed)
        correct = rows["correct"].astype(bool).tolist()
        low, high = wilson_interval(sum(correct), n)
        tokens = mean_interval(rows["tokens"].astype(float).tolist())
        entry: dict[str, Any] = {
            "n": n, "n_correct": sum(correct), "accuracy": sum(correct) / n,
            "accuracy_ci": [low, high], "answered": outcome.answered_share,
            "chance_accuracy": {"mean": outcome.chance_mean, "sd": outcome.chance_sd,
                                "n_shuffles": outcome.n_shuffles},
            "tokens_per_problem": tokens[0], "tokens_ci": [tokens[1], tokens[2]],
        }
        if arm != PLAIN:
            fix, harm = paired_counts(plain, correct)
            entry.update({"fix": fix, "harm": harm, "fix_rate": fix / n, "harm_rate": harm / n,
                          "mcnemar_p": mcnemar_exact(fix, harm)})
        summary["arms"][arm] = entry
    return summary
