"""Train the step probe, the prefix tracker and the baselines from a capture, choose the layer
on validation data, and calibrate the alarm threshold there too (never on test data).

Baselines trained on the same training chains: the global-mean-pooled probe and the last-token
probe (each on step and on prefix labels, at every layer tried) and the text-only classifiers
(once: they read the capture index's step texts, not a layer; their C is chosen on the same
validation chains).

Chains are split by problem (`problem_id`, or the prompt when there is none): no problem of the
validation chains is seen in training, as no problem of a test file should be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from core.diagnose.evaluation import chain_groups, evaluation_report, score_capture
from core.diagnose.feature_store import CaptureSet
from core.diagnose.metrics import calibrate_threshold
from core.diagnose.probes import (
    LAST_TOKEN_POOLING,
    PROBE_PARTS,
    ChainFeatures,
    LinearProbe,
    ProbeBundle,
    ProbeMeta,
    Progress,
    TrackerConfig,
    fit_logistic,
    train_tracker,
)
from core.diagnose.report import EvaluationReport
from core.diagnose.text_baseline import TextBaseline, TextSettings, train_text_baseline

TRAIN_POOLINGS = ("exp", "exp3", "mean", "last")


@dataclass(frozen=True)
class TrainConfig:
    """What to train. `step_pooling` "exp" is the paper's k = 1, "exp3" the released code's."""

    step_pooling: str = "exp"
    tracker_pooling: str = "causal"
    baseline_pooling: str = "prefix_mean"
    val_share: float = 0.2
    seed: int = 0
    l2: float = 1e-4
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    last_token: bool = True  # the last-token baseline probes (they need the "last" pooling)
    text: TextSettings | None = field(default_factory=TextSettings)  # None: no text baseline

    def __post_init__(self) -> None:
        if not 0.0 < self.val_share < 1.0:
            raise ValueError(f"val_share must be in (0, 1), got {self.val_share}.")
        if self.step_pooling not in TRAIN_POOLINGS:
            raise ValueError(f"step_pooling must be one of {', '.join(TRAIN_POOLINGS)}.")

    @property
    def poolings(self) -> tuple[str, ...]:
        names = [self.step_pooling, self.tracker_pooling, self.baseline_pooling]
        return tuple(dict.fromkeys(names + ([LAST_TOKEN_POOLING] if self.last_token else [])))


def split_by_problem(index: pd.DataFrame, val_share: float,
                     seed: int = 0) -> tuple[list[str], list[str]]:
    """(train trace ids, validation trace ids), whole problems on one side only."""
    by_problem = index.drop_duplicates("trace_id")[["trace_id", "problem_id"]]
    problems = sorted(by_problem["problem_id"].astype(str).unique())
    if len(problems) < 2:
        raise ValueError("Need chains of at least two problems to hold some out for validation.")
    rng = np.random.default_rng(seed)
    rng.shuffle(problems)
    n_val = min(max(1, round(len(problems) * val_share)), len(problems) - 1)
    val_problems = set(problems[:n_val])
    is_val = by_problem["problem_id"].astype(str).isin(val_problems)
    return (by_problem.loc[~is_val, "trace_id"].astype(str).tolist(),
            by_problem.loc[is_val, "trace_id"].astype(str).tolist())


def _labels(index: pd.DataFrame, rows: np.ndarray, column: str) -> np.ndarray:
    return pd.to_numeric(index[column].iloc[rows], errors="coerce").to_numpy(np.float64)


def _rows_of(groups: dict[str, np.ndarray], ids: Sequence[str]) -> np.ndarray:
    return np.concatenate([groups[t] for t in ids]) if ids else np.zeros(0, dtype=int)


def _fit_known(features: np.ndarray, labels: np.ndarray, l2: float, seed: int,
               sample_weight: np.ndarray | None = None) -> LinearProbe | None:
    keep = ~np.isnan(labels)
    if len(np.unique(labels[keep])) < 2:
        return None
    weight = None if sample_weight is None else sample_weight[keep]
    return fit_logistic(features[keep], labels[keep], l2=l2, seed=seed, sample_weight=weight)


def _fits(bundle: ProbeBundle) -> dict[str, Any]:
    """How each part's LBFGS fit ended (the tracker: its BCE start), for the sidecar."""
    out = {}
    for name in PROBE_PARTS:
        probe: LinearProbe | None = getattr(bundle, name)
        if probe is not None and probe.fit is not None:
            out["tracker_start" if name == "tracker" else name] = asdict(probe.fit)
    return out


