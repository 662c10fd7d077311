"""What ships in sample_traces/ is what the README says: the two labelled sets (the model's own
chains and the chains it reads) split by problem, the hand check, and a probe pair for each
trained on exactly its shipped training file (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data.answers import AnswerFormat, answers_match, read_answer
from core.data.label_audit import read_audit, score_audit
from core.data.read_chains import make_read_chains
from core.data.traces import read_traces
from core.diagnose.feature_store import traces_hash
from core.diagnose.probes import load_probe, probe_paths

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


@own_chains
def test_shipped_probe_was_trained_on_the_shipped_training_file() -> None:
    bundle = load_probe(SAMPLES / "probes" / "default")
    assert bundle.meta.model == "default" and bundle.meta.hidden_size == 576
    assert bundle.step is not None and bundle.tracker is not None
    assert bundle.meta.data_hash == traces_hash(read_traces(TRAIN).traces)
    validation = bundle.meta.metrics["validation"]
    assert 0 < bundle.meta.threshold < 1 and validation["step_auroc"] is not None


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
    assert sum(bool(t.is_correct) for t in test.traces) >= 50
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
@pytest.mark.skipif(not probe_paths(SAMPLES / "probes" / "reader")[1].is_file(),
                    reason="no reader probe yet")
def test_reader_probe_was_trained_on_the_read_training_file_with_every_baseline() -> None:
    bundle = load_probe(SAMPLES / "probes" / "reader")
    assert bundle.meta.model == "default" and bundle.meta.hidden_size == 576
    assert bundle.meta.data_hash == traces_hash(read_traces(READ_TRAIN).traces)
    assert bundle.text is not None and bundle.last_token_step is not None
    assert bundle.meta.fits and all(isinstance(f["converged"], bool)
                                    for f in bundle.meta.fits.values())
    validation = bundle.meta.metrics["validation"]
    assert {"text", "last_token", "global_mean_probe"} <= set(validation["baselines"])
