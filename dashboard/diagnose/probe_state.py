"""What the Traces page's probe view computes and keeps, beside `trace_state`: probe files
(shipped, uploaded or trained here), probe scores of a file, per-token scores and reports.

- A probe is held as its two files' bytes (`ProbeFile`) and named by their content hash; the
  parsed `ProbeBundle` is cached on that hash (`core.diagnose.probes.probe_from_bytes`, no file
  written). Probes trained here live in a process-wide store (`st.cache_resource`), session state
  holds only their hash.
- Scores are cached with `st.cache_data`, keyed on the model, the trace file's content hash and
  reading options, and the probe's hash, per block of chains, so a rerun, another chain or
  another session reuses them, and progress is reported between blocks. (Training a probe here
  is `train_state`.)
- Nothing here draws on the page; the maths is `core` (capture, score_capture, step_phases,
  evaluation_report, roc_curves, token_scores).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.data.traces import Trace
from core.diagnose.evaluation import (
    RocCurve,
    ScoredChain,
    TokenScore,
    answer_accuracy,
    evaluation_report,
    roc_curves,
    score_capture,
    scores_table,
    step_phases,
    token_scores,
)
from core.diagnose.feature_store import CaptureConfig, capture_in_memory
from core.diagnose.probes import ProbeBundle, probe_from_bytes, probe_to_bytes
from core.diagnose.report import EvaluationReport
from core.progress import Progress
from dashboard.common.state import SAMPLE_FOLDER, ModelKey, content_hash, get_model, model_key

PROBE_FOLDER = SAMPLE_FOLDER / "probes"
SCORE_REQUEST_KEY = "probe_score_request"  # session state: what "Score" asked for
TRAINED_KEY = "probe_trained"  # session state: {"hash", "name"} of the probe trained here
BLOCK_CHAINS = 8  # chains per cached scoring block (progress is reported between blocks)
STORE_SIZE = 16  # probes trained here kept per process
BOOTSTRAP_RESAMPLES = 200  # AUROC intervals on the corpus view (resampling whole chains)

Reading = tuple[str, str, str | None]  # (format, step-splitting mode, pattern)


@dataclass(frozen=True)
class ProbeFile:
    """A probe as its two files: weights (safetensors) and the JSON sidecar."""

    name: str
    weights: bytes
    sidecar: bytes

    @property
    def hash(self) -> str:
        return content_hash(self.weights + b"\0" + self.sidecar)

    @classmethod
    def of(cls, bundle: ProbeBundle, name: str) -> ProbeFile:
        """A bundle as its two files' bytes (`core.diagnose.probes.probe_to_bytes`)."""
        weights, sidecar = probe_to_bytes(bundle)
        return cls(name, weights, sidecar)


