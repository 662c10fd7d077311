"""What ships in sample_traces/ is what the README says: the two labelled sets (the model's own
chains and the chains it reads) split by problem, the hand check, and a probe pair for each
trained on exactly its shipped training file (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.data.answers import AnswerFormat, answers_match, read_answer
from core.data.label_audit import read_audit, score_audit
from core.data.read_chains import make_read_chains
from core.data.traces import read_traces
from core.diagnose.feature_store import traces_hash
from core.diagnose.probe_training import MIN_FINAL_CLASS, TrainConfig, split_by_problem
from core.diagnose.probes import ProbeBundle, load_probe

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"
TRAIN, TEST = SAMPLES / "arith_train.jsonl", SAMPLES / "arith_test.jsonl"
READ_TRAIN, READ_TEST = SAMPLES / "arith_read_train.jsonl", SAMPLES / "arith_read_test.jsonl"

own_chains = pytest.mark.skipif(not TRAIN.is_file() or not TEST.is_file(),
                                reason="no labelled set yet (make sample-traces)")
read_chains = pytest.mark.skipif(not READ_TRAIN.is_file() or not READ_TEST.is_file(),
                                 reason="no read chains yet (telltale make-read-chains)")


@own_chains
def test_labelled_set_is_large_clean_and_split_by_problem() -> None:
    train, test = read_traces(TRAIN), read_traces(TEST)
    assert not train.issues and not test.issues
    assert len(train.traces) + len(test.traces) >= 1500
    problems = [{t.problem_id for t in load.traces} for load in (train, test)]
    assert problems[0].isdisjoint(problems[1])
    for trace in train.traces + test.traces:  # every step labelled, outcome known
        assert trace.is_correct is not None and trace.answered is not None
        assert all(step.label in (0, 1) for step in trace.steps)
        # the raw reply, read strictly (numeric golds); the paper's terminal consistency
        answer = AnswerFormat(numeric=True).read(trace.response)
        assert trace.answer == (answer.text if answer else None)
        assert trace.answered == (answer is not None)
        assert trace.prefix_labels[-1] == int(not trace.is_correct)
    meta = json.loads((SAMPLES / "arith_train.meta.json").read_text())
    assert meta["regenerate"].startswith("telltale make-traces")
    assert meta["settings"]["prefix_labels"] == "paper"


@own_chains
def test_hand_checks_are_complete_and_from_the_training_file() -> None:
    traces = {t.id: t for t in read_traces(TRAIN).traces}
    steps = read_audit(SAMPLES / "audits" / "arith_steps.jsonl")
    for item in steps:  # each judged step is the training file's, with its rule label
        step = traces[item.source].steps[item.info["step_index"]]
        assert (step.text, step.label) == (item.text, item.machine["label"])
    answers = read_audit(SAMPLES / "audits" / "arith_answers.jsonl")
    for item in answers:  # each judged reply is the training file's, with its strict answer
        trace = traces[item.source]
        assert item.text == trace.response and item.machine == {
            "answered": trace.answered, "answer": trace.answer, "is_correct": trace.is_correct}
    for items in (steps, answers):
        score = score_audit(items)
        assert score.n_judged == len(items) >= 100 and score.n_unjudged == 0
    # the hand check of the set before it was rebuilt, kept (first audit format, converted)
    old = read_audit(SAMPLES / "audits" / "arith_labels.jsonl")
    assert len(old) == 100 and score_audit(old).field("label").n_agree == 96


def check_probe_pair(name: str, train_file: Path) -> ProbeBundle:
    """A shipped probe pair: trained on exactly `train_file` (its hash), with every part and
    baseline, its layer and thresholds chosen on validation chains split off that file by
    problem (never the test file), and how each fit ended recorded."""
    bundle = load_probe(SAMPLES / "probes" / name)
    meta = bundle.meta
    traces = read_traces(train_file).traces
    assert meta.model == "default" and meta.hidden_size == 576
    assert meta.data_hash == traces_hash(traces)
    assert bundle.step is not None and bundle.text is not None
    assert None not in (bundle.baseline_step, bundle.baseline_prefix, bundle.last_token_step,
                        bundle.last_token_prefix)
    # validation: chains of the training file, held out by problem
    metrics = meta.metrics
    index = pd.DataFrame({"trace_id": [t.id for t in traces],
                          "problem_id": [t.problem_id for t in traces]})
    train_ids, val_ids = split_by_problem(index, TrainConfig().val_share,
                                          int(meta.tracker["seed"]))
    assert (metrics["n_train_chains"], metrics["n_val_chains"]) == (len(train_ids), len(val_ids))
    validation = metrics["validation"]
    assert validation["n_chains"] == len(val_ids)
    assert validation["threshold"] == meta.threshold and 0 < meta.threshold < 1
    assert 0 < meta.step_threshold < 1 and validation["step_auroc"] is not None
    assert {"text", "last_token", "global_mean_probe"} <= set(validation["baselines"])
    # the layer: the best of the sweep by the validation ranking probe_training uses
    sweep = metrics["sweep"]
    assert len(sweep) > 1
    counts = validation["final_counts"]
    enough = min(counts["positive"], counts["negative"]) >= MIN_FINAL_CLASS
    ranked = [float(np.mean([row["step_auroc"],
                             row["final_auroc"] if enough else row["prefix_auroc"]]))
              for row in sweep]
    best = sweep[int(np.argmax(ranked))]
    assert best["layer"] == meta.layer and best["threshold"] == meta.threshold
    # how every LBFGS fit ended, and the text classifiers' fits
    assert set(meta.fits) == {"step", "tracker_start", "baseline_step", "baseline_prefix",
                              "last_token_step", "last_token_prefix"}
    for fit in meta.fits.values():
        assert isinstance(fit["converged"], bool) and 0 < fit["n_iter"] <= 100
    for level in (bundle.text.step, bundle.text.prefix):
        assert level is not None and isinstance(level.converged, bool) and level.n_iter > 0
    return bundle


@own_chains
def test_default_probe_was_trained_on_the_own_training_file() -> None:
    check_probe_pair("default", TRAIN)


@read_chains
def test_read_chains_are_split_by_problem_and_hold_50_right_answered_chains() -> None:
    train, test = read_traces(READ_TRAIN), read_traces(READ_TEST)
    assert not train.issues and not test.issues
    assert {t.problem_id for t in train.traces}.isdisjoint({t.problem_id for t in test.traces})
    for trace in train.traces + test.traces:
        answer = read_answer(trace.response)  # the strict reader finds the answer line
        assert answer is not None and trace.answered is True and trace.answer == answer.text
        assert trace.is_correct == answers_match(answer.text, trace.gold)
        assert [s.prefix_label for s in trace.steps][-1] == int(not trace.is_correct)
    assert sum(bool(t.answered and t.is_correct) for t in test.traces) >= 50
    kinds = {t.extra["construction"]["kind"] for t in test.traces}
    assert kinds == {"clean", "corrected", "carried"}  # recoveries exist in the test file


@read_chains
def test_read_chains_are_what_their_command_writes(tmp_path: Path) -> None:
    meta = json.loads((SAMPLES / "arith_read_test.meta.json").read_text())
    arguments = meta["arguments"]
    assert meta["regenerate"].startswith("telltale make-read-chains --out "
                                         "sample_traces/arith_read.jsonl")
    make_read_chains(tmp_path / "arith_read.jsonl", n_problems=arguments["n_problems"],
                     seed=arguments["seed"], test_share=arguments["test_share"],
                     min_ops=arguments["min_ops"], max_ops=arguments["max_ops"],
                     max_number=arguments["max_number"])
    for name in ("arith_read_train.jsonl", "arith_read_test.jsonl"):
        assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes(), name


@read_chains
def test_reader_probe_was_trained_on_the_read_training_file() -> None:
    check_probe_pair("reader", READ_TRAIN)
