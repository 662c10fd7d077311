"""What the dashboard keeps between reruns: the cached model, cached results, and the few small
values held in session state.

- The model lives once per process in `st.cache_resource` (`get_model`), keyed on its spec,
  device and dtype; session state holds only that key (`ModelChoice`, three strings).
- Trace files and per-step signals are cached with `st.cache_data`, keyed on the file's content
  hash (never on an object), so a rerun or another session reuses them.
- Nothing here draws on the page: callers show spinners, progress and errors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from core.data.importers import import_traces
from core.data.steps import Segmenter
from core.data.traces import Trace, TraceLoad
from core.diagnose.feature_store import signal_table
from core.runtime.models import (
    DEFAULT_SPEC,
    DEVICES,
    DTYPES,
    LoadedModel,
    LoadOptions,
    ModelLoadError,
    load_model,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_FOLDER = REPO_ROOT / "sample_traces"

MODEL_CHOICE_KEY = "model_choice"  # session state: (spec, device, dtype) of the loaded model
SIGNALS_REQUEST_KEY = "signals_request"  # session state: what "Compute signals" asked for

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ModelChoice:
    """Which model to load; all three are plain strings, so it keys caches and fits in session
    state (stored there as a tuple)."""

    spec: str = DEFAULT_SPEC
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if not self.spec.strip():
            raise ValueError("Type a model: 'default', a hub id, a local folder or a .gguf file.")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}.")

    def as_tuple(self) -> tuple[str, str, str]:
        return (self.spec, self.device, self.dtype)


@dataclass(frozen=True)
class SignalsRequest:
    """What the user asked "Compute signals" for: the model, the file (content hash and step
    splitting) and the chains. Kept in session state as a dict of strings."""

    model: tuple[str, str, str]
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
            spec, device, dtype = value["model"]
            mode, pattern = value["segmenter"]
            return cls((str(spec), str(device), str(dtype)), str(value["file_hash"]),
                       (str(mode), pattern), tuple(str(t) for t in value["trace_ids"]))
        except (KeyError, TypeError, ValueError):
            return None


# ---------------------------------------------------------------------------- model


@st.cache_resource(show_spinner=False, max_entries=1)
def get_model(spec: str, device: str, dtype: str) -> LoadedModel:
    """Load a model once per process (one at a time: a new choice evicts the old one, so two
    large models never share memory). Raises `ModelLoadError`; failures are not cached."""
    return load_model(spec, LoadOptions(device=device, dtype=dtype))


def load_error_sentence(spec: str, error: Exception) -> str:
    """One sentence for the user about a failed load; `ModelLoadError` already is one."""
    if isinstance(error, ModelLoadError | ValueError):
        return str(error)
    first = (str(error).strip().splitlines() or [""])[0][:300]
    return (f"Could not load model '{spec}' because {type(error).__name__}: {first}; "
            "try another device or dtype, or the model 'default'.")


def model_choice() -> ModelChoice | None:
    """The model the user loaded in this session, if any."""
    value = st.session_state.get(MODEL_CHOICE_KEY)
    if not value:
        return None
    try:
        return ModelChoice(*value)
    except (TypeError, ValueError):
        return None


def set_model_choice(choice: ModelChoice | None) -> None:
    if choice is None:
        st.session_state.pop(MODEL_CHOICE_KEY, None)
    else:
        st.session_state[MODEL_CHOICE_KEY] = choice.as_tuple()


def current_model() -> LoadedModel | None:
    """The loaded model of this session (a cache hit once the sidebar has loaded it)."""
    choice = model_choice()
    if choice is None:
        return None
    try:
        return get_model(*choice.as_tuple())
    except Exception:  # noqa: BLE001 - the sidebar reports load failures
        return None


# ---------------------------------------------------------------------------- traces


def content_hash(data: bytes) -> str:
    """SHA-256 of a file's bytes (hex, first 16 digits): the key of everything computed on it."""
    return hashlib.sha256(data).hexdigest()[:16]


def sample_files(folder: Path = SAMPLE_FOLDER) -> list[Path]:
    """The trace files shipped with the project (`sample_traces/*.jsonl`), sorted by name;
    fine-tuning samples (`finetune_*`) and reply journals of unfinished runs are left out, as
    are subfolders (probes, label audits)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.jsonl")
                  if not p.name.startswith("finetune_") and not p.name.endswith(".replies.jsonl"))


@st.cache_data(show_spinner=False, max_entries=16)
def read_trace_file(data: bytes, name: str, mode: str = "lines", pattern: str | None = None,
                    format: str = "auto") -> TraceLoad:
    """`core.data.importers.import_traces` on a file's bytes (any supported format; "auto" tells
    which from the first record). Bad records never raise (problems are in `.issues`); raises
    ValueError for a file whose shape fits no format, or a bad step-splitting mode or pattern."""
    return import_traces(data, format, name=name, segmenter=Segmenter(mode, pattern))


# ---------------------------------------------------------------------------- signals


@st.cache_data(show_spinner=False, max_entries=5000)
def chain_signals(model: tuple[str, str, str], file_hash: str, segmenter: tuple[str, str | None],
                  trace_id: str, _trace: Trace) -> pd.DataFrame:
    """Per-step signals of one chain (`core.diagnose.feature_store.signal_table`), cached per model, file
    content, step splitting and chain id. `_trace` is not hashed: the other arguments name it."""
    loaded = get_model(*model)
    return signal_table(loaded, [_trace], batch_size=1)


def compute_signals(request: SignalsRequest, traces: Sequence[Trace],
                    progress: Progress | None = None) -> pd.DataFrame:
    """Signals of the requested chains, one chain at a time so each result is cached on its own
    and `progress(done, total)` can be reported between chains (outside any cached call)."""
    by_id = {trace.id: trace for trace in traces}
    wanted = [by_id[t] for t in request.trace_ids if t in by_id]
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


def signals_request() -> SignalsRequest | None:
    return SignalsRequest.from_state(st.session_state.get(SIGNALS_REQUEST_KEY))


def set_signals_request(request: SignalsRequest | None) -> None:
    if request is None:
        st.session_state.pop(SIGNALS_REQUEST_KEY, None)
    else:
        st.session_state[SIGNALS_REQUEST_KEY] = request.to_state()


__all__ = [
    "MODEL_CHOICE_KEY", "SAMPLE_FOLDER", "SIGNALS_REQUEST_KEY", "ModelChoice", "SignalsRequest",
    "chain_signals", "compute_signals", "content_hash", "current_model", "get_model",
    "load_error_sentence", "model_choice", "read_trace_file", "sample_files", "set_model_choice",
    "set_signals_request", "signals_request",
]
