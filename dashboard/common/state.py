"""What every page shares between reruns: the cached model and the few small values held in
session state about it.

- The model lives once per process in `st.cache_resource` (`get_model`), keyed on its spec,
  device and dtype; session state holds only that key (`ModelChoice`, three strings).
- Results are cached by each layer's own state module with `st.cache_data`, keyed on content
  hashes (`content_hash`) and settings, never on an object.
- Nothing here draws on the page: callers show spinners, progress and errors.
"""

from __future__ import annotations

import gc
import hashlib
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

from core.runtime.access import ModelAccess
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

ModelKey = tuple[str, str, str]  # (spec, device, dtype): names a model in caches and requests
NO_MODEL: ModelKey = ("", "", "")  # a request's model before a press fills it in


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

    def as_tuple(self) -> ModelKey:
        return (self.spec, self.device, self.dtype)


# ---------------------------------------------------------------------------- model


@st.cache_resource(show_spinner=False, max_entries=1)
def get_model(spec: str, device: str, dtype: str) -> LoadedModel:
    """Load a model once per process (one at a time: a new choice evicts the old one, so two
    large models never share memory). Raises `ModelLoadError`; failures are not cached.

    The app is a server: a typed spec that names a local path must lie under the allowed
    folders (`core.runtime.access`), and a model's own repository code never runs
    (trust_remote_code stays off whatever is typed)."""
    ModelAccess.from_environment().check(spec)
    return load_model(spec, LoadOptions(device=device, dtype=dtype, trust_remote_code=False))


def unload_model() -> None:
    """Free the process's model (every session loads it again on its next use)."""
    get_model.clear()
    set_model_choice(None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def listening_beyond_this_machine() -> bool:
    """True when the server listens on an address other machines can reach."""
    address = str(st.get_option("server.address") or "")
    return address not in ("127.0.0.1", "localhost", "::1")


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


def model_key(value: object) -> ModelKey:
    """A `ModelKey` back from plain values (session state holds it as a list); ValueError for
    anything else."""
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ValueError(f"Not a model (spec, device, dtype): {value!r}.")
    spec, device, dtype = value
    return (str(spec), str(device), str(dtype))


def content_hash(data: bytes) -> str:
    """SHA-256 of a file's bytes (hex, first 16 digits): the key of everything computed on it."""
    return hashlib.sha256(data).hexdigest()[:16]


__all__ = [
    "MODEL_CHOICE_KEY", "NO_MODEL", "REPO_ROOT", "SAMPLE_FOLDER", "ModelChoice", "ModelKey",
    "content_hash", "current_model", "get_model", "load_error_sentence", "model_choice",
    "listening_beyond_this_machine", "model_key", "set_model_choice", "unload_model",
]
