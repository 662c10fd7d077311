"""Score captured chains with a probe file and report how well the scores find hallucinations,
beside the baselines every probe must beat.

Baselines (fixed orientation, never chosen on test data): per step, mean token entropy, mean
NLL, max NLL, and 1 - min token probability; per prefix, the running mean (entropy, mean NLL),
running max (max NLL) or running worst (min probability) of the step signal up to t; the same
linear probe on global-mean-pooled features ("global_mean_probe", the paper's global mean
pooling row) and on the step's last-token state ("last_token"), each trained on step labels for
the step level and on prefix labels for the prefix level; and the text-only classifiers
("text": the step's text at step level, the chain's text so far at prefix level), which answer
whether the hidden state knows more than the words.

Intervals resample problems, not chains: chains of one problem share it and are not
independent. Leads are paired: the probe and a baseline on the same resample.

For display and export: `step_phases` names each step's state from its two scores,
`ranking_inputs` / `roc_curves` gather what an ROC plot needs, `scored_traces` adds the scores to
the traces (the `telltale score` file), and `token_scores` applies the step probe to every token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.data.answers import AccuracyWithChance, accuracy_with_chance
from core.data.traces import Trace
from core.diagnose.encode import encode_trace, prompt_text
from core.diagnose.feature_store import CaptureSet
from core.diagnose.metrics import (
    ChainScores,
    auprc,
    auroc,
    dynamic_metrics,
    f1_at,
    grouped_bootstrap,
    recovery_statistic,
    residual_time,
    roc_curve_points,
)
from core.diagnose.probes import ProbeBundle
from core.diagnose.report import EvaluationReport, FinalCounts, Ranking
from core.runtime.capture import record_residual
from core.runtime.models import LoadedModel

SIGNAL_BASELINES = ("mean_entropy", "mean_nll", "max_nll", "min_prob")
GLOBAL_MEAN = "global_mean_probe"  # linear probe on global-mean-pooled features
LAST_TOKEN = "last_token"  # linear probe on the step's last-token state
TEXT = "text"  # text-only classifier (never reads a hidden state)
BASELINE_NAMES = (*SIGNAL_BASELINES, GLOBAL_MEAN, LAST_TOKEN, TEXT)
BASELINE_LABELS = {  # how reports name each baseline
    "mean_entropy": "mean token entropy", "mean_nll": "mean NLL", "max_nll": "max NLL",
    "min_prob": "1 - min token probability", GLOBAL_MEAN: "global-mean-pooled probe",
    LAST_TOKEN: "last-token probe", TEXT: "text-only classifier"}
PROBE_NAME = "probe"  # the probes' row in `ranking_inputs` / `roc_curves`
PAPER_THRESHOLD = 0.5  # the paper's alarm: c^prefix > 0.5
RANKING_LEVELS = ("step", "prefix", "final")

# Step phases (`step_phases`): what the two scores say about a step.
GROUNDED = "grounded"  # neither score is high
SPIKE = "spike"  # the step probe fires, the prefix tracker does not (yet)
DECEPTIVE = "deceptive stability"  # the step looks fine, the chain's state is bad
COLLAPSE = "collapse"  # both are high
PHASES = (GROUNDED, SPIKE, DECEPTIVE, COLLAPSE)


@dataclass(frozen=True, eq=False)
class ScoredChain:
    """One chain's scores and labels, steps in order (unknown labels are NaN)."""

    trace_id: str
    problem_id: str
    step_scores: np.ndarray | None
    prefix_scores: np.ndarray
    step_labels: np.ndarray
    prefix_labels: np.ndarray
    is_correct: bool | None
    baselines_step: dict[str, np.ndarray]
    baselines_prefix: dict[str, np.ndarray]

    @property
    def n_steps(self) -> int:
        return len(self.prefix_scores)


def _float_labels(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)


def _running(values: np.ndarray, how: str) -> np.ndarray:
    if how == "max":
        return np.maximum.accumulate(values)
    return np.cumsum(values) / np.arange(1, len(values) + 1)


