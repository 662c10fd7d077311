"""Training a probe on the Traces page's open file: the request a "Train probe" press keeps,
and the cached training (capture, train, calibrate: `core.diagnose.probe_training`) that
returns the probe as its two files' bytes (`probe_state.ProbeFile`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import streamlit as st

from core.data.traces import Trace
from core.diagnose.feature_store import CaptureConfig, capture_in_memory
from core.diagnose.probes import TrackerConfig
from dashboard.common.runs import Bar
from dashboard.common.state import ModelKey, get_model
from dashboard.diagnose.probe_state import ProbeFile, Reading, common_fields

TRAIN_REQUEST_KEY = "probe_train_request"  # session state: what "Train probe" asked for


@dataclass(frozen=True)
class TrainRequest:
    """A "Train probe" press: the file, the layer(s) and the options; plain values."""

    model: ModelKey
    file_hash: str
    reading: Reading
    layers: str  # "middle", one layer "15", or a sweep "all" / "4-20" / "8,12,16"
    sweep: bool
    epochs: int
    step_pooling: str
    step_input: bool

    def to_state(self) -> dict[str, Any]:
        state = asdict(self)
        state["model"], state["reading"] = list(self.model), list(self.reading)
        return state

    @classmethod
    def from_state(cls, value: object) -> TrainRequest | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(*common_fields(value), str(value["layers"]), bool(value["sweep"]),
                       int(value["epochs"]), str(value["step_pooling"]),
                       bool(value["step_input"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Trained:
    """A probe trained here: its files, and how many chains trained and validated it."""

    probe: ProbeFile
    n_train_chains: int
    n_val_chains: int


@st.cache_data(show_spinner=False, max_entries=16)
def train_here(request: TrainRequest, name: str, _traces: Sequence[Trace],
               _progress: Bar | None = None) -> Trained:
    """Capture the file's chains at the requested layer(s) and train the probes (choosing the
    layer on validation chains for a sweep); cached on the request (which names `_traces`).
    `_progress` reports the capture, then its `stage` the training. ValueError for unusable
    data."""
    from core.diagnose.probe_training import TrainConfig, train_probes
    from core.runtime.layers import parse_layers

    if _progress:
        _progress(0, 0)
    loaded = get_model(*request.model)
    text = str(loaded.n_layers // 2) if request.layers.strip() in ("", "middle") else \
        request.layers
    layers = parse_layers(text, loaded.n_layers)
    if not request.sweep:
        layers = layers[:1]
    config = TrainConfig(step_pooling=request.step_pooling, tracker=TrackerConfig(
        epochs=request.epochs, step_input=request.step_input))
    capture = capture_in_memory(loaded, list(_traces), CaptureConfig(
        layers=tuple(layers), poolings=config.poolings, batch_size=4), _progress)
    if capture.index.empty:
        raise ValueError("No chain of this file could be read by the model (too long, or steps "
                         "without tokens of their own).")
    result = train_probes(capture, layers, config,
                          _progress.stage("Training", "layer(s)") if _progress else None)
    probe = ProbeFile.of(result.bundle, f"{name}-L{result.bundle.meta.layer}")
    return Trained(probe, result.n_train_chains, result.n_val_chains)


__all__ = ["TRAIN_REQUEST_KEY", "TrainRequest", "Trained", "train_here"]
