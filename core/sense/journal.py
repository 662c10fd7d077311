"""Replies by key in a `core.data.journal.Journal`, so an interrupted run resumes where it stopped.

The journal's header holds the settings the replies belong to (a journal of other settings is an
error that names the file); each entry is {"key": ..., "reply": ...}, appended and fsynced batch
by batch. A rerun with the same settings reads the replies back and samples only the missing ones;
since every trial has its own seed (`core.sense.paired_sampling`), the resumed run writes the same
table. Without a path the replies are kept in memory only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.data.journal import Journal


class ReplyJournal:
    """Replies by key, backed by `journal` (None: in memory only)."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal
        self.replies: dict[str, str] = {}
        for entry in journal.entries if journal is not None else []:
            self.replies[str(entry["key"])] = str(entry["reply"])

    def get(self, key: str) -> str | None:
        return self.replies.get(key)

    def put(self, items: Sequence[tuple[str, str]]) -> None:
        """Record replies (key, reply); with a file, durably before returning."""
        self.replies.update(items)
        if self.journal is not None:
            self.journal.append({"key": key, "reply": reply} for key, reply in items)


@contextmanager
def reply_journal(path: str | Path | None,
                  settings: Mapping[str, Any]) -> Iterator[ReplyJournal]:
    """A `ReplyJournal` on the file at `path` (created with `settings` as its header, or
    checked against them), closed on exit also when the body raises (the file stays for a
    rerun)."""
    if path is None:
        yield ReplyJournal()
        return
    with Journal.open(path, {"settings": dict(settings)}) as journal:
        yield ReplyJournal(journal)
