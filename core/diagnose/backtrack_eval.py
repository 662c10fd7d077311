"""Does latent backtracking help? Held-out arithmetic problems answered three ways with the same
seeds: plain sampling, probe-driven backtracking, and the control that makes as many
resamples, of randomly chosen steps, as backtracking made on the same problem (so a gain over
the control is the probe's, not resampling's). Accuracy with Wilson intervals, tokens spent
with normal intervals."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from core.data.answers import reply_is_correct
from core.data.arith import cot_prompt, generate_problems
from core.data.stats import wilson_interval
from core.diagnose.monitor import MonitorConfig, run_monitor
from core.diagnose.probes import ProbeBundle
from core.progress import Progress
from core.runtime.models import LoadedModel

ARMS = ("plain", "backtrack", "random")
HELD_OUT_SEED = 1000  # problem seed never used for the shipped training data


@dataclass(frozen=True)
class BacktrackEvalConfig:
    n_problems: int = 30
    problem_seed: int = HELD_OUT_SEED
    min_ops: int = 2
    max_ops: int = 4
    max_number: int = 9
    monitor: MonitorConfig = MonitorConfig(max_new_tokens=96)

    def __post_init__(self) -> None:
        if self.n_problems < 1:
            raise ValueError("Need at least one problem.")


def _mean_ci(values: list[float]) -> tuple[float, float, float]:
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    half = 1.96 * float(arr.std(ddof=1)) / math.sqrt(len(arr)) if len(arr) > 1 else float("nan")
    return mean, mean - half, mean + half


def control_slots(n_steps: int, n_resamples: int, retries: int, seed: int) -> tuple[int, ...]:
    """The control's resamples: `n_resamples` draws, without replacement, from the slots
    (step, retry) with at most `retries` per step, as step indices (a step listed twice is
    resampled twice). Fewer only when backtracking resampled more than n_steps * retries."""
    slots = [step for step in range(n_steps) for _ in range(retries)]
    return tuple(sorted(random.Random(seed).sample(slots, min(n_resamples, len(slots)))))


def backtrack_eval(loaded: LoadedModel, bundle: ProbeBundle, config: BacktrackEvalConfig,
                   progress: Progress | None = None
                   ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(one row per problem and arm, summary per arm with confidence intervals)."""
    problems = generate_problems(config.n_problems, seed=config.problem_seed,
                                 min_ops=config.min_ops, max_ops=config.max_ops,
                                 max_number=config.max_number)
    rows = []
    for number, problem in enumerate(problems):
        seed = config.monitor.seed + number
        question = cot_prompt(problem)
        plain = run_monitor(loaded, bundle, question, replace(config.monitor, mode="watch",
                                                              seed=seed))
        backtracked = run_monitor(loaded, bundle, question,
                                  replace(config.monitor, mode="backtrack", seed=seed))
        chosen = control_slots(len(plain.steps), len(backtracked.discarded),
                               config.monitor.retries, seed)
        control = run_monitor(loaded, bundle, question, replace(
            config.monitor, mode="random", seed=seed, resample_steps=chosen))
        for arm, result in zip(ARMS, (plain, backtracked, control), strict=True):
            rows.append({
                "problem_id": problem.problem_id, "arm": arm,
                "correct": reply_is_correct(result.text, problem.gold),
                "tokens_processed": result.tokens_processed,
                "tokens_generated": result.tokens_generated,
                "resampled": len(result.discarded), "alarms": result.alarms,
            })
        if progress:
            progress(number + 1, len(problems))
    table = pd.DataFrame(rows)
    summary: dict[str, Any] = {"n_problems": len(problems), "arms": {}}
    for arm in ARMS:
        part = table[table["arm"] == arm]
        correct = int(part["correct"].sum())
        low, high = wilson_interval(correct, len(part))
        tokens = _mean_ci(part["tokens_processed"].astype(float).tolist())
        summary["arms"][arm] = {
            "accuracy": correct / len(part), "accuracy_ci": [low, high], "n_correct": correct,
            "tokens_mean": tokens[0], "tokens_ci": [tokens[1], tokens[2]],
            "resampled_steps": int(part["resampled"].sum()),
        }
    return table, summary
