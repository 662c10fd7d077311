"""What ships in sample_traces/ is what the README says: the labelled set split by problem, its
hand check, and a probe pair trained on exactly the shipped training file (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data.label_audit import read_audit, score_audit
from core.data.traces import read_traces
from core.diagnose.feature_store import traces_hash
from core.diagnose.probes import load_probe

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"
TRAIN, TEST = SAMPLES / "arith_train.jsonl", SAMPLES / "arith_test.jsonl"

pytestmark = pytest.mark.skipif(not TRAIN.is_file() or not TEST.is_file(),
                                reason="no labelled set yet (make sample-traces)")


def test_labelled_set_is_large_clean_and_split_by_problem() -> None:
    train, test = read_traces(TRAIN), read_traces(TEST)
    assert not train.issues and not test.issues
    assert len(train.traces) + len(test.traces) >= 1500
    problems = [{t.problem_id for t in load.traces} for load in (train, test)]
    assert problems[0].isdisjoint(problems[1])
    for trace in train.traces + test.traces:  # every step labelled, outcome known
        assert trace.is_correct is not None
        assert all(step.label in (0, 1) for step in trace.steps)
    meta = json.loads((SAMPLES / "arith_train.meta.json").read_text())
    assert meta["regenerate"].startswith("telltale make-traces")


def test_hand_check_of_the_labels_is_complete_and_from_the_training_file() -> None:
    items = read_audit(SAMPLES / "audits" / "arith_labels.jsonl")
    steps = {(t.id, i): s for t in read_traces(TRAIN).traces for i, s in enumerate(t.steps)}
    for item in items:  # each judged step is the training file's, with its rule label
        step = steps[(item.source, item.info["step_index"])]
        assert (step.text, step.label) == (item.text, item.machine["label"])
    score = score_audit(items)
    assert score.n_judged == len(items) >= 100 and score.n_unjudged == 0


def test_shipped_probe_was_trained_on_the_shipped_training_file() -> None:
    bundle = load_probe(SAMPLES / "probes" / "default")
    assert bundle.meta.model == "default" and bundle.meta.hidden_size == 576
    assert bundle.step is not None and bundle.tracker is not None
    assert bundle.meta.data_hash == traces_hash(read_traces(TRAIN).traces)
    validation = bundle.meta.metrics["validation"]
    assert 0 < bundle.meta.threshold < 1 and validation["step_auroc"] is not None
