"""Linear probes on hidden states: the step probe (the smoke detector) and the prefix tracker (the
running "has this chain gone wrong" state), their training, and their files.

Step probe: c_step_t = sigmoid(w . z_t + b) on the L2-normalised step feature z_t, fitted with
BCE + 1e-4 * ||params||^2 / 2 by full-batch LBFGS with the strong-Wolfe line search (at most 100
iterations, as in the paper's released code); whether the fit converged is recorded.

Baseline probes in the same file, fitted the same way: the global-mean-pooled probe (features:
the plain mean of every response token so far; the paper's "global mean pooling" row) and the
last-token probe (features: the state of the step's last token), each once on step labels and
once on prefix labels; and the text-only classifiers (`core.diagnose.text_baseline`).

Prefix tracker: c_prefix_t = sigmoid(u . g_t + b') on the L2-normalised global causal feature g_t
(paper mode: [g_t, c_step_t]), initialised from a plain BCE fit on prefix labels, then trained
with AdamW on, per batch of chains,
    L_anchor = mean_t w_t BCE(c_prefix_t, A_prefix_t),  w = lambda_final on a chain's last step
    L_sync   = sum_t max(0, c_step_t - c_prefix_t)^2 * c_step_t^2 / (number of steps)
    L        = L_anchor + lambda_sync * L_sync
L_sync only punishes a missed alarm (the step probe fires, the tracker lags), never a high
prefix score. Outcome-only data (no step labels) anchors only the last step and has no L_sync.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, save

from core import __version__
from core.data.atomic import atomic_path
from core.diagnose.text_baseline import (
    TextBaseline,
    text_baseline_from_parts,
    text_baseline_to_parts,
)
from core.progress import Progress

PROBE_VERSION = 2  # 2: last-token probes, the text-only baseline, LBFGS convergence ("fits")
LAST_TOKEN_POOLING = "last"


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms == 0, 1.0, norms)


@dataclass(frozen=True)
class FitReport:
    """How an LBFGS fit ended. converged: it stopped before its iteration cap, because the
    gradient (max |g| <= 1e-7) or the change in loss or step (<= 1e-9) became negligible;
    n_iter: iterations made; grad_max: max |gradient| of the objective at the end."""

    converged: bool
    n_iter: int
    grad_max: float
    loss: float


@dataclass(frozen=True, eq=False)
class LinearProbe:
    """sigmoid(w . x + b) on L2-normalised features; `extra_inputs` columns (e.g. c_step) are
    appended after normalisation. `fit` says how its LBFGS fit ended (None when it was not
    fitted by LBFGS here, e.g. read from a file)."""

    weight: np.ndarray
    bias: float
    extra_inputs: int = 0
    fit: FitReport | None = None

    @property
    def n_features(self) -> int:
        return int(self.weight.shape[0]) - self.extra_inputs

    def inputs(self, features: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        x = l2_normalize(np.asarray(features, dtype=np.float64))
        if self.extra_inputs:
            if extra is None:
                raise ValueError("This probe takes the step score as an input; pass `extra`.")
            x = np.concatenate([x, np.asarray(extra, dtype=np.float64).reshape(len(x), -1)], 1)
        return x

    def scores(self, features: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """Probabilities in [0, 1], one per row."""
        logits = self.inputs(features, extra) @ self.weight + self.bias
        return 1.0 / (1.0 + np.exp(-logits))


def _bce_l2_loss(module: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor,
                 weights: torch.Tensor, l2: float) -> torch.Tensor:
    logits = module(x).squeeze(-1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=weights)
    return loss + l2 * sum(0.5 * p.pow(2).sum() for p in module.parameters())


def fit_logistic(features: np.ndarray, labels: np.ndarray, *, l2: float = 1e-4,
                 max_iter: int = 100, sample_weight: np.ndarray | None = None,
                 extra: np.ndarray | None = None, seed: int = 0) -> LinearProbe:
    """Regularised logistic regression by full-batch LBFGS with the strong-Wolfe line search
    (the released code's fit, which uses LBFGS without a line search): minimises
    mean_i w_i BCE_i + l2 * (||w||^2 + b^2) / 2. The returned probe's `fit` records whether it
    converged within `max_iter` iterations."""
    n_extra = 0 if extra is None else np.asarray(extra).reshape(len(features), -1).shape[1]
    probe_shape = LinearProbe(np.zeros(features.shape[1] + n_extra), 0.0, n_extra)
    x = torch.from_numpy(probe_shape.inputs(features, extra))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    w = torch.ones_like(y) if sample_weight is None else torch.as_tensor(sample_weight,
                                                                           dtype=torch.float64)
    if len(np.unique(labels)) < 2:
        raise ValueError("Training labels hold a single class; a probe needs both 0 and 1.")
    torch.manual_seed(seed)
    module = torch.nn.Linear(x.shape[1], 1, dtype=torch.float64)
    max_eval = 4 * max_iter  # the iteration cap, not the evaluation cap, ends a long fit
    optimizer = torch.optim.LBFGS(module.parameters(), lr=1.0, max_iter=max_iter,
                                  max_eval=max_eval, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _bce_l2_loss(module, x, y, w, l2)
        loss.backward()
        return loss

    optimizer.step(closure)
    state = optimizer.state[module.weight]
    loss = closure()  # the objective and its gradient where the fit ended
    grads = torch.cat([p.grad.reshape(-1) for p in module.parameters() if p.grad is not None])
    n_iter, n_eval = int(state["n_iter"]), int(state["func_evals"])
    report = FitReport(converged=n_iter < max_iter and n_eval < max_eval, n_iter=n_iter,
                       grad_max=float(grads.abs().max()), loss=float(loss.detach()))
    return LinearProbe(module.weight.detach().numpy()[0].copy(), float(module.bias.detach()),
                       n_extra, report)


@dataclass(frozen=True)
class TrackerConfig:
    """Prefix-tracker training (defaults: the released code)."""

    lambda_final: float = 30.0
    lambda_sync: float = 120.0
    lr: float = 1e-3
    epochs: int = 20
    batch_chains: int = 64
    step_input: bool = False  # paper: c_step is an input at inference too; code: loss only
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lambda_final <= 0 or self.lambda_sync < 0:
            raise ValueError("lambda_final must be > 0 and lambda_sync >= 0.")
        if self.epochs < 0 or self.batch_chains < 1 or self.lr <= 0:
            raise ValueError("epochs >= 0, batch_chains >= 1 and lr > 0 are required.")


@dataclass(frozen=True, eq=False)
class ChainFeatures:
    """One chain's training inputs, steps in order. Unknown labels are NaN."""

    tracker_features: np.ndarray  # [steps, hidden] global causal feature
    step_scores: np.ndarray | None  # c_step from the frozen step probe, [steps]
    prefix_labels: np.ndarray  # [steps] floats, NaN where unknown


def anchor_weights(prefix_labels: np.ndarray, lambda_final: float) -> np.ndarray:
    """1 per step with a known prefix label, lambda_final on the last step, 0 where unknown."""
    weights = np.where(np.isnan(prefix_labels), 0.0, 1.0)
    if len(weights) and not np.isnan(prefix_labels[-1]):
        weights[-1] = lambda_final
    return weights


def tracker_loss(prefix_logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                 step_scores: torch.Tensor | None, lambda_sync: float) -> torch.Tensor:
    """L_anchor + lambda_sync * L_sync over a batch of concatenated chains (see module doc)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        prefix_logits, torch.nan_to_num(labels, nan=0.0), reduction="none")
    loss = (bce * weights).mean()
    if step_scores is not None and lambda_sync > 0:
        prefix = torch.sigmoid(prefix_logits)
        missed = torch.relu(step_scores - prefix)
        loss = loss + lambda_sync * (missed.pow(2) * step_scores.pow(2)).sum() / len(prefix)
    return loss


def train_tracker(chains: Sequence[ChainFeatures], config: TrackerConfig = TrackerConfig(),
                  progress: Progress | None = None) -> LinearProbe:
    """Fit the prefix tracker: a BCE start, then anchor + one-way sync loss (module doc)."""
    if not chains:
        raise ValueError("No chains to train the prefix tracker on.")
    use_step = config.step_input
    if use_step and any(c.step_scores is None for c in chains):
        raise ValueError("step_input needs step scores for every chain.")
    feats = np.concatenate([c.tracker_features for c in chains])
    labels = np.concatenate([c.prefix_labels for c in chains])
    weights = np.concatenate([anchor_weights(c.prefix_labels, 1.0) for c in chains])
    step_all = (np.concatenate([c.step_scores for c in chains])
                if all(c.step_scores is not None for c in chains) else None)
    extra = step_all if use_step else None
    known = weights > 0
    start = fit_logistic(feats[known], labels[known],
                         extra=None if extra is None else extra[known], seed=config.seed)
    module = torch.nn.Linear(len(start.weight), 1, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(start.weight)[None])
        module.bias.fill_(start.bias)
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr)
    rng = np.random.default_rng(config.seed)
    prepared = []
    for c in chains:
        x = torch.from_numpy(start.inputs(c.tracker_features, c.step_scores if use_step else None))
        s = None if c.step_scores is None else torch.tensor(c.step_scores, dtype=torch.float64)
        prepared.append((x, torch.tensor(c.prefix_labels, dtype=torch.float64),
                         torch.from_numpy(anchor_weights(c.prefix_labels, config.lambda_final)),
                         s))
    total = config.epochs * ((len(prepared) + config.batch_chains - 1) // config.batch_chains)
    done = 0
    for _ in range(config.epochs):
        order = rng.permutation(len(prepared))
        for lo in range(0, len(order), config.batch_chains):
            batch = [prepared[i] for i in order[lo : lo + config.batch_chains]]
            x = torch.cat([b[0] for b in batch])
            y = torch.cat([b[1] for b in batch])
            w = torch.cat([b[2] for b in batch])
            s = None if any(b[3] is None for b in batch) else torch.cat(
                [b[3] for b in batch])
            optimizer.zero_grad()
            loss = tracker_loss(module(x).squeeze(-1), y, w, s, config.lambda_sync)
            loss.backward()
            optimizer.step()
            done += 1
            if progress:
                progress(done, total)
    return LinearProbe(module.weight.detach().numpy()[0].copy(), float(module.bias.detach()),
                       start.extra_inputs, start.fit)


@dataclass(frozen=True)
class ProbeMeta:
    """The JSON sidecar of a probe file: what it was made for, how, and how well it did."""

    model: str
    model_name: str
    hidden_size: int
    layer: int
    step_pooling: str
    tracker_pooling: str
    baseline_pooling: str
    step_input: bool
    threshold: float  # prefix alarm threshold, calibrated on validation data
    step_threshold: float
    data_hash: str
    tracker: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    fits: dict[str, Any] = field(default_factory=dict)  # per part: how its LBFGS fit ended
    telltale: str = __version__
    probe_version: int = PROBE_VERSION


@dataclass(frozen=True, eq=False)
class ProbeBundle:
    """One probe file: the step probe, the prefix tracker and the baselines trained with them
    (global-mean-pooled and last-token probes, the text-only classifiers; each may be missing,
    as in files written before they existed)."""

    meta: ProbeMeta
    tracker: LinearProbe
    step: LinearProbe | None = None
    baseline_step: LinearProbe | None = None  # global-mean-pooled probe on step labels
    baseline_prefix: LinearProbe | None = None  # ... on prefix labels
    last_token_step: LinearProbe | None = None  # last-token probe on step labels
    last_token_prefix: LinearProbe | None = None  # ... on prefix labels
    text: TextBaseline | None = None

    @property
    def poolings(self) -> tuple[str, ...]:
        """Pooled features a capture must provide to score with this bundle."""
        names = [self.meta.step_pooling, self.meta.tracker_pooling, self.meta.baseline_pooling]
        if self.last_token_step is not None or self.last_token_prefix is not None:
            names.append(LAST_TOKEN_POOLING)
        return tuple(dict.fromkeys(names))

    def score_chain(self, pooled: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """c_step ("step"), c_prefix ("prefix") and the baseline probes' scores of one chain
        from its pooled features ("baseline_step", "baseline_prefix", "last_token_step",
        "last_token_prefix"; each only when the bundle has that part)."""
        out: dict[str, np.ndarray] = {}
        step = None
        if self.step is not None:
            step = out["step"] = self.step.scores(pooled[self.meta.step_pooling])
        out["prefix"] = self.tracker.scores(pooled[self.meta.tracker_pooling],
                                            step if self.tracker.extra_inputs else None)
        for name, pooling in (("baseline_step", self.meta.baseline_pooling),
                              ("baseline_prefix", self.meta.baseline_pooling),
                              ("last_token_step", LAST_TOKEN_POOLING),
                              ("last_token_prefix", LAST_TOKEN_POOLING)):
            probe: LinearProbe | None = getattr(self, name)
            if probe is not None:
                out[name] = probe.scores(pooled[pooling])
        return out

    def check_model(self, model_spec: str, hidden_size: int) -> None:
        """ValueError when this probe was made for another hidden size (a different model)."""
        if hidden_size != self.meta.hidden_size:
            raise ValueError(
                f"This probe was made for {self.meta.model_name} (hidden size "
                f"{self.meta.hidden_size}), but the model '{model_spec}' has hidden size "
                f"{hidden_size}; train a probe for this model with `telltale train`.")


PROBE_PARTS = ("step", "tracker", "baseline_step", "baseline_prefix",  # the linear parts
               "last_token_step", "last_token_prefix")


def probe_paths(path: str | Path) -> tuple[Path, Path]:
    """(NAME.safetensors, NAME.json) for NAME, NAME.safetensors or NAME.json."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def probe_to_bytes(bundle: ProbeBundle) -> tuple[bytes, bytes]:
    """(weights as safetensors bytes, the JSON sidecar's bytes): the two files of a probe."""
    tensors: dict[str, torch.Tensor] = {}
    extra_inputs: dict[str, int] = {}
    for name in PROBE_PARTS:
        probe = getattr(bundle, name)
        if probe is not None:
            tensors[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(probe.weight))
            tensors[f"{name}.bias"] = torch.tensor([probe.bias], dtype=torch.float64)
            extra_inputs[name] = probe.extra_inputs
    sidecar: dict[str, Any] = {**asdict(bundle.meta), "extra_inputs": extra_inputs}
    if bundle.text is not None:
        text_tensors, sidecar["text_baseline"] = text_baseline_to_parts(bundle.text)
        tensors.update(text_tensors)
    return save(tensors), (json.dumps(sidecar, indent=2, default=float) + "\n").encode("utf-8")


def save_probe(path: str | Path, bundle: ProbeBundle) -> tuple[Path, Path]:
    """Write weights (safetensors) and the JSON sidecar, each atomically. Never pickle."""
    weights_path, meta_path = probe_paths(path)
    weights, sidecar = probe_to_bytes(bundle)
    with atomic_path(weights_path) as tmp:
        tmp.write_bytes(weights)
    with atomic_path(meta_path) as tmp:
        tmp.write_bytes(sidecar)
    return weights_path, meta_path


def _meta_from_sidecar(sidecar_bytes: bytes, sidecar_name: str
                       ) -> tuple[ProbeMeta, dict, Any]:
    """The sidecar's ProbeMeta, its extra_inputs and its text_baseline object (None when
    absent); ValueError naming the file and field."""
    try:
        sidecar = json.loads(sidecar_bytes.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"Probe sidecar {sidecar_name} is not valid JSON ({err}).") from None
    if not isinstance(sidecar, dict):
        raise ValueError(f"Probe sidecar {sidecar_name} must be a JSON object (the file "
                         f"`telltale train` writes), not a {type(sidecar).__name__}.")
    extra_inputs = sidecar.pop("extra_inputs", {})
    text_baseline = sidecar.pop("text_baseline", None)
    if not isinstance(extra_inputs, dict) or not all(
            isinstance(v, int) and 0 <= v <= 1 for v in extra_inputs.values()):
        raise ValueError(f"Probe sidecar {sidecar_name}, field 'extra_inputs': expected an "
                         "object of 0/1 counts per probe part.")
    version = sidecar.get("probe_version", 0)
    if isinstance(version, int) and version > PROBE_VERSION:
        raise ValueError(f"Probe sidecar {sidecar_name} has probe_version {version}, newer "
                         f"than this Telltale reads ({PROBE_VERSION}).")
    try:
        meta = ProbeMeta(**sidecar)
    except TypeError as err:
        raise ValueError(f"Probe sidecar {sidecar_name} is not valid: {err}.") from None
    for name, kind in _META_TYPES.items():
        value = getattr(meta, name)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            expected = "a number" if isinstance(kind, tuple) else kind.__name__
            raise ValueError(f"Probe sidecar {sidecar_name}, field '{name}': expected "
                             f"{expected}, got {json.dumps(value)[:80]}.")
    if meta.hidden_size < 1 or meta.layer < 0:
        raise ValueError(f"Probe sidecar {sidecar_name}: hidden_size must be positive and "
                         "layer not negative.")
    for name in ("threshold", "step_threshold"):
        if not 0.0 <= float(getattr(meta, name)) <= 1.0:
            raise ValueError(f"Probe sidecar {sidecar_name}, field '{name}': must lie in [0, 1].")
    return meta, extra_inputs, text_baseline


_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": str, "model_name": str, "hidden_size": int, "layer": int, "step_pooling": str,
    "tracker_pooling": str, "baseline_pooling": str, "step_input": bool,
    "threshold": (int, float), "step_threshold": (int, float), "data_hash": str,
    "tracker": dict, "metrics": dict, "fits": dict}


