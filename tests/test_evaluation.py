"""What the Traces page shows from a scored file, checked against hand-computed answers: step
phases, ROC inputs and curves, scores added to traces, and per-token step-probe scores on a tiny
random model (the oracle: the model's own hidden states)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.data.traces import trace_from_dict
from core.diagnose.evaluation import (
    COLLAPSE,
    DECEPTIVE,
    GROUNDED,
    PROBE_NAME,
    SPIKE,
    ScoredChain,
    evaluation_report,
    ranking_inputs,
    ranking_intervals,
    roc_curves,
    scored_traces,
    step_phases,
    token_scores,
)
from core.diagnose.probes import LinearProbe, ProbeBundle, ProbeMeta
from core.diagnose.report import FinalCounts
from core.runtime.models import wrap_model
from tests.tiny_models import HIDDEN, tiny_model, tiny_tokenizer

CHAT = ("{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
        "{% if add_generation_prompt %}w5 {% endif %}")
NAN = float("nan")


def chain(tid: str, step: list[float] | None, prefix: list[float], step_labels: list[float],
          prefix_labels: list[float], is_correct: bool | None = None,
          entropy: list[float] | None = None) -> ScoredChain:
    base_step = {} if entropy is None else {"mean_entropy": np.array(entropy)}
    base_prefix = {} if entropy is None else {"mean_entropy": np.cumsum(entropy)}
    return ScoredChain(tid, "p-" + tid, None if step is None else np.array(step),
                       np.array(prefix), np.array(step_labels, dtype=float),
                       np.array(prefix_labels, dtype=float), is_correct, base_step, base_prefix)


def test_step_phases_name_each_combination() -> None:
    phases = step_phases([0.1, 0.9, 0.2, 0.8], [0.2, 0.3, 0.7, 0.9], step_threshold=0.5,
                         threshold=0.6)
    assert phases == [GROUNDED, SPIKE, DECEPTIVE, COLLAPSE]


def test_step_phases_thresholds_are_strict_and_separate() -> None:
    # exactly at a threshold is not high (the alarm is c > threshold)
    assert step_phases([0.5], [0.6], step_threshold=0.5, threshold=0.6) == [GROUNDED]
    # a step score of 0.55 is high against 0.5 but would not be against the prefix's 0.6
    assert step_phases([0.55], [0.55], step_threshold=0.5, threshold=0.6) == [SPIKE]
    assert step_phases([], [], 0.5, 0.5) == []
    with pytest.raises(ValueError, match="one of each per step"):
        step_phases([0.1, 0.2], [0.3], 0.5, 0.5)


def two_chains() -> list[ScoredChain]:
    return [
        chain("a", [0.1, 0.8, 0.3], [0.2, 0.7, 0.9], [0, 1, NAN], [0, 1, 1], False,
              entropy=[1.0, 2.0, 3.0]),
        chain("b", [0.4, 0.2], [0.1, 0.3], [0, 0], [0, 0], True, entropy=[0.5, 0.1]),
    ]


def test_intervals_bracket_a_perfect_probe_and_its_lead() -> None:
    rng = np.random.default_rng(0)
    chains = []
    for i in range(30):  # the probe ranks perfectly, entropy is noise
        labels = [0, int(i % 2), 1]
        chains.append(chain(f"c{i}", [0.1 + 0.8 * lab for lab in labels],
                            [0.2, 0.3, 0.9 if i % 3 else 0.05], labels,
                            [0, 0, 1 if i % 3 else 0], None, entropy=list(rng.random(3))))
    found = ranking_intervals(chains, n_resamples=200)
    assert found["probe"] == {"step_auroc": [1.0, 1.0], "final_auroc": [1.0, 1.0]}
    low, high = found["baselines"]["mean_entropy"]["step_auroc"]
    assert low < 0.5 < high  # noise straddles chance
    lead = found["lead"]["mean_entropy"]
    assert lead["step_auroc"][0] > 0 and lead["final_auroc"][0] > 0
    report = evaluation_report(chains, n_resamples=50)
    assert report.final_counts == FinalCounts(positive=20, negative=10)
    assert report.intervals is not None and evaluation_report(chains).intervals is None
    as_json = report.as_dict()
    assert as_json["final_counts"] == {"positive": 20, "negative": 10}
    assert "intervals" in as_json and "intervals" not in evaluation_report(chains).as_dict()


def test_ranking_inputs_keep_known_labels_per_level() -> None:
    chains = two_chains()
    step = ranking_inputs(chains, "step")
    assert list(step) == [PROBE_NAME, "mean_entropy"]
    labels, scores = step[PROBE_NAME]
    assert labels.tolist() == [0, 1, 0, 0]  # chain a's third step has no label
    assert scores.tolist() == [0.1, 0.8, 0.4, 0.2]
    assert step["mean_entropy"][1].tolist() == [1.0, 2.0, 0.5, 0.1]
    labels, scores = ranking_inputs(chains, "prefix")[PROBE_NAME]
    assert labels.tolist() == [0, 1, 1, 0, 0] and scores.tolist() == [0.2, 0.7, 0.9, 0.1, 0.3]
    final = ranking_inputs(chains, "final")
    assert final[PROBE_NAME][0].tolist() == [1, 0]
    assert final[PROBE_NAME][1].tolist() == [0.9, 0.3]
    assert final["mean_entropy"][1].tolist() == [6.0, 0.6]  # the running sum's last value
    with pytest.raises(ValueError, match="level must be one of"):
        ranking_inputs(chains, "chain")


def test_ranking_inputs_without_step_probe_have_no_probe_row_at_step_level() -> None:
    chains = [chain("a", None, [0.2, 0.7], [0, 1], [0, 1])]
    assert PROBE_NAME not in ranking_inputs(chains, "step")
    assert PROBE_NAME in ranking_inputs(chains, "prefix")


def test_roc_curves_match_the_report_and_hand_counts() -> None:
    chains = two_chains()
    curves = roc_curves(chains, "step")
    probe = curves[PROBE_NAME]
    # probe step scores: positive 0.8 vs negatives 0.1, 0.4, 0.2 -> ranked first: AUROC 1
    assert probe.auroc == 1.0 and probe.n == 4 and probe.n_pos == 1
    assert probe.fpr.tolist() == [0.0, 0.0, 1 / 3, 2 / 3, 1.0]
    assert probe.tpr.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    report = evaluation_report(chains, threshold=0.5)
    assert curves[PROBE_NAME].auroc == report.probes.step_auroc
    assert curves["mean_entropy"].auroc == report.baselines["mean_entropy"].step_auroc
    assert roc_curves(chains, "final")[PROBE_NAME].auroc == report.probes.final_auroc


def test_roc_curves_leave_out_a_single_class() -> None:
    chains = [chain("a", [0.1, 0.2], [0.1, 0.2], [0, 0], [0, 0])]
    assert roc_curves(chains, "step") == {}
    assert roc_curves([], "step") == {}


def test_scored_traces_add_scores_and_alarms() -> None:
    traces = [trace_from_dict({"id": i, "prompt": "q", "steps": ["x", "y", "z"][:n],
                               "tag": "kept"})
              for i, n in (("a", 3), ("b", 2), ("c", 1))]
    out = scored_traces(traces, two_chains(), threshold=0.5, layer=7, probe_name="p.safetensors")
    assert [t.id for t in out] == ["a", "b"]  # chain c was not scored
    scores = out[0].extra["telltale_scores"]
    assert scores == {"layer": 7, "threshold": 0.5, "probe": "p.safetensors",
                      "step": [0.1, 0.8, 0.3], "prefix": [0.2, 0.7, 0.9],
                      "alarm": [False, True, True]}
    assert out[0].extra["tag"] == "kept" and out[0].steps == traces[0].steps
    assert "telltale_scores" not in traces[0].extra  # the input is not changed


def tiny_bundle(layer: int, seed: int = 3) -> ProbeBundle:
    rng = np.random.default_rng(seed)
    meta = ProbeMeta(model="tiny", model_name="tiny", hidden_size=HIDDEN, layer=layer,
                     step_pooling="exp", tracker_pooling="causal",
                     baseline_pooling="prefix_mean", step_input=False, threshold=0.5,
                     step_threshold=0.5, data_hash="h")
    return ProbeBundle(meta=meta, tracker=LinearProbe(rng.normal(size=HIDDEN), 0.0),
                       step=LinearProbe(rng.normal(size=HIDDEN) * 3, 0.2))


def test_token_scores_apply_the_step_probe_to_each_tokens_hidden_state() -> None:
    loaded = wrap_model(tiny_model("llama"), tiny_tokenizer(CHAT), name="tiny")
    trace = trace_from_dict({"id": "t", "prompt": "w10 w11",
                             "steps": ["w20 w21 w22", "w30", "w40 w41"]})
    bundle = tiny_bundle(layer=1)
    tokens = token_scores(loaded, bundle, trace)
    assert [t.step for t in tokens] == [0, 0, 0, 1, 2, 2]
    assert "".join(t.text for t in tokens) == trace.response  # texts join back, whitespace kept
    assert [t.text for t in tokens] == ["w20", " w21", " w22", "\nw30", "\nw40", " w41"]
    # oracle: hidden_states[layer + 1] is the output of decoder block `layer`
    ids = loaded.tokenizer("w3 w10 w11 w4 w5 " + trace.response,
                           add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    hidden = out.hidden_states[2][0, -6:].double().numpy()
    unit = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
    assert bundle.step is not None
    expected = 1 / (1 + np.exp(-(unit @ bundle.step.weight + bundle.step.bias)))
    np.testing.assert_allclose([t.score for t in tokens], expected, rtol=1e-4)


def test_token_scores_need_a_step_probe_and_the_right_model() -> None:
    loaded = wrap_model(tiny_model("llama"), tiny_tokenizer(CHAT), name="tiny")
    trace = trace_from_dict({"id": "t", "prompt": "w10", "steps": ["w20"]})
    bundle = tiny_bundle(layer=1)
    from dataclasses import replace

    with pytest.raises(ValueError, match="no step probe"):
        token_scores(loaded, replace(bundle, step=None), trace)
    other = replace(bundle, meta=replace(bundle.meta, hidden_size=64))
    with pytest.raises(ValueError, match="hidden size 64"):
        token_scores(loaded, other, trace)


def test_report_as_dict_keeps_the_json_keys_of_evaluate() -> None:
    report = evaluation_report(two_chains(), threshold=0.5, step_threshold=0.5).as_dict()
    assert list(report) == ["n_chains", "n_steps", "threshold", "step_auroc", "step_auprc",
                            "prefix_auroc", "final_auroc", "step_f1", "final_counts",
                            "baselines", "dynamic", "dynamic_at_0_5", "residual_time",
                            "recovery", "answered", "accuracy", "chance_accuracy", "answers"]
    assert report["answered"] is None and report["chance_accuracy"] is None  # not computed
    assert set(report["baselines"]["mean_entropy"]) == {"step_auroc", "step_auprc",
                                                        "prefix_auroc", "final_auroc"}
    assert set(report["recovery"]) == {"k", "n_chains", "n_correct", "share_correct", "ci_low",
                                       "ci_high"}
    assert json.loads(json.dumps(report)) == report


def _paired_chains(n_problems: int, seed: int = 0) -> list[ScoredChain]:
    """Two chains per problem (as in the read chains: one ends right, one wrong), with a noisy
    probe and a noisy text baseline."""
    rng = np.random.default_rng(seed)
    chains = []
    for p in range(n_problems):
        for wrong in (0, 1):
            labels = [0.0, float(wrong), float(wrong)]
            step = np.clip(np.array(labels) * 0.3 + rng.random(3) * 0.7, 0, 1)
            prefix = np.clip(np.array(labels) * 0.2 + rng.random(3) * 0.8, 0, 1)
            text = rng.random(3)
            chains.append(ScoredChain(f"p{p}-c{wrong}", f"p{p}", step, prefix,
                                      np.array(labels), np.array(labels), not wrong,
                                      {"text": text}, {"text": np.cumsum(text) / 3}))
    return chains


def test_intervals_resample_problems_with_all_their_chains() -> None:
    """The oracle: a naive bootstrap drawing problems with the same generator, each drawn
    problem bringing both its chains, AUROC by scikit-learn, percentiles by numpy."""
    from sklearn.metrics import roc_auc_score

    chains = _paired_chains(25)
    found = ranking_intervals(chains, n_resamples=300, seed=4)
    assert found["unit"] == "problem" and found["n_problems"] == 25
    rng = np.random.default_rng(4)
    finals, leads = [], []
    for _ in range(300):
        drawn = [c for p in rng.integers(0, 25, 25) for c in chains[2 * p: 2 * p + 2]]
        y = [c.prefix_labels[-1] for c in drawn]
        mine = roc_auc_score(y, [c.prefix_scores[-1] for c in drawn])
        theirs = roc_auc_score(y, [c.baselines_prefix["text"][-1] for c in drawn])
        finals.append(mine)
        leads.append(mine - theirs)
    np.testing.assert_allclose(found["probe"]["final_auroc"], np.percentile(finals, [2.5, 97.5]))
    np.testing.assert_allclose(found["lead"]["text"]["final_auroc"],
                               np.percentile(leads, [2.5, 97.5]))


def test_report_gives_dynamics_at_the_threshold_and_at_0_5_and_the_answers() -> None:
    from core.data.answers import accuracy_with_chance
    from core.diagnose.metrics import ChainScores, dynamic_metrics

    chains = _paired_chains(10, seed=1)
    answers = accuracy_with_chance(["3", None, "4", "9"], ["3", "3", "4", "4"],
                                   ["a", "a", "b", "b"], n_shuffles=5)
    report = evaluation_report(chains, threshold=0.8, answers=answers)
    plain = [ChainScores(c.prefix_scores, c.prefix_labels.astype(int),
                         c.step_labels.astype(int), c.is_correct) for c in chains]
    assert report.dynamic == dynamic_metrics(plain, 0.8)
    assert report.dynamic_at_0_5 == dynamic_metrics(plain, 0.5)
    assert report.dynamic != report.dynamic_at_0_5
    out = report.as_dict()
    assert out["dynamic_at_0_5"] == dynamic_metrics(plain, 0.5).as_dict()
    assert (out["answered"], out["accuracy"]) == (0.75, 0.5)
    assert out["chance_accuracy"] == answers.chance_mean and out["answers"]["n_shuffles"] == 5
    assert set(out["baselines"]) == {"text"}


def test_answer_accuracy_counts_an_unanswered_trace_as_wrong() -> None:
    from core.data.answers import accuracy_with_chance
    from core.diagnose.evaluation import answer_accuracy

    traces = [trace_from_dict({"id": f"t{i}", "problem_id": f"p{i // 2}", "prompt": "q",
                               "steps": ["x"], "answer": answer, "gold": gold,
                               "answered": answered})
              for i, (answer, gold, answered) in enumerate(
                  [("7", "7", True), ("7", "7", False), ("5", "9", True), (None, "9", None)])]
    found = answer_accuracy(traces, n_shuffles=4, seed=2)
    assert (found.n, found.n_answered, found.n_correct) == (4, 2, 1)
    assert found == accuracy_with_chance(["7", None, "5", None], ["7", "7", "9", "9"],
                                         ["p0", "p0", "p1", "p1"], 4, 2)


def test_a_traces_system_message_is_part_of_the_teacher_forced_prompt() -> None:
    from core.diagnose.encode import encode_trace

    tokenizer = tiny_tokenizer(CHAT)
    plain = trace_from_dict({"id": "t", "prompt": "w10", "steps": ["w20 w21"]})
    with_system = trace_from_dict({"id": "t", "prompt": "w10", "steps": ["w20 w21"],
                                   "system": "w30 w31"})
    ids = tokenizer("w3 w30 w31 w4 w3 w10 w4 w5 w20 w21", add_special_tokens=False)["input_ids"]
    encoded = encode_trace(tokenizer, with_system)
    assert list(encoded.input_ids) == ids and encoded.step_spans == ((8, 10),)
    assert len(encode_trace(tokenizer, plain).input_ids) == 6
