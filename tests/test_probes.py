"""Probes, tracker training, probe files, layer choice and the evaluation report, on synthetic
captures with a planted hallucination direction (no model needed)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.diagnose.evaluation import evaluation_report, score_capture
from core.diagnose.feature_store import CaptureSet
from core.diagnose.metrics import RecoveryStat
from core.diagnose.probe_training import TrainConfig, split_by_problem, train_probes
from core.diagnose.probes import (
    ChainFeatures,
    LinearProbe,
    ProbeBundle,
    ProbeMeta,
    TrackerConfig,
    anchor_weights,
    fit_logistic,
    load_probe,
    save_probe,
    tracker_loss,
    train_tracker,
)
from core.diagnose.report import RANKING_KEYS, EvaluationReport, FinalCounts, Ranking

HIDDEN = 16


def _planted(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=HIDDEN)
    direction /= np.linalg.norm(direction)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, HIDDEN)) * 0.3 + np.outer(2 * y - 1, direction) * 1.5
    return x, y, direction


def test_fit_logistic_recovers_a_planted_direction() -> None:
    x, y, direction = _planted(2000)
    probe = fit_logistic(x, y)
    cosine = probe.weight @ direction / np.linalg.norm(probe.weight)
    assert cosine > 0.99
    assert ((probe.scores(x) > 0.5) == y).mean() > 0.97


def test_fit_logistic_matches_scikit_learn_and_says_it_converged() -> None:
    """The oracle: scikit-learn's L2 logistic regression with C = 1 / (n * l2) minimises the
    same objective (up to the tiny penalty on the bias, which scikit-learn leaves out)."""
    from sklearn.linear_model import LogisticRegression

    x, y, _ = _planted(600, seed=5)
    x = x + np.random.default_rng(6).normal(size=x.shape)  # overlapping classes: finite optimum
    l2 = 1e-2
    probe = fit_logistic(x, y, l2=l2)
    normalised = probe.inputs(x)
    oracle = LogisticRegression(C=1.0 / (len(y) * l2), tol=1e-10, max_iter=10_000).fit(
        normalised, y)
    np.testing.assert_allclose(probe.weight, oracle.coef_[0], rtol=2e-3, atol=2e-3)
    assert probe.fit is not None and probe.fit.converged
    assert probe.fit.n_iter < 100 and probe.fit.grad_max < 1e-4
    capped = fit_logistic(x, y, l2=1e-6, max_iter=2)
    assert capped.fit is not None and not capped.fit.converged and capped.fit.n_iter == 2


def test_fit_logistic_rejects_one_class() -> None:
    x, _, _ = _planted(20)
    with pytest.raises(ValueError, match="single class"):
        fit_logistic(x, np.zeros(20))


def test_anchor_weights_put_lambda_on_the_last_known_step() -> None:
    np.testing.assert_array_equal(anchor_weights(np.array([0.0, 1.0, 1.0]), 30.0), [1, 1, 30])
    np.testing.assert_array_equal(anchor_weights(np.array([np.nan, np.nan, 1.0]), 30.0),
                                  [0, 0, 30])


def test_sync_loss_punishes_only_a_missed_alarm() -> None:
    labels = torch.tensor([0.0, 0.0])
    zero_w = torch.zeros(2)  # anchor off: only L_sync remains
    step = torch.tensor([0.9, 0.2])
    # prefix 0.5 < step 0.9 at t=0 (missed alarm); prefix 0.5 > step 0.2 at t=1 (no penalty)
    logits = torch.logit(torch.tensor([0.5, 0.5], dtype=torch.float64)).float()
    loss = tracker_loss(logits, labels, zero_w, step, lambda_sync=1.0)
    expected = ((0.9 - 0.5) ** 2 * 0.9**2 + 0.0) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    high = torch.logit(torch.tensor([0.95, 0.95])).float()
    assert tracker_loss(high, labels, zero_w, step, 1.0).item() == pytest.approx(0.0, abs=1e-9)


def _chains(n_chains: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(features, step labels, prefix labels): the state turns bad at a random step."""
    rng = np.random.default_rng(seed)
    direction = np.zeros(HIDDEN)
    direction[0] = 1.0
    out = []
    for _ in range(n_chains):
        steps = int(rng.integers(3, 9))
        onset = int(rng.integers(0, steps + 3))  # past the end: a clean chain
        prefix = (np.arange(steps) >= onset).astype(float)
        step_labels = (np.arange(steps) == onset).astype(float)
        x = rng.normal(size=(steps, HIDDEN)) * 0.5 + np.outer(prefix, direction) * 2.0 + 0.2
        out.append((x, step_labels, prefix))
    return out