def shipped_probes(folder: Path = PROBE_FOLDER) -> list[Path]:
    """Probe weight files in sample_traces/probes/ that have their .json sidecar, by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.safetensors") if p.with_suffix(".json").is_file())


def read_probe_file(weights_path: Path) -> ProbeFile:
    return ProbeFile(weights_path.stem, weights_path.read_bytes(),
                     weights_path.with_suffix(".json").read_bytes())


@st.cache_data(show_spinner=False, max_entries=32)
def probe_bundle(probe_hash: str, _weights: bytes, _sidecar: bytes,
                 _name: str = "probe") -> ProbeBundle:
    """Parse a probe from its files' bytes (cached on their hash; `_name` only names the files
    in error messages). Raises ValueError with one sentence for anything that is not a probe
    file pair."""
    return probe_from_bytes(_weights, _sidecar, _name)


def load_bundle(probe: ProbeFile) -> ProbeBundle:
    return probe_bundle(probe.hash, probe.weights, probe.sidecar, probe.name)


@st.cache_resource(show_spinner=False)
def trained_store() -> dict[str, ProbeFile]:
    """Probes trained in this process, by hash (the newest STORE_SIZE)."""
    return {}


def keep_trained(probe: ProbeFile) -> None:
    store = trained_store()
    store.pop(probe.hash, None)
    store[probe.hash] = probe
    while len(store) > STORE_SIZE:
        store.pop(next(iter(store)))


# ---------------------------------------------------------------------------- requests


def common_fields(value: dict[str, Any]) -> tuple[ModelKey, str, Reading]:
    """(model, file_hash, reading) of a request kept in session state; raises on a bad shape."""
    fmt, mode, pattern = value["reading"]
    return (model_key(value["model"]), str(value["file_hash"]),
            (str(fmt), str(mode), None if pattern is None else str(pattern)))


@dataclass(frozen=True)
class ScoreRequest:
    """What "Score with this probe" asked for; kept in session state as plain values."""

    model: ModelKey
    file_hash: str
    reading: Reading
    probe_hash: str

    def to_state(self) -> dict[str, Any]:
        return {"model": list(self.model), "file_hash": self.file_hash,
                "reading": list(self.reading), "probe_hash": self.probe_hash}

    @classmethod
    def from_state(cls, value: object) -> ScoreRequest | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(*common_fields(value), str(value["probe_hash"]))
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def key(self) -> str:
        """A short name of this scoring, for widget keys and caches."""
        return content_hash(json.dumps(self.to_state()).encode())


# ---------------------------------------------------------------------------- scoring


@st.cache_data(show_spinner=False, max_entries=4000)
def score_block(model: ModelKey, file_hash: str, reading: Reading, probe_hash: str,
                trace_ids: tuple[str, ...], _traces: Sequence[Trace],
                _bundle: ProbeBundle) -> tuple[list[ScoredChain], list[str]]:
    """Probe scores of a few chains (cached; the other arguments name `_traces` and
    `_bundle`): the scored chains, and why any chain was left out."""
    loaded = get_model(*model)
    config = CaptureConfig(layers=(_bundle.meta.layer,), poolings=_bundle.poolings,
                           batch_size=4)
    capture = capture_in_memory(loaded, list(_traces), config)
    skipped = [str(reason) for reason in capture.manifest.get("skipped", [])]
    if capture.index.empty:
        return [], skipped
    return score_capture(_bundle, capture), skipped


def score_file(request: ScoreRequest, traces: Sequence[Trace], bundle: ProbeBundle,
               progress: Progress | None = None) -> tuple[list[ScoredChain], list[str]]:
    """Scores of every chain of a file, block by block (each cached on its own), with
    `progress(blocks done, total)` between blocks, (0, total) first."""
    loaded = get_model(*request.model)
    bundle.check_model(request.model[0], loaded.hidden_size)
    if bundle.meta.layer >= loaded.n_layers:
        raise ValueError(f"This probe reads layer {bundle.meta.layer}, but the model has "
                         f"{loaded.n_layers} layers.")
    chains: list[ScoredChain] = []
    skipped: list[str] = []
    blocks = [list(traces[i : i + BLOCK_CHAINS]) for i in range(0, len(traces), BLOCK_CHAINS)]
    if progress:
        progress(0, len(blocks))
    for done, block in enumerate(blocks, start=1):
        got, left_out = score_block(request.model, request.file_hash, request.reading,
                                    request.probe_hash, tuple(t.id for t in block), block,
                                    bundle)
        chains.extend(got)
        skipped.extend(left_out)
        if progress:
            progress(done, len(blocks))
    return chains, skipped


@st.cache_data(show_spinner=False, max_entries=64)
def step_table(score_key: str, _chains: Sequence[ScoredChain], _traces: Sequence[Trace],
               threshold: float, step_threshold: float) -> pd.DataFrame:
    """One row per scored step (`probe_charts.STEP_COLUMNS`): scores, alarm, labels, step text
    and phase ("" without a step probe)."""
    table = scores_table(_chains, threshold)
    if table.empty:
        return pd.DataFrame(columns=["trace_id", "step", "text", "step_score", "prefix_score",
                                     "alarm", "label", "prefix_label", "phase"])
    texts = {t.id: [s.text for s in t.steps] for t in _traces}
    table["text"] = [texts[tid][step] for tid, step in zip(table["trace_id"], table["step"],
                                                           strict=True)]
    phases: list[str] = []
    for chain in _chains:
        if chain.step_scores is None:
            phases.extend([""] * chain.n_steps)
        else:
            phases.extend(step_phases(chain.step_scores, chain.prefix_scores, step_threshold,
                                      threshold))
    table["phase"] = phases
    table["step_score"] = pd.to_numeric(table["step_score"], errors="coerce")
    return table


@st.cache_data(show_spinner=False, max_entries=64)
def file_report(score_key: str, k: int, _chains: Sequence[ScoredChain], threshold: float,
                step_threshold: float | None,
                _traces: Sequence[Trace]) -> EvaluationReport:
    """`core.diagnose.evaluation.evaluation_report` of a scored file, with bootstrap intervals
    and (from `_traces`, the whole file, as `telltale evaluate` does) the answer accuracy with
    its chance rate; `score_key` names the file, so `_chains` and `_traces` are not hashed."""
    try:
        answers = answer_accuracy(_traces)
    except ValueError:  # a problem whose chains carry two golds: no accuracy (the summary says)
        answers = None
    return evaluation_report(_chains, threshold, step_threshold, k=k,
                             n_resamples=BOOTSTRAP_RESAMPLES, answers=answers)


def report_json(report: EvaluationReport) -> str:
    """The report as `telltale evaluate --json` writes it."""
    return json.dumps(report.as_dict(), indent=2, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return float(value)


@st.cache_data(show_spinner=False, max_entries=64)
def file_roc_curves(score_key: str, level: str,
                    _chains: Sequence[ScoredChain]) -> dict[str, RocCurve]:
    return roc_curves(_chains, level)


@st.cache_data(show_spinner=False, max_entries=256)
def chain_token_scores(model: ModelKey, file_hash: str, reading: Reading, probe_hash: str,
                       trace_id: str, _trace: Trace, _bundle: ProbeBundle) -> list[TokenScore]:
    """`core.diagnose.evaluation.token_scores` of one chain (one forward pass), cached."""
    return token_scores(get_model(*model), _bundle, _trace)


__all__ = [
    "BLOCK_CHAINS", "PROBE_FOLDER", "SCORE_REQUEST_KEY", "TRAINED_KEY", "ProbeFile",
    "ScoreRequest", "chain_token_scores", "common_fields", "file_report", "file_roc_curves",
    "keep_trained", "load_bundle", "probe_bundle", "read_probe_file", "report_json",
    "score_block", "score_file", "shipped_probes", "step_table", "trained_store",
]