def probe_from_bytes(weights: bytes, sidecar: bytes, name: str = "probe") -> ProbeBundle:
    """A probe from its two files' bytes (`name` names the files in error messages).

    Raises ValueError with one sentence for anything that is not a probe file pair: a sidecar
    that is not the JSON `telltale train` writes, weights that are not safetensors, or parts
    whose shapes, dtypes or values disagree with the sidecar.
    """
    weights_name, sidecar_name = f"{name}.safetensors", f"{name}.json"
    meta, extra_inputs, text_sidecar = _meta_from_sidecar(sidecar, sidecar_name)
    try:
        tensors = load(weights)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{weights_name} is not a Telltale probe's weights file "
                         f"({type(err).__name__}: {first}); a probe is the .safetensors file "
                         "and the .json sidecar that `telltale train` writes.") from None
    parts: dict[str, LinearProbe] = {}
    for part in PROBE_PARTS:
        if f"{part}.weight" not in tensors:
            continue
        weight, bias = tensors[f"{part}.weight"], tensors.get(f"{part}.bias")
        expected = meta.hidden_size + int(extra_inputs.get(part, 0))
        if not weight.is_floating_point() or weight.shape != (expected,):
            raise ValueError(f"Probe {weights_name}: '{part}' has weights of shape "
                             f"{tuple(weight.shape)} and dtype {weight.dtype}, expected "
                             f"({expected},) floats for hidden size {meta.hidden_size}.")
        if bias is None or not bias.is_floating_point() or bias.shape != (1,):
            raise ValueError(f"Probe {weights_name}: '{part}' needs one floating-point bias.")
        if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
            raise ValueError(f"Probe {weights_name}: '{part}' holds NaN or infinite values.")
        parts[part] = LinearProbe(weight.numpy().astype(np.float64), float(bias[0]),
                                  int(extra_inputs.get(part, 0)))
    if "tracker" not in parts:
        raise ValueError(f"Probe {weights_name} holds no prefix tracker.")
    text = None if text_sidecar is None else text_baseline_from_parts(tensors, text_sidecar, name)
    return ProbeBundle(meta=meta, text=text, **parts)


def load_probe(path: str | Path) -> ProbeBundle:
    """Read a probe file pair; FileNotFoundError / ValueError say which file and what is wrong."""
    weights_path, meta_path = probe_paths(path)
    for file in (weights_path, meta_path):
        if not file.is_file():
            raise FileNotFoundError(f"Probe file {file} does not exist (a probe is a "
                                    ".safetensors file with a .json sidecar of the same name).")
    return probe_from_bytes(weights_path.read_bytes(), meta_path.read_bytes(),
                            str(weights_path.with_suffix("")))