def test_tracker_learns_the_running_state() -> None:
    chains = [ChainFeatures(x, None, p) for x, _, p in _chains(120, 0)]
    tracker = train_tracker(chains, TrackerConfig(epochs=5))
    test = _chains(60, 1)
    scores = np.concatenate([tracker.scores(x) for x, _, _ in test])
    labels = np.concatenate([p for _, _, p in test])
    from core.diagnose.metrics import auroc

    assert auroc(labels.astype(int), scores) > 0.95


def test_tracker_with_step_input_takes_an_extra_column() -> None:
    data = _chains(40, 2)
    chains = [ChainFeatures(x, np.clip(s * 0.9 + 0.05, 0, 1), p) for x, s, p in data]
    tracker = train_tracker(chains, TrackerConfig(epochs=2, step_input=True))
    assert tracker.extra_inputs == 1 and tracker.weight.shape == (HIDDEN + 1,)
    with pytest.raises(ValueError, match="step score"):
        tracker.scores(data[0][0])


def _capture(n_chains: int = 150, signal_layer: int = 2) -> CaptureSet:
    """A capture with layers 1..3 where only `signal_layer` carries the planted direction."""
    data = _chains(n_chains, 3)
    rng = np.random.default_rng(4)
    rows, feats = [], {}
    for c, (x, step_y, prefix_y) in enumerate(data):
        for t in range(len(x)):
            words = f"step {t} adds {int(rng.integers(2, 40))}"  # the text says little
            if step_y[t] and rng.random() < 0.5:
                words += " oops"  # half the broken steps say so in words
            rows.append({"trace_id": f"t{c}", "problem_id": f"p{c // 3}", "step": t,
                         "label": step_y[t], "prefix_label": prefix_y[t],
                         "is_correct": bool(prefix_y[-1] == 0),
                         "mean_entropy": rng.random(), "mean_nll": rng.random(),
                         "max_nll": rng.random(), "min_prob": rng.random(), "text": words})
    stacked = np.concatenate([x for x, _, _ in data])
    step_feat = stacked.copy()
    step_feat[:, 1] += np.concatenate([s for _, s, _ in data]) * 3.0  # the step signal
    noise = rng.normal(size=stacked.shape)
    for layer in (1, 2, 3):
        good = layer == signal_layer
        for pooling in ("exp", "causal", "prefix_mean", "last"):
            base = step_feat if pooling in ("exp", "last") else stacked
            feats[(layer, pooling)] = (base if good else noise).astype(np.float32)
    manifest = {"model": "synthetic", "model_name": "synthetic", "hidden_size": HIDDEN,
                "layers": [1, 2, 3], "traces_hash": "abc"}
    return CaptureSet(index=pd.DataFrame(rows), features=feats, manifest=manifest)


def test_split_by_problem_never_shares_a_problem() -> None:
    capture = _capture(60)
    train, val = split_by_problem(capture.index, 0.25, seed=1)
    problems = capture.index.drop_duplicates("trace_id").set_index("trace_id")["problem_id"]
    assert set(problems[train]).isdisjoint(set(problems[val]))
    assert len(train) + len(val) == 60 and val


def test_sweep_picks_the_layer_with_the_signal_and_beats_noise() -> None:
    capture = _capture(150, signal_layer=2)
    config = TrainConfig(tracker=TrackerConfig(epochs=3))
    result = train_probes(capture, [1, 2, 3], config)
    assert result.bundle.meta.layer == 2
    sweep = result.sweep.set_index("layer")
    assert sweep.loc[2, "step_auroc"] > 0.9 > sweep.loc[1, "step_auroc"]
    assert 0 < result.bundle.meta.threshold < 1
    report = evaluation_report(score_capture(result.bundle, capture), result.bundle.meta.threshold)
    assert report.probes.step_auroc > report.baselines["mean_entropy"].step_auroc
    assert set(report.dynamic_dict()) == {"Snap_M", "Lag", "ICR", "Brake_S", "Ling_T",
                                          "Heal_3", "R_Score", "FP_Len"}
    assert result.report.probes == Ranking(**{k: result.sweep.set_index("layer").loc[2, k]
                                              for k in RANKING_KEYS})
    # the baselines trained beside the probes, and how every LBFGS fit ended
    bundle = result.bundle
    assert bundle.last_token_step is not None and bundle.last_token_prefix is not None
    assert bundle.text is not None and "last" in bundle.poolings
    assert set(report.baselines) == {"mean_entropy", "mean_nll", "max_nll", "min_prob",
                                     "global_mean_probe", "last_token", "text"}
    text = report.baselines["text"].step_auroc
    assert text is not None and 0.6 < text < 0.9  # "oops" marks half the broken steps
    assert set(bundle.meta.fits) == {"step", "tracker_start", "baseline_step",
                                     "baseline_prefix", "last_token_step", "last_token_prefix"}
    assert all(isinstance(fit["converged"], bool) for fit in bundle.meta.fits.values())
    no_extras = train_probes(capture, [2], TrainConfig(tracker=TrackerConfig(epochs=1),
                                                       last_token=False, text=None))
    assert no_extras.bundle.text is None and no_extras.bundle.last_token_step is None
    assert "last" not in no_extras.bundle.poolings


