"""The trace record (one chain of thought with its step labels) and its JSONL file format.

One JSON object per line:
    {"id", "problem_id", "prompt", "response", "steps": [{"text", "label", "prefix_label"}],
     "answer", "answered", "gold", "is_correct", "source", "schema_version"}
- `prompt` is required (a string, may be empty). `id` is optional: `read_traces` gives a line
  without one the id "{file stem}-{line}". Ids and problem ids may be strings or integers.
- Steps: a list of objects or of plain strings, or only a `response` string that the segmenter
  splits (its text is kept exactly). Steps without a response: the response is the step texts
  joined by "\\n". Both: each step text is found, in order, inside the response.
- Labels are 0, 1, true, false or null (1 = hallucinated). Step objects' other keys are dropped.
- `answered`: did the reply state an answer (`core.data.answers`)? true, false or null
  (unknown, e.g. files from before version 2). An unanswered chain is never correct.
- `response` is what the model wrote, unedited: the steps are located inside it, so the text
  a probe reads teacher-forced is exactly the generated text (see `core.data.steps` for the
  whitespace between steps).
- Prefix labels missing from the file are derived from the step labels and `is_correct`
  (`core.data.prefix_labels`, the paper's convention by default); a reader may ask for every
  trace's prefix labels to be derived in a named convention instead (`prefix_labels=`).
- Any other top-level key is kept in `Trace.extra` and written back (e.g. scores added later).
`read_traces` never raises on bad content: each bad line becomes a `TraceIssue` naming the line
and the field (unless strict=True, which raises `TraceFileError` listing them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.data.atomic import atomic_path
from core.data.prefix_labels import (
    DEFAULT_PREFIX_CONVENTION,
    check_convention,
    derive_prefix_labels,
)
from core.data.records import FieldError, TraceFileError, TraceIssue, read_records
from core.data.steps import DEFAULT_SEGMENTER, Segmenter, split_steps

__all__ = ["SCHEMA_VERSION", "FieldError", "Step", "Trace", "TraceFileError", "TraceIssue",
           "TraceLoad", "read_records", "read_traces", "trace_from_dict", "trace_to_dict",
           "traces_to_jsonl", "with_derived_prefix_labels", "write_traces"]

SCHEMA_VERSION = 2  # 2: `answered`; raw responses; prefix labels in the paper's convention
_KNOWN_KEYS = frozenset({"id", "problem_id", "prompt", "response", "steps", "answer",
                         "answered", "gold", "is_correct", "source", "schema_version"})


@dataclass(frozen=True)
class Step:
    """One step: its text, its char span [start, end) in `Trace.response`, and its labels."""

    text: str
    start: int
    end: int
    label: int | None = None
    prefix_label: int | None = None


@dataclass(frozen=True)
class Trace:
    """One chain of thought: the prompt, the response, its steps and what is known about them."""

    id: str
    prompt: str
    response: str
    steps: tuple[Step, ...]
    problem_id: str | None = None
    answer: str | None = None
    gold: str | None = None
    is_correct: bool | None = None
    source: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    answered: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        if self.answered is False and self.is_correct:
            raise ValueError(f"Trace '{self.id}': an unanswered chain cannot be correct.")
        for index, step in enumerate(self.steps):
            if self.response[step.start:step.end] != step.text or step.start >= step.end:
                raise ValueError(f"Trace '{self.id}': step {index} text does not match "
                                 f"response[{step.start}:{step.end}].")
        clashes = sorted(_KNOWN_KEYS & set(self.extra))
        if clashes:
            raise ValueError(f"Trace '{self.id}': extra keys {clashes} clash with record fields.")

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def step_labels(self) -> list[int | None]:
        return [step.label for step in self.steps]

    @property
    def prefix_labels(self) -> list[int | None]:
        return [step.prefix_label for step in self.steps]

    @property
    def has_step_labels(self) -> bool:
        """True when at least one step has a step label."""
        return any(step.label is not None for step in self.steps)


@dataclass(frozen=True)
class TraceLoad:
    """What `read_traces` found: the valid traces, the problems, and how many lines it read."""

    traces: list[Trace]
    issues: list[TraceIssue]
    n_lines: int

    @property
    def n_skipped(self) -> int:
        """Lines that held something but gave no trace."""
        return len({issue.line for issue in self.issues})


def _label(value: Any, name: str) -> int | None:
    if value is None or isinstance(value, bool):
        return None if value is None else int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    raise FieldError(name, f"label must be 0, 1 or null, got {json.dumps(value, default=repr)}")


def _text(obj: Mapping[str, Any], name: str, *, numbers: bool = False) -> str | None:
    """An optional string field; `numbers` also accepts integers (ids) and numbers (answers)."""
    value = obj.get(name)
    if value is None or isinstance(value, str):
        return value
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise FieldError(name, f"must be a string or null, got {type(value).__name__}")


def _parse_steps(raw: Any) -> list[tuple[str, int | None, int | None]]:
    if not isinstance(raw, list):
        raise FieldError("steps", f"must be a list, got {type(raw).__name__}")
    if not raw:
        raise FieldError("steps", "the trace has no steps")
    parsed = []
    for index, item in enumerate(raw):
        name = f"steps[{index}]"
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, Mapping):
            raise FieldError(name, f"must be a string or an object, got {type(item).__name__}")
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            got = "blank" if isinstance(text, str) else type(text).__name__
            raise FieldError(f"{name}.text", f"must be a non-blank string, got {got}")
        parsed.append((text, _label(item.get("label"), f"{name}.label"),
                       _label(item.get("prefix_label"), f"{name}.prefix_label")))
    return parsed


def _locate(parsed: list[tuple[str, int | None, int | None]], response: str) -> list[Step]:
    """Place each step text in the response, in order, each search starting after the last."""
    steps, position = [], 0
    for index, (text, label, prefix_label) in enumerate(parsed):
        start = response.find(text, position)
        if start < 0:
            raise FieldError(f"steps[{index}].text", "not found in 'response' after the steps "
                                                     "before it")
        position = start + len(text)
        steps.append(Step(text, start, position, label, prefix_label))
    return steps


def trace_from_dict(obj: Mapping[str, Any], segmenter: Segmenter = DEFAULT_SEGMENTER,
                    default_id: str | None = None, prefix_labels: str | None = None) -> Trace:
    """Build a Trace from one decoded JSON object; raises FieldError naming the bad field.

    Prefix labels (`with_derived_prefix_labels`): with prefix_labels=None those in the file are
    kept and missing ones derived in the paper's convention; "paper" or "any-so-far" derives
    every trace's prefix labels in that convention from its step labels and outcome.
    """
    version = obj.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise FieldError("schema_version", f"this Telltale reads version {SCHEMA_VERSION} "
                                           f"or older, got {json.dumps(version)}")
    trace_id = _text(obj, "id", numbers=True)
    if trace_id == "":
        raise FieldError("id", "must not be empty")
    trace_id = trace_id if trace_id is not None else default_id
    if trace_id is None:
        raise FieldError("id", "missing")
    if not isinstance(obj.get("prompt"), str):
        got = "missing" if "prompt" not in obj else type(obj["prompt"]).__name__
        raise FieldError("prompt", f"must be a string, got {got}")
    response = _text(obj, "response")
    if "steps" in obj and obj["steps"] is not None:
        parsed = _parse_steps(obj["steps"])
        if response is None:
            response = "\n".join(text for text, _, _ in parsed)
        steps = _locate(parsed, response)
    elif response is not None:
        spans = split_steps(response, segmenter)
        if not spans:
            raise FieldError("response", "has no steps (it is blank)")
        steps = [Step(response[span.start:span.end], span.start, span.end) for span in spans]
    else:
        raise FieldError("steps", "missing: give 'steps' (a list) or 'response' (a string)")
    is_correct, answered = _flag(obj, "is_correct"), _flag(obj, "answered")
    if answered is False and is_correct:
        raise FieldError("is_correct", "must not be true for an unanswered chain "
                                       "(answered is false)")
    trace = Trace(
        id=trace_id, prompt=obj["prompt"], response=response, steps=tuple(steps),
        problem_id=_text(obj, "problem_id", numbers=True),
        answer=_text(obj, "answer", numbers=True), gold=_text(obj, "gold", numbers=True),
        is_correct=is_correct, source=_text(obj, "source"), answered=answered,
        extra={key: value for key, value in obj.items() if key not in _KNOWN_KEYS})
    if prefix_labels is None:
        return with_derived_prefix_labels(trace)
    return with_derived_prefix_labels(trace, prefix_labels, overwrite=True)


def _flag(obj: Mapping[str, Any], name: str) -> bool | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, bool):
        raise FieldError(name, f"must be true, false or null, got "
                               f"{json.dumps(value, default=repr)}")
    return value


def trace_to_dict(trace: Trace) -> dict[str, Any]:
    """The JSON object for a trace; `trace_from_dict` of it gives the trace back.

    Step spans are not written: reading finds each step text in the response, in order, which
    gives back the spans of every trace that `trace_from_dict` or `split_steps` made.
    """
    steps = [{"text": s.text, "label": s.label, "prefix_label": s.prefix_label}
             for s in trace.steps]
    return {"id": trace.id, "problem_id": trace.problem_id, "prompt": trace.prompt,
            "response": trace.response, "steps": steps, "answer": trace.answer,
            "answered": trace.answered, "gold": trace.gold, "is_correct": trace.is_correct,
            "source": trace.source, **trace.extra, "schema_version": SCHEMA_VERSION}


def read_traces(source: str | Path | bytes, *, name: str | None = None,
                segmenter: Segmenter = DEFAULT_SEGMENTER, strict: bool = False,
                max_line_bytes: int = 16_000_000, prefix_labels: str | None = None
                ) -> TraceLoad:
    """Read a JSONL trace file (a path, or its bytes); lines are numbered from 1.

    Blank lines are skipped. Every other line gives a trace or one TraceIssue: bad bytes, bad
    JSON, not an object, a bad field, an id seen on an earlier line. strict=True raises
    TraceFileError when there is any issue. `prefix_labels`: see `trace_from_dict`.
    """
    if prefix_labels is not None:
        check_convention(prefix_labels)
    traces, issues, n_lines = read_records(
        source, lambda obj, default_id: trace_from_dict(obj, segmenter, default_id=default_id,
                                                        prefix_labels=prefix_labels),
        lambda trace: trace.id, name=name, max_line_bytes=max_line_bytes)
    if strict and issues:
        raise TraceFileError(issues)
    return TraceLoad(traces, issues, n_lines)


def traces_to_jsonl(traces: Iterable[Trace]) -> str:
    """One JSON object per line (UTF-8 text, not ASCII-escaped), each line ending in "\\n"."""
    return "".join(json.dumps(trace_to_dict(trace), ensure_ascii=False) + "\n"
                   for trace in traces)


def write_traces(path: str | Path, traces: Iterable[Trace]) -> None:
    """Write traces as JSONL, atomically: if any trace fails to serialise, the old file stays."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        for trace in traces:
            handle.write(json.dumps(trace_to_dict(trace), ensure_ascii=False) + "\n")


def with_derived_prefix_labels(trace: Trace, convention: str = DEFAULT_PREFIX_CONVENTION,
                               overwrite: bool = False) -> Trace:
    """The trace with prefix labels derived from its step labels and is_correct
    (`core.data.prefix_labels.derive_prefix_labels` in `convention`).

    A trace that already has a prefix label is returned unchanged unless `overwrite`; one with
    neither step labels nor is_correct always is (there is nothing to derive from).
    """
    check_convention(convention)
    if not overwrite and any(label is not None for label in trace.prefix_labels):
        return trace
    if not trace.has_step_labels and trace.is_correct is None:
        return trace
    prefix = derive_prefix_labels(trace.step_labels, trace.is_correct, convention)
    steps = tuple(replace(step, prefix_label=value) for step, value in zip(
        trace.steps, prefix, strict=True))
    return replace(trace, steps=steps)