def train_at_layer(capture: CaptureSet, layer: int, train_ids: Sequence[str],
                   config: TrainConfig, progress: Progress | None = None,
                   text: TextBaseline | None = None) -> ProbeBundle:
    """Fit every probe of a bundle at one layer on the training chains (threshold 0.5 here;
    `calibrate` sets it from validation data); `text` (trained once for all layers by
    `train_text`) is put in the bundle as it is."""
    index = capture.index
    groups = chain_groups(index)
    rows = _rows_of(groups, train_ids)
    step_x = capture.matrix(layer, config.step_pooling)
    tracker_x = capture.matrix(layer, config.tracker_pooling)
    base_x = capture.matrix(layer, config.baseline_pooling)
    step_y = _labels(index, rows, "label")
    prefix_y = _labels(index, rows, "prefix_label")
    step_probe = _fit_known(step_x[rows], step_y, config.l2, config.seed)
    chains = []
    for tid in train_ids:
        chain_rows = groups[tid]
        labels = _labels(index, chain_rows, "prefix_label")
        if np.isnan(labels).all():
            continue
        scores = None if step_probe is None else step_probe.scores(step_x[chain_rows])
        chains.append(ChainFeatures(tracker_x[chain_rows], scores, labels))
    tracker_config = config.tracker
    if step_probe is None and tracker_config.step_input:
        tracker_config = replace(tracker_config, step_input=False)
    tracker = train_tracker(chains, tracker_config, progress)
    last_x = capture.matrix(layer, LAST_TOKEN_POOLING) if config.last_token else None
    meta = ProbeMeta(
        model=str(capture.manifest.get("model")), model_name=str(capture.manifest.get(
            "model_name")), hidden_size=int(capture.manifest["hidden_size"]), layer=layer,
        step_pooling=config.step_pooling, tracker_pooling=config.tracker_pooling,
        baseline_pooling=config.baseline_pooling, step_input=tracker_config.step_input,
        threshold=0.5, step_threshold=0.5,
        data_hash=str(capture.manifest.get("traces_hash")), tracker=asdict(tracker_config))
    bundle = ProbeBundle(
        meta=meta, tracker=tracker, step=step_probe,
        baseline_step=_fit_known(base_x[rows], step_y, config.l2, config.seed),
        baseline_prefix=_fit_known(base_x[rows], prefix_y, config.l2, config.seed),
        last_token_step=None if last_x is None else _fit_known(last_x[rows], step_y, config.l2,
                                                               config.seed),
        last_token_prefix=None if last_x is None else _fit_known(last_x[rows], prefix_y,
                                                                 config.l2, config.seed),
        text=text)
    return replace(bundle, meta=replace(meta, fits=_fits(bundle)))


def train_text(capture: CaptureSet, train_ids: Sequence[str], val_ids: Sequence[str],
               settings: TextSettings) -> TextBaseline | None:
    """The text-only classifiers, fitted on the training chains' step texts (the capture
    index's "text" column) with C chosen on the validation chains; None when the capture has
    no step texts (a capture written before they were stored) or no label to learn."""
    index = capture.index
    if "text" not in index:
        return None
    groups = chain_groups(index)
    ids = [*train_ids, *val_ids]
    rows = [groups[t] for t in ids]
    return train_text_baseline(
        [index["text"].iloc[r].astype(str).tolist() for r in rows],
        [_labels(index, r, "label") for r in rows],
        [_labels(index, r, "prefix_label") for r in rows],
        [False] * len(train_ids) + [True] * len(val_ids), settings)


