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
    """Everything `telltale evaluate` measures on one set of scored chains."""

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

    def dynamic_dict(self) -> dict[str, float | None]:
        """The paper's eight dynamic metrics by name (None each when no chain is labelled)."""
        return (self.dynamic.as_dict() if self.dynamic is not None
                else dict.fromkeys(DYNAMIC_KEYS))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_chains": self.n_chains, "n_steps": self.n_steps,
                               "threshold": self.threshold, **self.probes.as_dict(),
                               "step_f1": self.step_f1,
                               "final_counts": asdict(self.final_counts)}
        if self.intervals is not None:
            out["intervals"] = self.intervals
        out["baselines"] = {name: ranking.as_dict() for name, ranking in self.baselines.items()}
        out["dynamic"] = self.dynamic_dict()
        out["residual_time"] = (None if self.residual_time is None
                                else self.residual_time.summary())
        out["recovery"] = {f.name: getattr(self.recovery, f.name)
                           for f in fields(self.recovery)}
        return out
