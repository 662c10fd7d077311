"""Importers: each dataset's records become traces with the documented labels; bad records
become issues naming line and field; unknown shapes are a clear error; imports round-trip."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from core.data.importers import FORMATS, detect_format, import_traces
from core.data.traces import TraceFileError, read_traces, write_traces


def jsonl(*records: Any) -> bytes:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()


def json_array(*records: Any) -> bytes:
    return json.dumps(list(records), ensure_ascii=False, indent=4).encode()


# Shaped after dataset/generate.py + merge.py inject (snowcatsmoking/StreamingHallucination).
CHAINED = {
    "id": 0, "original_id": "2hop__13548_13529", "subset": "MuSiQue",
    "model": "Llama-3.1-8B-Instruct", "context": "Paris is the capital of France.",
    "query": "What is the capital of France?",
    "response": "1. The context names the capital of France.\n2. So the capital is Lyon.\n"
                "Final Answer: Lyon",
    "steps": [
        {"step_id": 0, "text": "1. The context names the capital of France.",
         "step_hallucination": False, "cumulative_hallucination": False},
        {"step_id": 1, "text": "2. So the capital is Lyon.",
         "step_hallucination": True, "cumulative_hallucination": True}],
    "answer": "Lyon", "ground_truth": "Paris", "is_correct": False}

# Shaped after the annotated line in openai/prm800k README.md (phase 2, stopped at an error).
PRM_PHASE2 = {
    "labeler": "340d89bc", "timestamp": "2023-01-22T04:34:27", "generation": 9,
    "is_quality_control_question": False, "is_initial_screening_question": False,
    "question": {"problem": "What is the greatest common factor of $20 !$ and $200,\\!000$?",
                 "ground_truth_answer": "40,\\!000",
                 "pre_generated_steps": ["I want to find ...", "..."],
                 "pre_generated_answer": "320,000"},
    "label": {"steps": [
        {"completions": [{"text": "I want to find the largest common divisor.", "rating": 0,
                          "flagged": None}], "human_completion": None, "chosen_completion": 0},
        {"completions": [{"text": "Factor both numbers into primes.", "rating": 1,
                          "flagged": None}], "human_completion": None, "chosen_completion": 0},
        {"completions": [{"text": "I know that $200,\\!000 = 2^9\\cdot 5^4$.", "rating": -1,
                          "flagged": None},
                         {"text": "To factor $20 !$, list its primes.", "rating": 0,
                          "flagged": False}],
         "human_completion": None, "chosen_completion": None}],
        "total_time": 278270, "finish_reason": "found_error"}}

# Phase 1: a human-written step where every completion was rated -1, then a correct answer.
PRM_PHASE1 = {
    "labeler": "e90a38f3", "timestamp": "2022-07-17T16:56:51", "generation": None,
    "is_quality_control_question": False, "is_initial_screening_question": False,
    "question": {"problem": "What is 3 times 4?", "ground_truth_answer": "12"},
    "label": {"steps": [
        {"completions": [{"text": "3 times 4 is 7.", "rating": -1, "flagged": False}],
         "human_completion": {"text": "3 times 4 is 12.", "rating": None, "source": "human",
                              "flagged": False, "corrected_rating": None},
         "chosen_completion": None},
        {"completions": [{"text": "So the answer is 12.\n\n# Answer\n\n12", "rating": 1,
                          "flagged": False}], "human_completion": None, "chosen_completion": 0}],
        "total_time": 1000, "finish_reason": "solution"}}

# Shaped after the example in QwenLM/ProcessBench README (dataset Qwen/ProcessBench).
PROCESSBENCH = {
    "id": "gsm8k-0", "generator": "Qwen2-7B-Instruct",
    "problem": "Sue had 42 flamingos and got 18 more. How many does she have?",
    "steps": ["She starts with 42 flamingos.", "42 + 18 = 50.", "So she has 50.",
              "The answer is 50."],
    "final_answer_correct": False, "label": 1}

# A line of openai/grade-school-math data/test.jsonl.
GSM8K = {
    "question": "Janet's ducks lay 16 eggs per day. She eats three and bakes with four. She "
                "sells the rest for $2 each. How much does she make every day?",
    "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
              "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n#### 18"}

NATIVE = {"id": "n1", "prompt": "2 + 2?", "steps": [{"text": "2 + 2 = 4.", "label": 0}]}

EXAMPLES = {"native": NATIVE, "chained": CHAINED, "prm800k": PRM_PHASE2,
            "processbench": PROCESSBENCH, "gsm8k": GSM8K}


def changed(record: dict[str, Any], path: list[str | int], value: Any) -> dict[str, Any]:
    """A deep copy of `record` with the field at `path` set to `value`."""
    result = copy.deepcopy(record)
    target: Any = result
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return result


# --- detection ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_each_format_is_detected_from_its_first_record(name: str) -> None:
    assert detect_format(EXAMPLES[name]) == name
    load = import_traces(jsonl(EXAMPLES[name]))
    assert len(load.traces) == 1 and load.issues == []
    assert load.traces[0].source == (None if name == "native" else name)


def test_raw_chained_entries_without_labels_are_still_chained() -> None:
    raw = {"id": 3, "query": "q?", "steps": [{"step_id": 0, "text": "First step."}]}
    assert detect_format(raw) == "chained"


def test_an_unknown_shape_is_a_clear_error_naming_keys_and_formats() -> None:
    with pytest.raises(ValueError) as error:
        import_traces(jsonl({"foo": 1, "bar": [2]}))
    message = str(error.value)
    assert "bar, foo" in message
    for name in FORMATS[1:]:
        assert name in message
    assert "#### N" in message and "step_hallucination" in message
    with pytest.raises(ValueError, match="question, solution"):
        detect_format({"question": "q", "solution": "no hashes here"})


def test_an_unknown_format_name_is_refused() -> None:
    with pytest.raises(ValueError, match="Unknown trace format 'csv'"):
        import_traces(jsonl(GSM8K), "csv")


def test_detection_skips_lines_that_are_not_objects_and_still_reports_them() -> None:
    load = import_traces(b"not json\n[1, 2]\n" + jsonl(PROCESSBENCH))
    assert [trace.id for trace in load.traces] == ["gsm8k-0"]
    assert [(issue.line, issue.field) for issue in load.issues] == [(1, ""), (2, "")]
    assert "invalid JSON" in load.issues[0].message and "list" in load.issues[1].message


# --- mappings -----------------------------------------------------------------------------------


def test_chained_maps_labels_ids_context_and_keeps_the_response() -> None:
    trace = import_traces(json_array(CHAINED)).traces[0]
    assert trace.id == "0" and trace.problem_id == "2hop__13548_13529"
    assert trace.prompt == ("Context:\nParis is the capital of France.\n\n"
                            "Question:\nWhat is the capital of France?")
    assert trace.response == CHAINED["response"]
    assert [step.text for step in trace.steps] == [s["text"] for s in CHAINED["steps"]]
    assert trace.steps[1].start == CHAINED["response"].index("2. So")
    assert trace.step_labels == [0, 1] and trace.prefix_labels == [0, 1]
    assert (trace.answer, trace.gold, trace.is_correct) == ("Lyon", "Paris", False)
    assert dict(trace.extra) == {"subset": "MuSiQue", "model": "Llama-3.1-8B-Instruct"}


def test_chained_prefix_labels_are_taken_as_given_and_string_flags_read() -> None:
    # A recovery (cumulative true -> false) must survive: deriving would give [1, 1].
    record = {"id": 7, "question": "q?", "steps": [
        {"text": "Wrong fact.", "step_hallucination": "true", "cumulative_hallucination": True},
        {"text": "Fixed it.", "step_hallucination": "False", "cumulative_hallucination": 0}]}
    trace = import_traces(jsonl(record), "chained").traces[0]
    assert trace.prompt == "q?" and trace.response == "Wrong fact.\nFixed it."
    assert trace.step_labels == [1, 0] and trace.prefix_labels == [1, 0]


def test_chained_without_cumulative_labels_derives_them() -> None:
    record = {"id": 1, "query": "q?", "steps": [
        {"text": "a.", "step_hallucination": False}, {"text": "b.", "step_hallucination": True},
        {"text": "c.", "step_hallucination": False}]}
    # no outcome: whether the chain got back on track after b is unknown (the paper's way)
    assert import_traces(jsonl(record)).traces[0].prefix_labels == [0, 1, None]
    assert import_traces(jsonl(record), prefix_labels="any-so-far").traces[0].prefix_labels \
        == [0, 1, 1]
    done = {**record, "is_correct": True}
    assert import_traces(jsonl(done)).traces[0].prefix_labels == [0, 1, 0]


def test_prm800k_follows_the_chosen_completions_up_to_the_error() -> None:
    trace = import_traces(jsonl(PRM_PHASE2)).traces[0]
    assert [step.text for step in trace.steps] == [
        "I want to find the largest common divisor.", "Factor both numbers into primes.",
        "I know that $200,\\!000 = 2^9\\cdot 5^4$."]
    assert trace.step_labels == [0, 0, 1] and trace.prefix_labels == [0, 0, 1]
    assert trace.prompt == PRM_PHASE2["question"]["problem"]
    assert (trace.answer, trace.gold, trace.is_correct) == (None, "40,\\!000", False)
    assert trace.extra["finish_reason"] == "found_error" and trace.extra["generation"] == 9
    assert "question" not in trace.extra and "label" not in trace.extra


def test_prm800k_human_steps_count_as_correct_and_the_answer_is_read() -> None:
    trace = import_traces(jsonl(PRM_PHASE1)).traces[0]
    assert [step.text for step in trace.steps] == [
        "3 times 4 is 12.", "So the answer is 12.\n\n# Answer\n\n12"]
    assert trace.step_labels == [0, 0] and trace.prefix_labels == [0, 0]
    assert (trace.answer, trace.gold, trace.is_correct) == ("12", "12", True)


@pytest.mark.parametrize(("rating", "label"), [(-1, 1), (0, 0), (1, 0), (None, None)])
def test_prm800k_ratings_map_to_step_labels(rating: int | None, label: int | None) -> None:
    record = changed(PRM_PHASE1, ["label", "steps", 1, "completions", 0, "rating"], rating)
    assert import_traces(jsonl(record)).traces[0].step_labels == [0, label]


def test_prm800k_chain_ends_at_a_step_with_nothing_to_follow() -> None:
    stuck = {"completions": [{"text": "Maybe add them.", "rating": 0}],
             "human_completion": None, "chosen_completion": None}
    record = changed(PRM_PHASE1, ["label", "steps"],
                     [PRM_PHASE1["label"]["steps"][0], stuck, PRM_PHASE1["label"]["steps"][1]])
    record = changed(record, ["label", "finish_reason"], "give_up")
    trace = import_traces(jsonl(record)).traces[0]
    assert [step.text for step in trace.steps] == ["3 times 4 is 12."]
    assert trace.is_correct is None and trace.prefix_labels == [None]  # outcome unknown
    again = import_traces(jsonl(record), prefix_labels="any-so-far").traces[0]
    assert again.prefix_labels == [0]


@pytest.mark.parametrize(("first_wrong", "labels", "prefix"), [
    (1, [0, 1, None, None], [0, 1, 1, 1]),
    (0, [1, None, None, None], [1, 1, 1, 1]),
    (3, [0, 0, 0, 1], [0, 0, 0, 1]),
    (-1, [0, 0, 0, 0], [0, 0, 0, 0])])
def test_processbench_labels_up_to_the_first_wrong_step(
        first_wrong: int, labels: list[int | None], prefix: list[int]) -> None:
    record = {**PROCESSBENCH, "label": first_wrong, "final_answer_correct": first_wrong == -1}
    trace = import_traces(jsonl(record)).traces[0]
    assert trace.step_labels == labels and trace.prefix_labels == prefix
    assert trace.id == "gsm8k-0" and trace.prompt == PROCESSBENCH["problem"]
    assert trace.response == "\n".join(PROCESSBENCH["steps"])
    assert trace.is_correct is (first_wrong == -1)
    assert dict(trace.extra) == {"generator": "Qwen2-7B-Instruct"}


def test_gsm8k_drops_calculator_annotations_and_reads_the_answer() -> None:
    trace = import_traces(jsonl(GSM8K), name="test.jsonl").traces[0]
    assert [step.text for step in trace.steps] == [
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.",
        "She makes 9 * 2 = $18 every day at the farmer's market."]
    assert trace.id == "test-1" and trace.prompt == GSM8K["question"]
    assert (trace.answer, trace.gold, trace.is_correct) == ("18", "18", None)
    assert trace.step_labels == [None, None] and trace.prefix_labels == [None, None]


def test_gsm8k_outcome_label_sets_only_the_last_prefix_label() -> None:
    wrong = {**GSM8K, "id": 5, "is_correct": False, "answer": "16 - 3 = <<16-3=13>>13\n#### 26"}
    trace = import_traces(jsonl(wrong)).traces[0]
    assert trace.id == "5" and [step.text for step in trace.steps] == ["16 - 3 = 13"]
    assert (trace.answer, trace.gold, trace.is_correct) == ("26", None, False)
    assert trace.prefix_labels == [1]
    right = import_traces(jsonl({**GSM8K, "is_correct": True, "gold": 18})).traces[0]
    assert right.gold == "18" and right.prefix_labels == [None, 0]


# --- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_json_arrays_jsonl_paths_and_bytes_give_the_same_traces(name: str,
                                                                tmp_path: Path) -> None:
    second = changed(EXAMPLES[name], ["id"], "second")
    path = tmp_path / "data.json"
    path.write_bytes(b"\xef\xbb\xbf" + json_array(EXAMPLES[name], second))
    from_array = import_traces(path)
    from_lines = import_traces(jsonl(EXAMPLES[name], second), name="data.json")
    assert from_array.traces == from_lines.traces and len(from_array.traces) == 2
    assert from_array.n_lines == 2 and from_array.issues == []


BAD_RECORDS = {
    "native": (changed(NATIVE, ["steps", 0, "label"], 2), "steps[0].label"),
    "chained": (changed(CHAINED, ["steps", 1, "step_hallucination"], "maybe"),
                "steps[1].step_hallucination"),
    "prm800k": (changed(PRM_PHASE2, ["label", "steps", 1, "completions", 0, "rating"], 5),
                "label.steps[1].completions[0].rating"),
    "processbench": (changed(PROCESSBENCH, ["label"], 4), "label"),
    "gsm8k": (changed(GSM8K, ["answer"], "no final line"), "answer"),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
@pytest.mark.parametrize("as_array", [False, True])
def test_a_bad_record_is_an_issue_naming_line_and_field(name: str, as_array: bool) -> None:
    good, (bad, field) = EXAMPLES[name], BAD_RECORDS[name]
    other = changed(good, ["id"], "other")
    records = (good, bad, other)
    data = json_array(*records) if as_array else b"\n".join(
        [jsonl(good), jsonl(bad), jsonl(other)])  # a blank line between records
    load = import_traces(data, "auto", name="upload.json")
    assert len(load.traces) == 2 and len(load.issues) == 1
    issue = load.issues[0]
    line = 2 if as_array else 3
    assert (issue.source, issue.line, issue.field) == ("upload.json", line, field)
    assert load.n_lines == (3 if as_array else 5)
    with pytest.raises(TraceFileError):
        import_traces(data, name, strict=True)


@pytest.mark.parametrize(("path", "value", "field"), [
    (["label", "steps", 0, "chosen_completion"], 3, "label.steps[0].chosen_completion"),
    (["label", "steps", 1, "completions", 0, "text"], "  ", "label.steps[1].completions[0].text"),
    (["label", "steps"], [], "label.steps"),
    (["question"], "text", "question"),
    (["question", "problem"], None, "question.problem")])
def test_prm800k_field_errors_use_the_dataset_paths(path: list[str | int], value: Any,
                                                    field: str) -> None:
    load = import_traces(jsonl(changed(PRM_PHASE2, path, value)), "prm800k")
    assert [issue.field for issue in load.issues] == [field] and load.traces == []


def test_a_chained_step_missing_from_its_response_is_reported() -> None:
    record = changed(CHAINED, ["steps", 1, "text"], "Not in the response.")
    assert [issue.field for issue in import_traces(jsonl(record)).issues] == ["steps[1].text"]


def test_duplicate_ids_and_an_explicit_format_that_does_not_fit() -> None:
    load = import_traces(jsonl(PROCESSBENCH, PROCESSBENCH))
    assert [(issue.line, issue.field) for issue in load.issues] == [(2, "id")]
    assert "first on line 1" in load.issues[0].message
    misfit = import_traces(jsonl(GSM8K), "processbench")
    assert misfit.traces == [] and [issue.field for issue in misfit.issues] == ["steps"]


def test_a_broken_json_array_is_one_issue_and_empty_input_is_empty() -> None:
    load = import_traces(b'[\n  {"question": "q",\n  "answer": }\n]')
    assert load.traces == [] and [(i.line, i.field) for i in load.issues] == [(3, "")]
    assert "JSON array was not read" in load.issues[0].message
    for empty in (b"", b"  \n\n", b"[]"):
        assert import_traces(empty).traces == [] and import_traces(empty).issues == []


def test_native_files_are_read_by_read_traces(tmp_path: Path) -> None:
    path = tmp_path / "native.jsonl"
    path.write_bytes(jsonl({**NATIVE, "source": "hand"}) + b"{bad\n")
    assert import_traces(path) == read_traces(path)
    assert import_traces(path, "native").traces[0].source == "hand"


@pytest.mark.parametrize("name", ["chained", "prm800k", "processbench", "gsm8k"])
def test_imported_traces_round_trip_through_the_native_format(name: str,
                                                              tmp_path: Path) -> None:
    records = [EXAMPLES[name], PRM_PHASE1] if name == "prm800k" else [EXAMPLES[name]]
    imported = import_traces(jsonl(*records), name=f"{name}.jsonl").traces
    path = tmp_path / "native.jsonl"
    write_traces(path, imported)
    back = read_traces(path)
    assert back.issues == [] and back.traces == imported
    again = import_traces(path)
    assert again.traces == imported and all(trace.source == name for trace in again.traces)