def calibrate(bundle: ProbeBundle, capture: CaptureSet, val_ids: Sequence[str],
              extra_meta: dict[str, Any] | None = None
              ) -> tuple[ProbeBundle, EvaluationReport]:
    """Set the alarm thresholds (F1-optimal on validation) and record validation metrics (in
    the sidecar's `metrics["validation"]`); returns the bundle and its validation report."""
    chains = score_capture(bundle, capture, val_ids)
    prefix_y = np.concatenate([c.prefix_labels for c in chains])
    prefix_s = np.concatenate([c.prefix_scores for c in chains])
    keep = ~np.isnan(prefix_y)
    threshold = calibrate_threshold(prefix_y[keep].astype(int), prefix_s[keep])
    step_threshold = 0.5
    if bundle.step is not None:
        step_y = np.concatenate([c.step_labels for c in chains])
        step_s = np.concatenate([c.step_scores for c in chains])
        known = ~np.isnan(step_y)
        step_threshold = calibrate_threshold(step_y[known].astype(int), step_s[known])
    report = evaluation_report(chains, threshold, step_threshold)
    metrics = {"validation": report.as_dict(), **(extra_meta or {})}
    meta = replace(bundle.meta, threshold=threshold, step_threshold=step_threshold,
                   metrics=metrics)
    return replace(bundle, meta=meta), report


MIN_FINAL_CLASS = 10  # chains of each class the final-prefix AUROC needs to rank layers


def _score_for_choice(report: EvaluationReport) -> float:
    """How a layer is ranked on validation: mean of step AUROC and a prefix AUROC.

    The prefix part is the final-prefix AUROC when the validation chains hold at least
    `MIN_FINAL_CLASS` of each final label; with fewer (e.g. 2 sound chains among 240) that
    AUROC moves in steps of 1/(n_pos n_neg) on a handful of chains and would pick the layer by
    chance, so the prefix AUROC over every step stands in for it.
    """
    counts = report.final_counts
    enough = min(counts.positive, counts.negative) >= MIN_FINAL_CLASS
    ranking = report.probes
    prefix = ranking.final_auroc if enough else ranking.prefix_auroc
    values = [v for v in (ranking.step_auroc, prefix) if v is not None]
    return float(np.mean(values)) if values else float("-inf")


@dataclass(frozen=True)
class TrainResult:
    bundle: ProbeBundle
    report: EvaluationReport  # the chosen layer's, on the validation chains
    sweep: pd.DataFrame  # one row per layer tried: validation metrics
    n_train_chains: int
    n_val_chains: int


def train_probes(capture: CaptureSet, layers: Sequence[int], config: TrainConfig,
                 progress: Progress | None = None) -> TrainResult:
    """Train at each layer in `layers` (one layer: no sweep), pick the best on validation."""
    if not layers:
        raise ValueError("Give a layer to train at, or layers to sweep.")
    train_ids, val_ids = split_by_problem(capture.index, config.val_share, config.seed)
    text = None if config.text is None else train_text(capture, train_ids, val_ids, config.text)
    rows = []
    best: tuple[float, ProbeBundle, EvaluationReport] | None = None
    for number, layer in enumerate(layers):
        bundle, report = calibrate(train_at_layer(capture, layer, train_ids, config, text=text),
                                   capture, val_ids)
        rows.append({"layer": layer, **report.probes.as_dict(),
                     "threshold": bundle.meta.threshold})
        score = _score_for_choice(report)
        if best is None or score > best[0]:
            best = (score, bundle, report)
        if progress:
            progress(number + 1, len(layers))
    assert best is not None
    sweep = pd.DataFrame(rows)
    _, chosen, report = best
    metrics = {**chosen.meta.metrics, "sweep": rows if len(layers) > 1 else [],
               "n_train_chains": len(train_ids), "n_val_chains": len(val_ids)}
    chosen = replace(chosen, meta=replace(chosen.meta, metrics=metrics))
    return TrainResult(chosen, report, sweep, len(train_ids), len(val_ids))
