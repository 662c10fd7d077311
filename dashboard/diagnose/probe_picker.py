"""The Traces page's probe section: pick a probe (shipped, uploaded, or trained here on the
open file), score the file with it, and hand the scored file to `probe_panels`.

Training and scoring are `dashboard.common.runs.Run`s: a press keeps a small request in session
state, the sidebar loads its model, and the cached work runs under a progress bar.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from core.data.traces import Trace
from core.diagnose.evaluation import ScoredChain
from core.diagnose.probe_training import TRAIN_POOLINGS
from core.diagnose.probes import ProbeBundle
from dashboard.common.runs import Run
from dashboard.common.state import ModelKey
from dashboard.common.widgets import download
from dashboard.diagnose import probe_state as dstate
from dashboard.diagnose.probe_state import ProbeFile, Reading, ScoreRequest
from dashboard.diagnose.train_state import TRAIN_REQUEST_KEY, TrainRequest, train_here

SOURCE_KEY = "probe_source"
SHIPPED_KEY = "probe_shipped"
WEIGHTS_KEY = "probe_upload_weights"
SIDECAR_KEY = "probe_upload_sidecar"
TRAIN_MODE_KEY = "probe_train_mode"
TRAIN_LAYER_KEY = "probe_train_layer"
TRAIN_SWEEP_KEY = "probe_train_sweep_layers"
TRAIN_EPOCHS_KEY = "probe_train_epochs"
TRAIN_POOLING_KEY = "probe_train_pooling"
TRAIN_INPUT_KEY = "probe_train_step_input"
SOURCES = {"shipped": "shipped with Telltale", "upload": "upload a probe",
           "train": "train one here on this file"}

TRAIN = Run(TRAIN_REQUEST_KEY, "Train probe", noun="training")
SCORE = Run(dstate.SCORE_REQUEST_KEY, "Score with this probe", noun="scoring")


@dataclass(frozen=True, eq=False)
class ScoredFile:
    """A trace file scored with a probe: what the panels draw from."""

    request: ScoreRequest
    probe: ProbeFile
    bundle: ProbeBundle
    traces: dict[str, Trace]
    chains: list[ScoredChain]
    steps: pd.DataFrame  # one row per scored step, `probe_charts.STEP_COLUMNS`

    @property
    def key(self) -> str:
        return self.request.key

    @property
    def threshold(self) -> float:
        return float(self.bundle.meta.threshold)

    @property
    def step_threshold(self) -> float:
        return float(self.bundle.meta.step_threshold)


def _fmt(value: object) -> str:
    return "n/a" if not isinstance(value, int | float) else f"{float(value):.3f}"


def probe_card(probe: ProbeFile, bundle: ProbeBundle) -> None:
    """What the probe is: model, layer, features, thresholds, validation quality."""
    meta = bundle.meta
    validation = meta.metrics.get("validation") or {}
    parts = "step probe + prefix tracker" if bundle.step is not None else \
        "prefix tracker only (no step labels in its training data)"
    st.caption(
        f"**{probe.name}**: {parts} for **{meta.model_name}** (hidden size {meta.hidden_size}), "
        f"layer **{meta.layer}**, step feature `{meta.step_pooling}`, tracker feature "
        f"`{meta.tracker_pooling}`; alarm threshold **{meta.threshold:.3f}**, step threshold "
        f"**{meta.step_threshold:.3f}** (calibrated on validation data). Validation: step "
        f"AUROC {_fmt(validation.get('step_auroc'))}, final-prefix AUROC "
        f"{_fmt(validation.get('final_auroc'))}.")


def uploaded_probe() -> ProbeFile | None:
    left, right = st.columns(2)
    weights = left.file_uploader("Probe weights (.safetensors)", type=["safetensors"],
                                 key=WEIGHTS_KEY)
    sidecar = right.file_uploader("Probe sidecar (.json)", type=["json"], key=SIDECAR_KEY,
                                  help="The JSON file `telltale train` writes beside the "
                                       "weights, with the same name.")
    if weights is None or sidecar is None:
        st.info("Upload both files of a probe: NAME.safetensors and NAME.json "
                "(`telltale train --out NAME` writes them).")
        return None
    name = weights.name.rsplit(".", 1)[0]
    return ProbeFile(name, weights.getvalue(), sidecar.getvalue())


def train_form(file_hash: str, reading: Reading) -> None:
    """Layer or sweep and a few options, and the "Train probe" button."""
    mode = st.radio("Layer", ["one layer", "sweep layers"], key=TRAIN_MODE_KEY,
                    horizontal=True, help="A sweep trains at every listed layer and keeps the "
                    "best on validation chains (split off by problem, never test data).")
    left, mid, right = st.columns(3)
    if mode == "one layer":
        layer = left.number_input("Layer", min_value=0, value=None, step=1,
                                  key=TRAIN_LAYER_KEY, placeholder="middle")
        layers = "middle" if layer is None else str(int(layer))
    else:
        layers = left.text_input("Layers to sweep", value="all", key=TRAIN_SWEEP_KEY,
                                 help="'all', a range '4-20', or a list '8,12,16'.")
    epochs = mid.number_input("Tracker epochs", min_value=1, max_value=200, value=20,
                              key=TRAIN_EPOCHS_KEY)
    pooling = right.selectbox("Step feature", TRAIN_POOLINGS, key=TRAIN_POOLING_KEY,
                              help="exp: the paper's exponential pooling (k = 1); exp3: the "
                                   "released code's k = 3; mean; last token.")
    step_input = st.checkbox("Feed the step score to the tracker (paper); off: only in its loss "
                             "(released code)", key=TRAIN_INPUT_KEY)

    def make(model: ModelKey) -> TrainRequest:
        return TrainRequest(model, file_hash, reading, layers, mode == "sweep layers",
                            int(epochs), str(pooling), bool(step_input))

    TRAIN.button(make)


def run_training(file_hash: str, reading: Reading, traces: list[Trace], stem: str) -> None:
    """The training asked for on this file (cached: a rerun finds it again): keep the probe for
    this session and say how it went."""
    request = TRAIN.request(TrainRequest.from_state)
    if request is None or request.file_hash != file_hash or request.reading != reading:
        return
    trained = TRAIN.result(request, lambda bar: train_here(request, stem, traces, bar),
                           "Reading the chains with the model", "chain(s)")
    if trained is None:
        return
    probe = trained.probe
    dstate.keep_trained(probe)
    st.session_state[dstate.TRAINED_KEY] = {"hash": probe.hash, "name": probe.name}
    st.success(f"Trained {probe.name} on {trained.n_train_chains} chains (validation: "
               f"{trained.n_val_chains} chains of other problems).")


def trained_probe() -> ProbeFile | None:
    """The probe trained here in this session, with its two downloads."""
    record = st.session_state.get(dstate.TRAINED_KEY)
    if not isinstance(record, dict):
        return None
    probe = dstate.trained_store().get(str(record.get("hash")))
    if probe is None:
        st.info("The probe trained earlier is gone (the app restarted); train it again.")
        return None
    left, right = st.columns(2)
    download("Download the trained probe weights (.safetensors)", probe.weights,
             f"{probe.name}.safetensors", "application/octet-stream", where=left)
    download("Download its sidecar (.json)", probe.sidecar, f"{probe.name}.json",
             "application/json", where=right)
    return probe


def choose_probe(file_hash: str, reading: Reading, traces: list[Trace],
                 stem: str) -> tuple[ProbeFile, ProbeBundle] | None:
    """The probe to score with (and its parsed bundle), or None with a note saying why."""
    shipped = {p.stem: p for p in dstate.shipped_probes()}
    sources = [s for s in SOURCES if s != "shipped" or shipped]
    source = st.radio("Probe", sources, key=SOURCE_KEY, horizontal=True,
                      format_func=lambda s: SOURCES[s])
    if not shipped:
        st.caption("No probe ships in sample_traces/probes/ yet: upload one, or train one here.")
    probe: ProbeFile | None
    if source == "shipped":
        name = st.selectbox("Shipped probe", list(shipped), key=SHIPPED_KEY)
        probe = dstate.read_probe_file(shipped[name])
    elif source == "upload":
        probe = uploaded_probe()
    else:
        with st.container(border=True):
            train_form(file_hash, reading)
            run_training(file_hash, reading, traces, stem)
            probe = trained_probe()
            if probe is None:
                st.caption("Trains the step probe and prefix tracker on this file's labelled "
                           "chains (a share of its problems held out to calibrate the "
                           "thresholds), with the model in the sidebar.")
    if probe is None:
        return None
    try:
        bundle = dstate.load_bundle(probe)
    except ValueError as error:
        st.error(str(error))
        return None
    probe_card(probe, bundle)
    return probe, bundle


def current_scores(file_hash: str, reading: Reading, probe: ProbeFile, bundle: ProbeBundle,
                   traces: list[Trace]) -> ScoredFile | None:
    """The file's probe scores (computed with a progress bar, or from the cache), or None with a
    note saying what to do."""
    request = SCORE.request(ScoreRequest.from_state)
    if request is None or (request.file_hash, request.reading, request.probe_hash) != (
            file_hash, reading, probe.hash):
        st.info("Press **Score with this probe** to score every step of this file.")
        return None
    scored = SCORE.result(request, lambda bar: dstate.score_file(request, traces, bundle, bar),
                          "Scoring chains with the probe", "block(s) of chains")
    if scored is None:
        return None
    chains, skipped = scored
    if skipped:
        st.caption(f"{len(skipped)} chain(s) left out: " + "; ".join(skipped[:5]))
    if not chains:
        st.warning("No chain of this file could be scored (too long for the model, or a step "
                   "without tokens of its own).")
        return None
    steps = dstate.step_table(request.key, chains, traces, float(bundle.meta.threshold),
                              float(bundle.meta.step_threshold))
    return ScoredFile(request, probe, bundle, {t.id: t for t in traces}, chains, steps)


def probe_section(file_hash: str, reading: Reading, traces: list[Trace],
                  stem: str) -> ScoredFile | None:
    """The whole section: choose, score; returns the scored file when there is one."""
    chosen = choose_probe(file_hash, reading, traces, stem)
    if chosen is None:
        return None
    probe, bundle = chosen
    SCORE.button(lambda model: ScoreRequest(model, file_hash, reading, probe.hash))
    return current_scores(file_hash, reading, probe, bundle, traces)