def test_layer_choice_ignores_a_final_auroc_resting_on_a_few_chains() -> None:
    from core.diagnose.probe_training import MIN_FINAL_CLASS, _score_for_choice

    ranking = Ranking(step_auroc=0.8, prefix_auroc=0.9, final_auroc=0.5)

    def report(positive: int, negative: int, probes: Ranking = ranking) -> EvaluationReport:
        return EvaluationReport(n_chains=1, n_steps=1, threshold=0.5, probes=probes,
                                step_f1=None, final_counts=FinalCounts(positive, negative),
                                baselines={}, dynamic=None, residual_time=None,
                                recovery=RecoveryStat(5, 0, 0, None, None, None))

    assert _score_for_choice(report(200, 2)) == pytest.approx(0.85)  # step, every-step prefix
    assert _score_for_choice(report(50, MIN_FINAL_CLASS)) == pytest.approx(0.65)  # step, final
    assert _score_for_choice(report(50, 50, Ranking())) == float("-inf")


def test_report_without_step_labels_gives_null_not_zero() -> None:
    capture = _capture(90)
    index = capture.index.copy()
    index["label"] = np.nan
    last = index.groupby("trace_id")["step"].transform("max") == index["step"]
    index.loc[~last, "prefix_label"] = np.nan  # outcome-only supervision
    outcome_only = CaptureSet(index=index, features=capture.features, manifest=capture.manifest)
    result = train_probes(outcome_only, [2], TrainConfig(tracker=TrackerConfig(epochs=2)))
    assert result.bundle.step is None
    report = evaluation_report(score_capture(result.bundle, outcome_only), 0.5)
    assert report.probes.step_auroc is None and report.probes.step_auprc is None
    assert report.probes.final_auroc is not None
    assert report.dynamic_dict()["Lag"] is None


def _bundle(hidden: int = HIDDEN) -> ProbeBundle:
    rng = np.random.default_rng(0)
    meta = ProbeMeta(model="m", model_name="m", hidden_size=hidden, layer=3, step_pooling="exp",
                     tracker_pooling="causal", baseline_pooling="prefix_mean", step_input=True,
                     threshold=0.4, step_threshold=0.6, data_hash="h",
                     metrics={"validation": {"step_auroc": 0.8}})
    return ProbeBundle(meta=meta, tracker=LinearProbe(rng.normal(size=hidden + 1), 0.1, 1),
                       step=LinearProbe(rng.normal(size=hidden), -0.2))


def test_probe_file_round_trip(tmp_path) -> None:
    bundle = _bundle()
    weights, meta = save_probe(tmp_path / "p", bundle)
    assert weights.name == "p.safetensors" and meta.name == "p.json"
    loaded = load_probe(tmp_path / "p.safetensors")
    assert loaded.meta == bundle.meta
    np.testing.assert_array_equal(loaded.tracker.weight, bundle.tracker.weight)
    assert loaded.tracker.extra_inputs == 1 and loaded.baseline_step is None
    x = np.random.default_rng(1).normal(size=(4, HIDDEN))
    a = bundle.score_chain({"exp": x, "causal": x, "prefix_mean": x})
    b = loaded.score_chain({"exp": x, "causal": x, "prefix_mean": x})
    np.testing.assert_allclose(a["prefix"], b["prefix"])