def signal_baselines(rows: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Step-level and prefix-level baseline scores of one chain (higher = more suspicious)."""
    step: dict[str, np.ndarray] = {}
    prefix: dict[str, np.ndarray] = {}
    if "mean_entropy" not in rows:
        return step, prefix
    step["mean_entropy"] = rows["mean_entropy"].to_numpy(np.float64)
    step["mean_nll"] = rows["mean_nll"].to_numpy(np.float64)
    step["max_nll"] = rows["max_nll"].to_numpy(np.float64)
    step["min_prob"] = 1.0 - rows["min_prob"].to_numpy(np.float64)
    prefix["mean_entropy"] = _running(step["mean_entropy"], "mean")
    prefix["mean_nll"] = _running(step["mean_nll"], "mean")
    prefix["max_nll"] = _running(step["max_nll"], "max")
    prefix["min_prob"] = _running(step["min_prob"], "max")
    return step, prefix


def chain_groups(index: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row positions of each chain in a capture index, in step order."""
    ids = index["trace_id"].to_numpy()
    steps = index["step"].to_numpy()
    positions: dict[str, list[int]] = {}
    for row, tid in enumerate(ids):
        positions.setdefault(str(tid), []).append(row)
    out = {}
    for tid, rows in positions.items():
        arr = np.asarray(rows)
        out[tid] = arr[np.argsort(steps[arr], kind="stable")]
    return out


_PROBE_BASELINES = ((GLOBAL_MEAN, "baseline_step", "baseline_prefix"),
                    (LAST_TOKEN, "last_token_step", "last_token_prefix"))


def score_capture(bundle: ProbeBundle, capture: CaptureSet,
                  trace_ids: Sequence[str] | None = None) -> list[ScoredChain]:
    """Scores of every chain (or of `trace_ids`) in a capture, with its labels and baselines.

    The text-only baseline is scored when the bundle holds one and the capture index has the
    step texts (captures written before they were stored do not)."""
    layer = bundle.meta.layer
    mats = {p: capture.matrix(layer, p) for p in bundle.poolings}
    groups = chain_groups(capture.index)
    wanted = list(groups) if trace_ids is None else [t for t in trace_ids if t in groups]
    text_scores: list[dict[str, np.ndarray]] = [{} for _ in wanted]
    if bundle.text is not None and "text" in capture.index:
        texts = capture.index["text"]
        text_scores = bundle.text.score_chains(
            [texts.iloc[groups[tid]].astype(str).tolist() for tid in wanted])
    chains = []
    for tid, text in zip(wanted, text_scores, strict=True):
        rows = groups[tid]
        meta = capture.index.iloc[rows]
        scores = bundle.score_chain({p: m[rows] for p, m in mats.items()})
        base_step, base_prefix = signal_baselines(meta)
        for name, step_key, prefix_key in _PROBE_BASELINES:
            if step_key in scores:
                base_step[name] = scores[step_key]
            if prefix_key in scores:
                base_prefix[name] = scores[prefix_key]
        if "step" in text:
            base_step[TEXT] = text["step"]
        if "prefix" in text:
            base_prefix[TEXT] = text["prefix"]
        correct = meta["is_correct"].iloc[0]
        chains.append(ScoredChain(
            trace_id=str(tid), problem_id=str(meta["problem_id"].iloc[0]),
            step_scores=scores.get("step"), prefix_scores=scores["prefix"],
            step_labels=_float_labels(meta["label"]),
            prefix_labels=_float_labels(meta["prefix_label"]),
            is_correct=None if pd.isna(correct) else bool(correct),
            baselines_step=base_step, baselines_prefix=base_prefix))
    return chains


def _known(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ~np.isnan(labels)
    return labels[keep].astype(int), scores[keep]


def _ranking(chains: Sequence[ScoredChain], step_of: Any, prefix_of: Any) -> Ranking:
    """AUROC/AUPRC of step scores on step labels, prefix scores on prefix labels (all steps and
    the final step). `step_of` / `prefix_of` pick the scores from a chain (or None)."""
    step_auroc = step_auprc = None
    step_parts = [(c.step_labels, step_of(c)) for c in chains if step_of(c) is not None]
    if step_parts:
        y, s = _known(np.concatenate([p[0] for p in step_parts]),
                      np.concatenate([p[1] for p in step_parts]))
        step_auroc, step_auprc = auroc(y, s), auprc(y, s)
    y, s = _known(np.concatenate([c.prefix_labels for c in chains]),
                  np.concatenate([prefix_of(c) for c in chains]))
    prefix_auroc = auroc(y, s)
    y, s = _known(np.array([c.prefix_labels[-1] for c in chains]),
                  np.array([prefix_of(c)[-1] for c in chains]))
    return Ranking(step_auroc, step_auprc, prefix_auroc, auroc(y, s))


def _present(chains: Sequence[ScoredChain]) -> list[str]:
    """Baselines with prefix-level scores in every chain (step-level scores may be missing)."""
    return [n for n in BASELINE_NAMES if all(n in c.baselines_prefix for c in chains)]


def problem_groups(chains: Sequence[ScoredChain]) -> list[np.ndarray]:
    """Chain positions of each problem, problems in order of first appearance: the unit a
    bootstrap resamples (chains of one problem share it, so they are not independent)."""
    positions: dict[str, list[int]] = {}
    for number, c in enumerate(chains):
        positions.setdefault(c.problem_id, []).append(number)
    return [np.asarray(p) for p in positions.values()]


def ranking_intervals(chains: Sequence[ScoredChain], n_resamples: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Bootstrap intervals of step and final-prefix AUROC for the probes and every baseline,
    and of the probes' lead over each baseline on the same resample (paired: an interval above
    0 says the probe ranks better than that baseline on data like this).

    Each resample draws problems with replacement (as many as there are) and takes every chain
    of each drawn problem: chains of one problem are not independent.

    Returns {"unit": "problem", "n_problems", "confidence", "n_resamples",
    "probe": {"step_auroc": [lo, hi], "final_auroc": ...}, "baselines": {name: ...},
    "lead": {name: {"step_auroc": [lo, hi], "final_auroc": ...}}}; an interval the data cannot
    support is None.
    """
    names = _present(chains)
    series: dict[str, tuple[Any, Any]] = {PROBE_NAME: (lambda c: c.step_scores,
                                                       lambda c: c.prefix_scores)}
    for name in names:
        series[name] = (lambda c, n=name: c.baselines_step.get(n),
                        lambda c, n=name: c.baselines_prefix[n])
    sizes = np.array([c.n_steps for c in chains])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    step_labels = np.concatenate([c.step_labels for c in chains])
    final_labels = np.array([c.prefix_labels[-1] for c in chains])
    step_scores, final_scores = {}, {}
    for name, (step_of, prefix_of) in series.items():
        if all(step_of(c) is not None for c in chains):
            step_scores[name] = np.concatenate([step_of(c) for c in chains])
        final_scores[name] = np.array([prefix_of(c)[-1] for c in chains])
    problems = problem_groups(chains)

    def statistic(picked_problems: np.ndarray) -> dict[str, float | None]:
        picked = np.concatenate([problems[p] for p in picked_problems])
        rows = np.concatenate([np.arange(starts[i], starts[i] + sizes[i]) for i in picked])
        out: dict[str, float | None] = {}
        for name, scores in step_scores.items():
            out[f"{name}/step_auroc"] = auroc(*_known(step_labels[rows], scores[rows]))
        for name, scores in final_scores.items():
            out[f"{name}/final_auroc"] = auroc(*_known(final_labels[picked], scores[picked]))
        for name in names:
            for metric in ("step_auroc", "final_auroc"):
                mine, theirs = out.get(f"{PROBE_NAME}/{metric}"), out.get(f"{name}/{metric}")
                out[f"lead:{name}/{metric}"] = (None if mine is None or theirs is None
                                                else mine - theirs)
        return out

    found = grouped_bootstrap(statistic, len(problems), n_resamples, confidence, seed)

    def pair(key: str) -> list[float] | None:
        interval = found.get(key)
        return None if interval is None else [interval[0], interval[1]]

    metrics = ("step_auroc", "final_auroc")
    return {
        "unit": "problem", "n_problems": len(problems),
        "confidence": confidence, "n_resamples": n_resamples,
        "probe": {m: pair(f"{PROBE_NAME}/{m}") for m in metrics},
        "baselines": {n: {m: pair(f"{n}/{m}") for m in metrics} for n in names},
        "lead": {n: {m: pair(f"lead:{n}/{m}") for m in metrics} for n in names},
    }


def _fully_labelled(chain: ScoredChain) -> bool:
    return not np.isnan(chain.prefix_labels).any()


def evaluation_report(chains: Sequence[ScoredChain], threshold: float = 0.5,
                      step_threshold: float | None = None, k: int = 5,
                      n_resamples: int = 0,
                      answers: AccuracyWithChance | None = None) -> EvaluationReport:
    """The `telltale evaluate` report (`.as_dict()` is its --json). A value the data cannot
    support is None, never 0.

    `threshold` is the alarm threshold (the probe's calibrated one); the dynamic metrics are
    given at it and at the paper's 0.5. `final_counts` holds the final step's class counts,
    which say how far the final-prefix AUROC can be trusted; with `n_resamples` > 0,
    `intervals` holds `ranking_intervals` (resampling problems). `answers`: the accuracy of
    the chains' stated answers with its chance rate (`answer_accuracy`), reported as given."""
    if not chains:
        raise ValueError("No chain to evaluate.")
    step_f1 = None
    if step_threshold is not None and chains[0].step_scores is not None:
        y, s = _known(np.concatenate([c.step_labels for c in chains]),
                      np.concatenate([c.step_scores for c in chains]))
        step_f1 = f1_at(y, s, step_threshold) if len(y) else None
    finals = [c.prefix_labels[-1] for c in chains if not np.isnan(c.prefix_labels[-1])]
    baselines = {name: _ranking(chains, lambda c, n=name: c.baselines_step.get(n),
                                lambda c, n=name: c.baselines_prefix[n])
                 for name in _present(chains)}
    metric_chains = [
        ChainScores(prefix_scores=c.prefix_scores, prefix_labels=c.prefix_labels.astype(int),
                    step_labels=None if np.isnan(c.step_labels).any()
                    else c.step_labels.astype(int), is_correct=c.is_correct)
        for c in chains if _fully_labelled(c)]
    return EvaluationReport(
        n_chains=len(chains), n_steps=int(sum(c.n_steps for c in chains)), threshold=threshold,
        probes=_ranking(chains, lambda c: c.step_scores, lambda c: c.prefix_scores),
        step_f1=step_f1,
        final_counts=FinalCounts(positive=int(sum(finals)),
                                 negative=int(len(finals) - sum(finals))),
        baselines=baselines,
        dynamic=dynamic_metrics(metric_chains, threshold) if metric_chains else None,
        residual_time=residual_time(metric_chains, threshold) if metric_chains else None,
        recovery=recovery_statistic(metric_chains, k=k),
        intervals=ranking_intervals(chains, n_resamples) if n_resamples > 0 else None,
        dynamic_at_0_5=(dynamic_metrics(metric_chains, PAPER_THRESHOLD) if metric_chains
                        else None),
        answers=answers)


def answer_accuracy(traces: Sequence[Trace], n_shuffles: int = 20,
                    seed: int = 0) -> AccuracyWithChance:
    """Accuracy of the traces' stated answers with the answered share and the shuffled-gold
    chance rate (`core.data.answers.accuracy_with_chance`; problems shuffled, not chains).
    A trace that records answered = false has no answer, whatever its `answer` field says."""
    answers = [None if _answered(t) is False else t.answer for t in traces]
    return accuracy_with_chance(answers, [t.gold for t in traces],
                                [t.problem_id or t.id for t in traces], n_shuffles, seed)


def _answered(trace: Trace) -> bool | None:
    value = getattr(trace, "answered", trace.extra.get("answered"))
    return value if isinstance(value, bool) else None


def scores_table(chains: Sequence[ScoredChain], threshold: float) -> pd.DataFrame:
    """One row per step: scores, alarm, labels (for tables, figures and downloads)."""
    rows = []
    for c in chains:
        for t in range(c.n_steps):
            rows.append({
                "trace_id": c.trace_id, "step": t,
                "step_score": None if c.step_scores is None else float(c.step_scores[t]),
                "prefix_score": float(c.prefix_scores[t]),
                "alarm": bool(c.prefix_scores[t] > threshold),
                "label": None if np.isnan(c.step_labels[t]) else int(c.step_labels[t]),
                "prefix_label": None if np.isnan(c.prefix_labels[t])
                else int(c.prefix_labels[t]),
            })
    return pd.DataFrame(rows)


def step_phases(step_scores: Sequence[float] | np.ndarray,
                prefix_scores: Sequence[float] | np.ndarray,
                step_threshold: float, threshold: float) -> list[str]:
    """The phase of every step from its step score c_step and prefix score c_prefix.

    step high = c_step > step_threshold, prefix high = c_prefix > threshold (strictly, as the
    alarm is); grounded = neither, spike = step only, deceptive stability = prefix only,
    collapse = both.
    """
    if len(step_scores) != len(prefix_scores):
        raise ValueError(f"{len(step_scores)} step scores but {len(prefix_scores)} prefix "
                         "scores; give one of each per step.")
    names = {(False, False): GROUNDED, (True, False): SPIKE, (False, True): DECEPTIVE,
             (True, True): COLLAPSE}
    return [names[(float(s) > step_threshold, float(p) > threshold)]
            for s, p in zip(step_scores, prefix_scores, strict=True)]


def ranking_inputs(chains: Sequence[ScoredChain],
                   level: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(labels, scores) over the steps with a known label, for the probes ("probe") and each
    baseline that has scores at this level, in BASELINE_NAMES order.

    level "step": step scores against step labels, every step; "prefix": prefix scores against
    prefix labels, every step; "final": the same at each chain's last step only. The inputs of
    the AUROCs in `evaluation_report` and of an ROC plot.
    """
    if level not in RANKING_LEVELS:
        raise ValueError(f"level must be one of {', '.join(RANKING_LEVELS)}, not {level!r}.")
    if not chains:
        return {}

    def gather(scores_of: Any) -> tuple[np.ndarray, np.ndarray] | None:
        if any(scores_of(c) is None for c in chains):
            return None
        if level == "step":
            labels = np.concatenate([c.step_labels for c in chains])
            scores = np.concatenate([scores_of(c) for c in chains])
        elif level == "prefix":
            labels = np.concatenate([c.prefix_labels for c in chains])
            scores = np.concatenate([scores_of(c) for c in chains])
        else:
            labels = np.array([c.prefix_labels[-1] for c in chains])
            scores = np.array([scores_of(c)[-1] for c in chains])
        return _known(labels, np.asarray(scores, dtype=np.float64))

    pick_step = level == "step"
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    probe = gather((lambda c: c.step_scores) if pick_step else (lambda c: c.prefix_scores))
    if probe is not None:
        out[PROBE_NAME] = probe
    for name in BASELINE_NAMES:
        found = gather((lambda c, n=name: c.baselines_step.get(n)) if pick_step
                       else (lambda c, n=name: c.baselines_prefix.get(n)))
        if found is not None:
            out[name] = found
    return out


@dataclass(frozen=True, eq=False)
class RocCurve:
    """One ROC curve: false- and true-positive rates (one point per distinct score) and AUROC."""

    fpr: np.ndarray
    tpr: np.ndarray
    auroc: float
    n: int
    n_pos: int


def roc_curves(chains: Sequence[ScoredChain], level: str) -> dict[str, RocCurve]:
    """ROC curves of the probes and the baselines at one level (see `ranking_inputs`); a scorer
    whose known labels hold a single class has no curve and is left out."""
    curves = {}
    for name, (labels, scores) in ranking_inputs(chains, level).items():
        area = auroc(labels, scores) if len(labels) else None
        if area is None:
            continue
        fpr, tpr, _ = roc_curve_points(labels, scores)
        curves[name] = RocCurve(fpr, tpr, area, int(len(labels)), int(labels.sum()))
    return curves


def scored_traces(traces: Sequence[Trace], chains: Sequence[ScoredChain], *, threshold: float,
                  layer: int, probe_name: str) -> list[Trace]:
    """The traces with their scores added under `extra["telltale_scores"]` (what `telltale score`
    writes): layer, threshold, probe, per-step "step" (None without a step probe) and "prefix"
    scores, and "alarm" = prefix > threshold. Traces without a scored chain are left out."""
    by_id = {c.trace_id: c for c in chains}
    out = []
    for trace in traces:
        chain = by_id.get(trace.id)
        if chain is None:
            continue
        scores = {
            "layer": layer, "threshold": threshold, "probe": probe_name,
            "step": None if chain.step_scores is None else [float(x) for x in chain.step_scores],
            "prefix": [float(x) for x in chain.prefix_scores],
            "alarm": [bool(x > threshold) for x in chain.prefix_scores],
        }
        out.append(replace(trace, extra={**trace.extra, "telltale_scores": scores}))
    return out


@dataclass(frozen=True)
class TokenScore:
    """One response token: the step it belongs to, its text and the step probe's score on it."""

    step: int
    text: str
    score: float


@torch.no_grad()
def token_scores(loaded: LoadedModel, bundle: ProbeBundle, trace: Trace,
                 max_tokens: int = 2048) -> list[TokenScore]:
    """The step probe applied to every response token on its own, for a heat map of where in a
    step the probe's evidence sits.

    score_i = sigmoid(w . h_i / ||h_i|| + b): h_i is token i's residual stream at the probe's
    layer (teacher-forced, as when the chain was scored), w and b the step probe. A token's text
    runs from the end of the token before it, so the texts of a step join into the step's text
    (with the whitespace before it). Steps past `max_tokens` are left out.
    """
    if bundle.step is None:
        raise ValueError("This probe file holds no step probe (it was trained without step "
                         "labels), so tokens cannot be scored.")
    bundle.check_model(loaded.spec, loaded.hidden_size)
    encoded = encode_trace(loaded.tokenizer, trace, max_tokens)
    prefix = prompt_text(loaded.tokenizer, trace)
    full = prefix + trace.response
    offsets = loaded.tokenizer(full, add_special_tokens=False,
                               return_offsets_mapping=True)["offset_mapping"]
    layer = bundle.meta.layer
    ids = torch.tensor([encoded.input_ids], device=loaded.input_device)
    with loaded.lock, record_residual(loaded.model, [layer],
                                      layer_path=loaded.layer_path) as record:
        loaded.model(input_ids=ids, use_cache=False)
    hidden = record.stacked(layer)[0].float().cpu().numpy()
    out = []
    for step, (start, end) in enumerate(encoded.step_spans):
        scores = bundle.step.scores(hidden[start:end])
        for position, score in zip(range(start, end), scores, strict=True):
            previous_end = int(offsets[position - 1][1]) if position > 0 else 0
            text_start = max(previous_end, len(prefix))
            text_end = max(int(offsets[position][1]), text_start)
            out.append(TokenScore(step, full[text_start:text_end], float(score)))
    return out
