"""The trace record (one chain of thought with its step labels) and its JSONL file format.

One JSON object per line:
    {"id", "problem_id", "prompt", "response", "steps": [{"text", "label", "prefix_label"}],
     "answer", "gold", "is_correct", "source", "schema_version"}
- `prompt` is required (a string, may be empty). `id` is optional: `read_traces` gives a line
  without one the id "{file stem}-{line}". Ids and problem ids may be strings or integers.
- Steps: a list of objects or of plain strings, or only a `response` string that the segmenter
  splits (its text is kept exactly). Steps without a response: the response is the step texts
  joined by "\\n". Both: each step text is found, in order, inside the response.
- Labels are 0, 1, true, false or null (1 = hallucinated). Step objects' other keys are dropped.
- Any other top-level key is kept in `Trace.extra` and written back (e.g. scores added later).
`read_traces` never raises on bad content: each bad line becomes a `TraceIssue` naming the line
and the field (unless strict=True, which raises `TraceFileError` listing them).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, TypeVar

from core.atomic import atomic_path
from core.steps import DEFAULT_SEGMENTER, Segmenter, split_steps

R = TypeVar("R")

SCHEMA_VERSION = 1
_KNOWN_KEYS = frozenset({"id", "problem_id", "prompt", "response", "steps", "answer", "gold",
                         "is_correct", "source", "schema_version"})


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
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


class FieldError(ValueError):
    """A field of a trace object is missing or invalid; `field` is its path, e.g. steps[2].label."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"field '{field_name}': {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class TraceIssue:
    """A problem on one line of a trace file; `field` is "" when the line is not a trace at all."""

    source: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f", field '{self.field}'" if self.field else ""
        return f"{self.source}, line {self.line}{where}: {self.message}"


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


class TraceFileError(ValueError):
    """Raised by strict reading; `.issues` holds every problem, the message the first few."""

    def __init__(self, issues: list[TraceIssue], shown: int = 5) -> None:
        lines = [str(issue) for issue in issues[:shown]]
        if len(issues) > shown:
            lines.append(f"... and {len(issues) - shown} more")
        super().__init__(f"{len(issues)} problem(s) in the trace file:\n" + "\n".join(lines))
        self.issues = issues


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
                    default_id: str | None = None) -> Trace:
    """Build a Trace from one decoded JSON object; raises FieldError naming the bad field.

    Prefix labels missing from the file are derived (`with_derived_prefix_labels`): from step
    labels ("any step so far"), or from `is_correct` alone on the last step.
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
    is_correct = obj.get("is_correct")
    if is_correct is not None and not isinstance(is_correct, bool):
        got = json.dumps(is_correct, default=repr)
        raise FieldError("is_correct", f"must be true, false or null, got {got}")
    return with_derived_prefix_labels(Trace(
        id=trace_id, prompt=obj["prompt"], response=response, steps=tuple(steps),
        problem_id=_text(obj, "problem_id", numbers=True),
        answer=_text(obj, "answer", numbers=True), gold=_text(obj, "gold", numbers=True),
        is_correct=is_correct, source=_text(obj, "source"),
        extra={key: value for key, value in obj.items() if key not in _KNOWN_KEYS}))


def trace_to_dict(trace: Trace) -> dict[str, Any]:
    """The JSON object for a trace; `trace_from_dict` of it gives the trace back.

    Step spans are not written: reading finds each step text in the response, in order, which
    gives back the spans of every trace that `trace_from_dict` or `split_steps` made.
    """
    steps = [{"text": s.text, "label": s.label, "prefix_label": s.prefix_label}
             for s in trace.steps]
    return {"id": trace.id, "problem_id": trace.problem_id, "prompt": trace.prompt,
            "response": trace.response, "steps": steps, "answer": trace.answer,
            "gold": trace.gold, "is_correct": trace.is_correct, "source": trace.source,
            **trace.extra, "schema_version": SCHEMA_VERSION}


def _read_lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[bytes | None]:
    """Each line's bytes, or None for a line over `max_line_bytes` (skipped in 1 MiB chunks)."""
    while True:
        line = stream.readline(max_line_bytes + 1)
        if not line:
            return
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            while (chunk := stream.readline(1 << 20)) and not chunk.endswith(b"\n"):
                pass
            yield None
        else:
            yield line