def test_last_token_probes_round_trip_and_score_the_last_pooling(tmp_path) -> None:
    from core.diagnose.probes import probe_from_bytes, probe_to_bytes

    rng = np.random.default_rng(2)
    bundle = replace(_bundle(), last_token_step=LinearProbe(rng.normal(size=HIDDEN), 0.3),
                     last_token_prefix=LinearProbe(rng.normal(size=HIDDEN), -0.1))
    back = probe_from_bytes(*probe_to_bytes(bundle))
    x, last = rng.normal(size=(3, HIDDEN)), rng.normal(size=(3, HIDDEN))
    scores = back.score_chain({"exp": x, "causal": x, "prefix_mean": x, "last": last})
    np.testing.assert_allclose(scores["last_token_step"], bundle.last_token_step.scores(last))
    np.testing.assert_allclose(scores["last_token_prefix"],
                               bundle.last_token_prefix.scores(last))
    assert back.poolings == ("exp", "causal", "prefix_mean", "last")


def test_a_version_1_probe_file_still_loads(tmp_path) -> None:
    """Files written before the last-token probes, the text baseline and the fit records."""
    from core.diagnose.probes import probe_from_bytes, probe_to_bytes

    weights, sidecar = probe_to_bytes(_bundle())
    old = json.loads(sidecar)
    old["probe_version"] = 1
    del old["fits"]
    back = probe_from_bytes(weights, json.dumps(old).encode())
    assert back.meta.fits == {} and back.text is None and back.last_token_step is None
    assert back.poolings == ("exp", "causal", "prefix_mean")
    newer = dict(old, probe_version=99)
    with pytest.raises(ValueError, match="newer"):
        probe_from_bytes(weights, json.dumps(newer).encode())


def test_probe_for_another_model_is_a_clear_error(tmp_path) -> None:
    bundle = _bundle()
    with pytest.raises(ValueError, match="hidden size 16.*hidden size 576"):
        bundle.check_model("default", 576)
    save_probe(tmp_path / "p", bundle)
    sidecar = json.loads((tmp_path / "p.json").read_text())
    sidecar["hidden_size"] = 32
    (tmp_path / "p.json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match=r"expected \(32,\)"):
        load_probe(tmp_path / "p")
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(ValueError, match="p.json is not valid"):
        load_probe(tmp_path / "p")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_probe(tmp_path / "missing")


def test_probe_bytes_round_trip_and_match_the_files(tmp_path: Path) -> None:
    from core.diagnose.probes import probe_from_bytes, probe_to_bytes

    bundle = _bundle_for_bytes()
    weights, sidecar = probe_to_bytes(bundle)
    weights_path, sidecar_path = save_probe(tmp_path / "p", bundle)
    assert weights_path.read_bytes() == weights and sidecar_path.read_bytes() == sidecar
    back = probe_from_bytes(weights, sidecar)
    assert back.meta == bundle.meta
    np.testing.assert_array_equal(back.tracker.weight, bundle.tracker.weight)
    assert back.tracker.bias == bundle.tracker.bias


@pytest.mark.parametrize("change, message", [
    (lambda w, s: (w, b"[1, 2]"), "must be a JSON object"),
    (lambda w, s: (w, b"{not json"), "not valid JSON"),
    (lambda w, s: (b"garbage", s), "not a Telltale probe's weights file"),
    (lambda w, s: (w, s.replace(b'"hidden_size": 4', b'"hidden_size": "4"')), "hidden_size"),
    (lambda w, s: (w, s.replace(b'"threshold": 0.5', b'"threshold": 7')), "threshold"),
])
def test_probe_from_bytes_refuses_what_is_not_a_probe(change, message) -> None:
    from core.diagnose.probes import probe_from_bytes, probe_to_bytes

    weights, sidecar = change(*probe_to_bytes(_bundle_for_bytes()))
    with pytest.raises(ValueError, match=message):
        probe_from_bytes(weights, sidecar, name="upload")


def test_probe_from_bytes_refuses_non_finite_weights() -> None:
    from core.diagnose.probes import probe_from_bytes, probe_to_bytes

    bundle = _bundle_for_bytes()
    broken = ProbeBundle(meta=bundle.meta, tracker=LinearProbe(np.full(4, np.nan), 0.0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        probe_from_bytes(*probe_to_bytes(broken))


def _bundle_for_bytes() -> ProbeBundle:
    meta = ProbeMeta(model="m", model_name="m", hidden_size=4, layer=1, step_pooling="exp",
                     tracker_pooling="causal", baseline_pooling="prefix_mean", step_input=False,
                     threshold=0.5, step_threshold=0.5, data_hash="x")
    return ProbeBundle(meta=meta, tracker=LinearProbe(np.arange(4.0), 0.25),
                       step=LinearProbe(np.ones(4), -1.0))
