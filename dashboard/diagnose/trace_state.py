"""What the Traces page reads and computes without a probe: shipped trace files, a file's
chains (any supported format), and the model's per-step signals.

- `read_trace_file` and `chain_signals` are `st.cache_data`, keyed on the file's content hash
  (never on an object) and the reading options, so a rerun or another session reuses them;
  signals are cached per chain, so progress is reported between chains and an interrupted run
  resumes where it stopped.
- Session state holds only the request (`SignalsRequest.to_state()`, plain values).
- Nothing here draws on the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from core.data.answers import AccuracyWithChance, trace_accuracy
from core.data.importers import import_traces
from core.data.steps import Segmenter
from core.data.traces import Trace, TraceLoad
from core.diagnose.feature_store import signal_table
from core.progress import Progress
from dashboard.common.state import SAMPLE_FOLDER, ModelKey, get_model, model_key

SIGNALS_REQUEST_KEY = "signals_request"  # session state: what "Compute signals" asked for


def sample_files(folder: Path = SAMPLE_FOLDER) -> list[Path]:
    """The trace files shipped with the project (`sample_traces/*.jsonl`), sorted by name;
    fine-tuning samples (`finetune_*`), problem files (`*_problems.jsonl`, the chain maker's)
    and reply journals of unfinished runs are left out, as are subfolders (probes, label
    audits)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.jsonl")
                  if not p.name.startswith("finetune_")
                  and not p.name.endswith((".replies.jsonl", "_problems.jsonl")))


@st.cache_data(show_spinner=False, max_entries=16)
def read_trace_file(data: bytes, name: str, mode: str = "lines", pattern: str | None = None,
                    format: str = "auto") -> TraceLoad:
    """`core.data.importers.import_traces` on a file's bytes (any supported format; "auto" tells
    which from the first record). Bad records never raise (problems are in `.issues`); raises
    ValueError for a file whose shape fits no format, or a bad step-splitting mode or pattern."""
    return import_traces(data, format, name=name, segmenter=Segmenter(mode, pattern))


@st.cache_data(show_spinner=False, max_entries=16)
def file_answers(file_hash: str, reading: tuple[str, str, str | None],
                 _traces: Sequence[Trace]) -> AccuracyWithChance:
    """The file's answer accuracy with the answered share and the shuffled-gold chance rate
    (`core.data.answers.trace_accuracy`, as `telltale evaluate` reports it), cached on the
    file's content hash and reading options (which name `_traces`). Raises ValueError when a
    problem's chains carry two golds."""
    return trace_accuracy(_traces)


@dataclass(frozen=True)
class SignalsRequest:
    """What the user asked "Compute signals" for: the model, the file (content hash and step
    splitting) and the chains. Kept in session state as plain values."""

    model: ModelKey
    file_hash: str
    segmenter: tuple[str, str | None]
    trace_ids: tuple[str, ...]

    def to_state(self) -> dict[str, object]:
        return {"model": list(self.model), "file_hash": self.file_hash,
                "segmenter": list(self.segmenter), "trace_ids": list(self.trace_ids)}

    @classmethod
    def from_state(cls, value: object) -> SignalsRequest | None:
        if not isinstance(value, dict):
            return None
        try:
            mode, pattern = value["segmenter"]
            return cls(model_key(value["model"]), str(value["file_hash"]),
                       (str(mode), None if pattern is None else str(pattern)),
                       tuple(str(t) for t in value["trace_ids"]))
        except (KeyError, TypeError, ValueError):
            return None


@st.cache_data(show_spinner=False, max_entries=5000)
def chain_signals(model: ModelKey, file_hash: str, segmenter: tuple[str, str | None],
                  trace_id: str, _trace: Trace) -> pd.DataFrame:
    """Per-step signals of one chain (`core.diagnose.feature_store.signal_table`), cached per
    model, file content, step splitting and chain id. `_trace` is not hashed: the other
    arguments name it."""
    loaded = get_model(*model)
    return signal_table(loaded, [_trace], batch_size=1)


def compute_signals(request: SignalsRequest, traces: Sequence[Trace],
                    progress: Progress | None = None) -> pd.DataFrame:
    """Signals of the requested chains, one chain at a time so each result is cached on its own
    and `progress(done, total)` is reported between chains (outside any cached call), (0,
    total) first."""
    by_id = {trace.id: trace for trace in traces}
    wanted = [by_id[t] for t in request.trace_ids if t in by_id]
    if progress:
        progress(0, len(wanted))
    tables = []
    for done, trace in enumerate(wanted, start=1):
        tables.append(chain_signals(request.model, request.file_hash, request.segmenter,
                                    trace.id, trace))
        if progress:
            progress(done, len(wanted))
    if not tables:
        return signal_table_columns()
    return pd.concat(tables, ignore_index=True)


def signal_table_columns() -> pd.DataFrame:
    """An empty signal table with the columns `signal_table` returns."""
    from core.diagnose.signals import SIGNAL_NAMES

    return pd.DataFrame(columns=["trace_id", "step", "text", "label", "prefix_label",
                                 "n_tokens", *SIGNAL_NAMES])


__all__ = ["SIGNALS_REQUEST_KEY", "SignalsRequest", "chain_signals", "compute_signals",
           "file_answers", "read_trace_file", "sample_files", "signal_table_columns"]
