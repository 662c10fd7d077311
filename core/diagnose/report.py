"""The evaluation report of a probe on labelled chains, as frozen typed records.

`evaluation.evaluation_report` builds an `EvaluationReport`; `as_dict()` is the JSON of
`telltale evaluate --json` and of the probe sidecar's "validation" metrics (the probes' ranking
keys at the top level, one block per baseline), so those keys stay as they always were.
A value the data cannot support is None, never 0.

    report = evaluation_report(chains, threshold)
    report.probes.step_auroc, report.baselines["max_nll"].final_auroc, report.as_dict()
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from core.data.answers import AccuracyWithChance
from core.diagnose.metrics import DynamicMetrics, RecoveryStat, ResidualTime

RANKING_KEYS = ("step_auroc", "step_auprc", "prefix_auroc", "final_auroc")
DYNAMIC_KEYS = ("Snap_M", "Lag", "ICR", "Brake_S", "Ling_T", "Heal_3", "R_Score", "FP_Len")


@dataclass(frozen=True)
class Ranking:
    """How well one scorer ranks wrong over sound: step level (scores vs step labels), every
    prefix, and each chain's last prefix (the final level)."""

    step_auroc: float | None = None
    step_auprc: float | None = None
    prefix_auroc: float | None = None
    final_auroc: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


@dataclass(frozen=True)
class FinalCounts:
    """Chains whose last prefix label is 1 (gone wrong) and 0 (sound): how far the final-level
    AUROC can be trusted."""

    positive: int
    negative: int


@dataclass(frozen=True)
class EvaluationReport:
    """Everything `telltale evaluate` measures on one set of scored chains.

    dynamic: the eight dynamic metrics at the alarm `threshold` (the calibrated one);
    dynamic_at_0_5: the same at the paper's threshold 0.5. residual_time: see
    `core.diagnose.metrics.residual_time` (a censored value is a lower bound: the chain ended
    with the alarm still up). answers: accuracy of the stated answers, the answered share and
    the shuffled-gold chance rate (None when not computed).
    """

    n_chains: int
    n_steps: int
    threshold: float
    probes: Ranking
    step_f1: float | None
    final_counts: FinalCounts
    baselines: dict[str, Ranking]
    dynamic: DynamicMetrics | None
    residual_time: ResidualTime | None
    recovery: RecoveryStat
    intervals: dict[str, Any] | None = None  # `evaluation.ranking_intervals`, when asked for
    dynamic_at_0_5: DynamicMetrics | None = None
    answers: AccuracyWithChance | None = None

    def dynamic_dict(self, at_0_5: bool = False) -> dict[str, float | None]:
        """The paper's eight dynamic metrics by name, at the alarm threshold (or at 0.5);
        None each when no chain is labelled."""
        found = self.dynamic_at_0_5 if at_0_5 else self.dynamic
        return found.as_dict() if found is not None else dict.fromkeys(DYNAMIC_KEYS)

    def answers_dict(self) -> dict[str, Any]:
        """"answered" (share of chains that state an answer), "accuracy" (right answers over
        all chains; an unanswered chain counts as wrong), "chance_accuracy" (the mean over
        shuffles of the same answers scored against golds shuffled across problems), and
        "answers" (all counts and the chance's spread); None each when not computed."""
        found = self.answers
        if found is None or found.n == 0:
            return dict.fromkeys(("answered", "accuracy", "chance_accuracy", "answers"))
        return {"answered": found.answered_share, "accuracy": found.accuracy,
                "chance_accuracy": found.chance_mean, "answers": found.as_dict()}

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_chains": self.n_chains, "n_steps": self.n_steps,
                               "threshold": self.threshold, **self.probes.as_dict(),
                               "step_f1": self.step_f1,
                               "final_counts": asdict(self.final_counts)}
        if self.intervals is not None:
            out["intervals"] = self.intervals
        out["baselines"] = {name: ranking.as_dict() for name, ranking in self.baselines.items()}
        out["dynamic"] = self.dynamic_dict()
        out["dynamic_at_0_5"] = self.dynamic_dict(at_0_5=True)
        out["residual_time"] = (None if self.residual_time is None
                                else self.residual_time.summary())
        out["recovery"] = {f.name: getattr(self.recovery, f.name)
                           for f in fields(self.recovery)}
        out.update(self.answers_dict())
        return out
