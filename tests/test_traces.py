"""Trace records: parsing each field, reading bad files without crashing, atomic round trips."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from core.data.atomic import atomic_path, atomic_write_bytes, atomic_write_text, remove_leftovers
from core.data.steps import Segmenter
from core.data.traces import (
    SCHEMA_VERSION,
    FieldError,
    Step,
    Trace,
    TraceFileError,
    read_traces,
    trace_from_dict,
    trace_to_dict,
    traces_to_jsonl,
    with_derived_prefix_labels,
    write_traces,
)


def jsonl(*objects: Any) -> bytes:
    return "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects).encode()


GOOD = {"id": "t1", "prompt": "2 + 2?", "steps": [{"text": "2 + 2 = 5.", "label": 1},
                                                   {"text": "So 5.", "label": 0}]}

# --- trace_from_dict ----------------------------------------------------------------------------


def test_steps_as_objects_build_the_response_joined_by_newlines() -> None:
    trace = trace_from_dict({**GOOD, "problem_id": 12, "answer": 5, "gold": "4",
                             "is_correct": False, "source": "hand"})
    assert trace.response == "2 + 2 = 5.\nSo 5."
    # prefix labels are derived on reading (the paper's convention)
    assert trace.steps == (Step("2 + 2 = 5.", 0, 10, 1, 1), Step("So 5.", 11, 16, 0, 1))
    assert (trace.problem_id, trace.answer, trace.gold) == ("12", "5", "4")
    assert trace.step_labels == [1, 0] and trace.prefix_labels == [1, 1]
    assert trace.has_step_labels and trace.n_steps == 2 and trace.is_correct is False


def test_plain_string_steps_and_boolean_labels() -> None:
    trace = trace_from_dict({"id": 3, "prompt": "", "steps": [
        "a", {"text": "b", "label": True, "prefix_label": False}]})
    assert trace.id == "3" and trace.response == "a\nb"
    assert trace.step_labels == [None, 1] and trace.prefix_labels == [None, 0]
    assert not trace_from_dict({"prompt": "", "steps": ["a"]}, default_id="x").has_step_labels


def test_response_only_is_split_by_the_segmenter_and_kept_exactly() -> None:
    response = "<think>\nFirst 🙂 step. Second.\r\n\n</think>\nDone"
    lines = trace_from_dict({"id": "r", "prompt": "p", "response": response})
    assert lines.response == response
    assert [step.text for step in lines.steps] == ["First 🙂 step. Second.", "Done"]
    sentences = trace_from_dict({"id": "r", "prompt": "p", "response": response},
                                Segmenter("sentences"))
    assert [step.text for step in sentences.steps] == ["First 🙂 step.", "Second.", "Done"]
    assert all(response[s.start:s.end] == s.text for s in sentences.steps)


def test_steps_and_response_together_are_located_in_order() -> None:
    trace = trace_from_dict({"id": "b", "prompt": "p", "response": "x = 1\n  x = 1 again\n",
                             "steps": ["x = 1", {"text": "x = 1", "label": 0}]})
    assert [(s.start, s.end) for s in trace.steps] == [(0, 5), (8, 13)]
    with pytest.raises(FieldError) as error:
        trace_from_dict({"id": "b", "prompt": "p", "response": "one\ntwo",
                         "steps": ["two", "one"]})
    assert error.value.field == "steps[1].text"


@pytest.mark.parametrize(("change", "field"), [
    ({"steps": [{"text": "a", "label": 3}]}, "steps[0].label"),
    ({"steps": ["a", {"text": "b", "label": -1}]}, "steps[1].label"),
    ({"steps": [{"text": "a", "label": "yes"}]}, "steps[0].label"),
    ({"steps": [{"text": "a", "label": 0.5}]}, "steps[0].label"),
    ({"steps": ["a", {"text": "b", "prefix_label": 2}]}, "steps[1].prefix_label"),
    ({"steps": ["a", "   \n"]}, "steps[1].text"),
    ({"steps": [{"label": 1}]}, "steps[0].text"),
    ({"steps": [7]}, "steps[0]"),
    ({"steps": []}, "steps"),
    ({"steps": "a\nb"}, "steps"),
    ({"steps": None, "response": " \n\t"}, "response"),
    ({"steps": None}, "steps"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"is_correct": "yes"}, "is_correct"),
    ({"is_correct": 1}, "is_correct"),
    ({"answer": ["4"]}, "answer"),
    ({"source": 3}, "source"),
    ({"id": ""}, "id"),
    ({"id": None}, "id"),
    ({"schema_version": SCHEMA_VERSION + 1}, "schema_version"),
])
def test_bad_fields_are_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(FieldError) as error:
        trace_from_dict({**GOOD, **change})
    assert error.value.field == field


def test_missing_prompt_is_named() -> None:
    with pytest.raises(FieldError, match="field 'prompt': must be a string, got missing"):
        trace_from_dict({"id": "a", "steps": ["x"]})


def test_trace_checks_its_spans_and_extra_keys() -> None:
    with pytest.raises(ValueError, match="step 0 text does not match"):
        Trace("a", "p", "hello", (Step("help", 0, 4),))
    with pytest.raises(ValueError, match="clash"):
        Trace("a", "p", "hi", (Step("hi", 0, 2),), extra={"prompt": "other"})


# --- read_traces on bad files -------------------------------------------------------------------


def test_every_bad_line_becomes_an_issue_naming_line_and_field(tmp_path: Path) -> None:
    bad_json = b'{"id": "t2", "prompt": "p", "steps": ["a",]}\n'
    latin1 = b'{"id": "t3", "prompt": "caf\xe9", "steps": ["a"]}\n'
    data = b"".join([
        jsonl(GOOD),                                              # 1
        b"\n   \r\n",                                             # 2, 3: blank, skipped
        bad_json,                                                 # 4: invalid JSON
        b"[1, 2]\n",                                              # 5: not an object
        latin1,                                                   # 6: Latin-1 byte
        jsonl({"id": "t4", "prompt": "p", "steps": ["a", {"text": "b", "label": 3}]}),  # 7
        jsonl({**GOOD, "steps": ["again"]}),                      # 8: duplicate id t1
        jsonl({"prompt": "p", "response": "no id here"}),         # 9: default id
    ])
    path = tmp_path / "sample.jsonl"
    path.write_bytes(data)
    load = read_traces(path)
    assert [trace.id for trace in load.traces] == ["t1", "sample-9"]
    assert load.n_lines == 9 and load.n_skipped == 5
    found = {(issue.line, issue.field) for issue in load.issues}
    assert found == {(4, ""), (5, ""), (6, ""), (7, "steps[1].label"), (8, "id")}
    messages = {issue.line: str(issue) for issue in load.issues}
    column = bad_json.index(b",]") + 2  # 1-based column of the "]"
    assert messages[4] == f"sample.jsonl, line 4: invalid JSON at column {column}: Expecting value"
    assert messages[5] == "sample.jsonl, line 5: expected a JSON object, got list"
    offset = latin1.index(b"\xe9")
    assert messages[6] == (f"sample.jsonl, line 6: not valid UTF-8 at byte {offset} "
                           "of the line (0xe9)")
    assert messages[7] == ("sample.jsonl, line 7, field 'steps[1].label': "
                           "label must be 0, 1 or null, got 3")
    assert messages[8] == "sample.jsonl, line 8, field 'id': duplicate id 't1' (first on line 1)"
    assert read_traces(str(path)).issues == load.issues  # a str path works too


def test_strict_reading_raises_with_the_issues() -> None:
    data = jsonl(GOOD) + b"nope\n" * 7
    with pytest.raises(TraceFileError) as error:
        read_traces(data, name="x.jsonl", strict=True)
    assert len(error.value.issues) == 7
    message = str(error.value)
    assert "x.jsonl, line 2: invalid JSON at column 1" in message and "and 2 more" in message
    assert len(read_traces(jsonl(GOOD), strict=True).traces) == 1


def test_a_50_megabyte_line_is_reported_without_stopping_the_read() -> None:
    huge = b'{"id": "big", "prompt": "' + b"x" * 50_000_000 + b'", "steps": ["a"]}\n'
    load = read_traces(huge + jsonl(GOOD) + huge.rstrip(b"\n"), name="big.jsonl")
    assert [trace.id for trace in load.traces] == ["t1"]
    assert [(issue.line, issue.field) for issue in load.issues] == [(1, ""), (3, "")]
    assert "longer than 16000000 bytes" in load.issues[0].message
    assert load.n_lines == 3


def test_byte_order_mark_crlf_and_missing_final_newline_are_fine() -> None:
    data = b"\xef\xbb\xbf" + jsonl(GOOD).replace(b"\n", b"\r\n") + json.dumps(
        {"id": "t2", "prompt": "p", "steps": ["b"]}).encode()
    load = read_traces(data)
    assert [trace.id for trace in load.traces] == ["t1", "t2"] and load.issues == []


# --- writing: round trip and atomicity ----------------------------------------------------------


def test_round_trip_keeps_every_field_and_extra_keys(tmp_path: Path) -> None:
    traces = [
        trace_from_dict({**GOOD, "problem_id": "p1", "answer": "5", "gold": "4",
                         "is_correct": False, "source": "hand",
                         "scores": {"step": [0.9, 0.1]}, "note": "数学 🙂\u2028x"}),
        trace_from_dict({"id": "r", "prompt": "q", "response": "  a\n\nb.\r\n"}),
    ]
    path = tmp_path / "out" / "traces.jsonl"
    write_traces(path, traces)
    load = read_traces(path, strict=True)
    assert load.traces == traces
    assert load.traces[0].extra == {"scores": {"step": [0.9, 0.1]}, "note": "数学 🙂\u2028x"}
    assert path.read_text(encoding="utf-8") == traces_to_jsonl(traces)
    assert trace_to_dict(traces[1])["schema_version"] == SCHEMA_VERSION
    assert os.listdir(path.parent) == ["traces.jsonl"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    good = trace_from_dict(GOOD)
    write_traces(path, [good])
    before = path.read_bytes()
    broken = trace_from_dict({**GOOD, "id": "t9", "blob": object()})  # not JSON-serialisable
    with pytest.raises(TypeError):
        write_traces(path, [good, good, broken])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["traces.jsonl"]


def test_atomic_helpers_write_create_folders_and_clean_up(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.bin"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic_write_text(target, "é\n")
    assert target.read_bytes() == "é\n".encode()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("library failed")
    assert target.read_bytes() == "é\n".encode()
    assert os.listdir(target.parent) == ["file.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


def test_leftovers_of_killed_writes_are_removed_and_nothing_else(tmp_path: Path) -> None:
    leftover = tmp_path / ".chunk-00000.parquet.4876a51fdf20.tmp"  # as a SIGKILL leaves it
    keep = [tmp_path / ".hidden.tmp", tmp_path / "chunk-00000.parquet", tmp_path / ".x.ABC.tmp"]
    for path in [leftover, *keep]:
        path.write_bytes(b"")
    assert remove_leftovers(tmp_path) == [leftover]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)


# --- derived prefix labels ----------------------------------------------------------------------


def labelled(labels: list[int | None], is_correct: bool | None = None) -> Trace:
    steps = [{"text": f"s{i}", "label": label} for i, label in enumerate(labels)]
    return trace_from_dict({"id": "d", "prompt": "", "steps": steps, "is_correct": is_correct})


@pytest.mark.parametrize(("labels", "is_correct", "paper", "any_so_far"), [
    ([0, 0, 1, 0, 0], None, [0, 0, 1, None, None], [0, 0, 1, 1, 1]),
    ([0, 0, 1, 0, 0], True, [0, 0, 1, 0, 0], [0, 0, 1, 1, 1]),  # recovered after step 3
    ([0, 0, 1, 0, 0], False, [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]),
    ([0, 0, 0], False, [0, 0, 1], [0, 0, 1]),  # wrong final answer: last prefix is 1
    ([0, None, 0, 1, 0], None, [0, None, None, 1, None], [0, None, None, 1, 1]),
    ([None, None, None], False, [None, None, 1], [None, None, 1]),  # outcome only
    ([None, None], True, [None, 0], [None, 0]),
    ([None, None], None, [None, None], [None, None]),
])
def test_derived_prefix_labels(labels: list[int | None], is_correct: bool | None,
                               paper: list[int | None], any_so_far: list[int | None]) -> None:
    trace = labelled(labels, is_correct)  # read with the default: the paper's convention
    assert trace.prefix_labels == paper and trace.step_labels == labels
    other = with_derived_prefix_labels(trace, "any-so-far", overwrite=True)
    assert other.prefix_labels == any_so_far and other.step_labels == labels


def test_reading_in_a_named_convention_replaces_stored_prefix_labels() -> None:
    record = {"id": "d", "prompt": "", "is_correct": True, "steps": [
        {"text": "a", "label": 1, "prefix_label": 1}, {"text": "b", "label": 0,
                                                        "prefix_label": 1}]}
    assert trace_from_dict(record).prefix_labels == [1, 1]  # stored ones kept by default
    assert trace_from_dict(record, prefix_labels="paper").prefix_labels == [1, 0]
    assert trace_from_dict(record, prefix_labels="any-so-far").prefix_labels == [1, 1]
    data = jsonl(record)
    assert read_traces(data, prefix_labels="paper").traces[0].prefix_labels == [1, 0]
    with pytest.raises(ValueError, match="Unknown prefix-label convention"):
        read_traces(data, prefix_labels="sometimes")


def test_answered_is_read_written_and_checked() -> None:
    trace = trace_from_dict({**GOOD, "answered": False, "is_correct": False})
    assert trace.answered is False and trace_to_dict(trace)["answered"] is False
    assert trace_from_dict(trace_to_dict(trace)) == trace
    assert trace_from_dict(GOOD).answered is None  # unknown, e.g. a version-1 file
    with pytest.raises(FieldError) as error:
        trace_from_dict({**GOOD, "answered": False, "is_correct": True})
    assert error.value.field == "is_correct"
    with pytest.raises(FieldError, match="true, false or null"):
        trace_from_dict({**GOOD, "answered": "yes"})


def test_version_1_files_still_read() -> None:
    load = read_traces(jsonl({**GOOD, "schema_version": 1, "is_correct": False}))
    assert not load.issues and load.traces[0].answered is None
    assert SCHEMA_VERSION == 2


def test_existing_prefix_labels_are_left_alone() -> None:
    trace = trace_from_dict({"id": "d", "prompt": "", "is_correct": False, "steps": [
        {"text": "a", "label": 1, "prefix_label": 0}, {"text": "b", "label": 0}]})
    assert with_derived_prefix_labels(trace) is trace
