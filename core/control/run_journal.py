"""A journal of finished fine-tuning runs, so an interrupted comparison resumes where it stopped.

JSONL: the first line holds the settings the runs belong to ({"settings": ...}), then one line
per finished unit, {"key": ..., "value": ...} (a JSON object: a base evaluation, or a method's
curve and final row), appended and fsynced as each unit ends. A rerun with the same settings
reads the units back and runs only the missing ones; every unit is seeded, so the resumed run
gives the same tables. A journal of other settings is an error that names the file (delete it
to start over); a last line cut off by the interruption is dropped and run again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class RunJournal:
    """Finished units by key, read from and appended to `path` (None: kept in memory only)."""

    def __init__(self, path: str | Path | None, settings: Mapping[str, Any]) -> None:
        self.path = None if path is None else Path(path)
        self.settings = json.loads(json.dumps(dict(settings)))
        self.units: dict[str, dict[str, Any]] = {}
        self._handle: IO[str] | None = None
        if self.path is not None and self.path.exists():
            self._read(self.path)

    def _read(self, path: Path) -> None:
        lines = path.read_text(encoding="utf-8").splitlines()
        if not lines:
            return
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            raise ValueError(f"{path}, line 1: not a run journal header.") from None
        if not isinstance(header, dict) or header.get("settings") != self.settings:
            raise ValueError(f"{path} holds runs made with other settings; delete it to start "
                             "over, or rerun with the settings it records.")
        for number, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
                key, value = str(entry["key"]), entry["value"]
                if not isinstance(value, dict):
                    raise TypeError
                self.units[key] = value
            except (json.JSONDecodeError, KeyError, TypeError):
                if number == len(lines):
                    break  # cut off by an interruption: run it again
                raise ValueError(f"{path}, line {number}: not a journal entry (fields key and "
                                 "value, an object).") from None

    def get(self, key: str) -> dict[str, Any] | None:
        return self.units.get(key)

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        """Record a finished unit and, with a file, append and fsync it."""
        stored = json.loads(json.dumps(dict(value)))  # NaN stays NaN (json's own extension)
        self.units[key] = stored
        if self.path is None:
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            self._handle = self.path.open("a", encoding="utf-8")
            if fresh:
                self._handle.write(json.dumps({"settings": self.settings}) + "\n")
        self._handle.write(json.dumps({"key": key, "value": stored}) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@contextmanager
def run_journal(path: str | Path | None, settings: Mapping[str, Any]) -> Iterator[RunJournal]:
    """A `RunJournal` closed on exit, also when the body raises (the file stays for a rerun)."""
    journal = RunJournal(path, settings)
    try:
        yield journal
    finally:
        journal.close()


__all__ = ["RunJournal", "run_journal"]
