"""An append-only JSONL journal, so a long run resumes where it stopped: a header line that
names what its entries belong to, then one JSON object per line, each batch flushed and
fsynced before the run goes on.

    with Journal.open(path, {"settings": settings}) as journal:
        done = journal.entries           # what an earlier, interrupted run wrote
        journal.append([{"index": 7, "reply": "..."}])

A last line cut off by an interruption is dropped (and truncated away) on opening; a journal
whose header differs from the one asked for raises `JournalMismatch` instead of mixing runs.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any


class JournalMismatch(ValueError):
    """The journal on disk belongs to other settings."""


class Journal:
    """See the module docstring; use `Journal.open`."""

    def __init__(self, path: Path, handle: IO[str], entries: list[dict[str, Any]]) -> None:
        self.path, self._handle, self.entries = path, handle, entries
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, header: Mapping[str, Any]) -> Journal:
        """Open (or create) the journal at `path` for entries belonging to `header`."""
        path = Path(path)
        entries: list[dict[str, Any]] = []
        if path.exists() and path.stat().st_size:
            raw = path.read_bytes()
            good_end = 0
            lines = raw.split(b"\n")
            for index, line in enumerate(lines[:-1]):  # the part after the last "\n" is cut
                try:
                    value = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break
                if index == 0:
                    if value != json.loads(json.dumps(dict(header))):
                        raise JournalMismatch(
                            f"{path} belongs to a run with other settings; delete it to start "
                            "over, or rerun with the settings it records.")
                else:
                    entries.append(value)
                good_end += len(line) + 1
            if good_end < len(raw):
                with open(path, "r+b") as raw_handle:  # drop a line cut off midway
                    raw_handle.truncate(good_end)
            if good_end == 0:
                path.unlink()
        handle = path.open("a", encoding="utf-8")
        journal = cls(path, handle, entries)
        if handle.tell() == 0:
            journal._write([dict(header)])
        return journal

    def _write(self, entries: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            for entry in entries:
                self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def append(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Write entries and make them durable before returning (thread-safe)."""
        new = [dict(entry) for entry in entries]
        self._write(new)
        self.entries.extend(new)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