def _decode_line(raw: bytes | None, line: int, max_line_bytes: int) -> Any:
    """The JSON value of one line; raises FieldError("", ...) when it has none."""
    if raw is None:
        raise FieldError("", f"the line is longer than {max_line_bytes} bytes")
    if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte order mark
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FieldError("", f"not valid UTF-8 at byte {error.start} of the line "
                             f"(0x{raw[error.start]:02x})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise FieldError("", f"invalid JSON at column {error.colno}: {error.msg}") from None
    except (ValueError, RecursionError) as error:
        raise FieldError("", f"invalid JSON: {error}") from None


def read_records(source: str | Path | bytes, build: Callable[[dict[str, Any], str], R],
                 id_of: Callable[[R], str], *, name: str | None = None,
                 max_line_bytes: int = 16_000_000) -> tuple[list[R], list[TraceIssue], int]:
    """Read a JSONL file of records (a path, or its bytes) without ever stopping on a bad line.

    `build(obj, default_id)` turns one JSON object into a record or raises FieldError. Returns
    (records, one TraceIssue per bad line, number of lines); blank lines are skipped, lines
    are numbered from 1, and an id seen on an earlier line is an issue.
    """
    if name is None:
        name = "<bytes>" if isinstance(source, bytes) else Path(source).name
    stem = Path(name).stem if name != "<bytes>" else "line"
    records: list[R] = []
    issues: list[TraceIssue] = []
    first_line_of: dict[str, int] = {}
    n_lines = 0
    with (io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")) as stream:
        for n_lines, raw in enumerate(_read_lines(stream, max_line_bytes), start=1):
            if raw is not None and not raw.strip():
                continue
            try:
                obj = _decode_line(raw, n_lines, max_line_bytes)
                if not isinstance(obj, dict):
                    raise FieldError("", f"expected a JSON object, got {type(obj).__name__}")
                record = build(obj, f"{stem}-{n_lines}")
                if id_of(record) in first_line_of:
                    raise FieldError("id", f"duplicate id '{id_of(record)}' (first on line "
                                           f"{first_line_of[id_of(record)]})")
            except FieldError as error:
                issues.append(TraceIssue(name, n_lines, error.field, error.message))
                continue
            first_line_of[id_of(record)] = n_lines
            records.append(record)
    return records, issues, n_lines


def read_traces(source: str | Path | bytes, *, name: str | None = None,
                segmenter: Segmenter = DEFAULT_SEGMENTER, strict: bool = False,
                max_line_bytes: int = 16_000_000) -> TraceLoad:
    """Read a JSONL trace file (a path, or its bytes); lines are numbered from 1.

    Blank lines are skipped. Every other line gives a trace or one TraceIssue: bad bytes, bad
    JSON, not an object, a bad field, an id seen on an earlier line. strict=True raises
    TraceFileError when there is any issue.
    """
    traces, issues, n_lines = read_records(
        source, lambda obj, default_id: trace_from_dict(obj, segmenter, default_id=default_id),
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


def with_derived_prefix_labels(trace: Trace) -> Trace:
    """Fill prefix labels from step labels: A^prefix_t = max(A^step_1..t), "any step so far
    was hallucinated" (null while no 1 has been seen and some label so far is unknown).

    If is_correct is False the last prefix label is 1; with no step labels at all only the last
    prefix label is set, from is_correct (outcome supervision). A trace that already has a
    prefix label, or that has neither step labels nor is_correct, is returned unchanged.
    """
    if any(label is not None for label in trace.prefix_labels):
        return trace
    if not trace.has_step_labels and trace.is_correct is None:
        return trace
    prefix: list[int | None] = [None] * trace.n_steps
    if trace.has_step_labels:
        seen_one, seen_unknown = False, False
        for index, label in enumerate(trace.step_labels):
            seen_one = seen_one or label == 1
            seen_unknown = seen_unknown or label is None
            prefix[index] = 1 if seen_one else (None if seen_unknown else 0)
    if trace.is_correct is False:
        prefix[-1] = 1
    elif not trace.has_step_labels:
        prefix[-1] = 0
    steps = tuple(replace(step, prefix_label=value) for step, value in zip(
        trace.steps, prefix, strict=True))
    return replace(trace, steps=steps)
