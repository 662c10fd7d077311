"""Reading JSONL files of records (traces, fine-tuning examples, audits) line by line, never
stopping on a bad line: each bad line becomes one issue that names the file, the line and the
field.

    records, issues, n_lines = read_records(path, build, id_of=lambda r: r.id)
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

R = TypeVar("R")


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


class TraceFileError(ValueError):
    """Raised by strict reading; `.issues` holds every problem, the message the first few."""

    def __init__(self, issues: list[TraceIssue], shown: int = 5) -> None:
        lines = [str(issue) for issue in issues[:shown]]
        if len(issues) > shown:
            lines.append(f"... and {len(issues) - shown} more")
        super().__init__(f"{len(issues)} problem(s) in the trace file:\n" + "\n".join(lines))
        self.issues = issues


def read_lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[bytes | None]:
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


def decode_line(raw: bytes | None, line: int, max_line_bytes: int) -> Any:
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
        for n_lines, raw in enumerate(read_lines(stream, max_line_bytes), start=1):
            if raw is not None and not raw.strip():
                continue
            try:
                obj = decode_line(raw, n_lines, max_line_bytes)
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
