"""Capture a trace file into a folder of pooled step features, and read that folder back as one.

Layout (one sub-folder per shard, so a cluster's array job can run shards in parallel):

    OUT/shard-00000-of-00004/manifest.json         model, layers, poolings, trace-file hash
    OUT/shard-00000-of-00004/chunk-00000.safetensors  "L{layer}.{pooling}" -> [steps, hidden]
    OUT/shard-00000-of-00004/chunk-00000.parquet      one row per step: ids, labels, signals,
                                                      the step's text

A shard holds every N-th chain (chain i goes to shard i % N). Chunks are written atomically,
tensors first, the index last; a chunk whose index exists is done, so a rerun resumes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from core import __version__
from core.data.atomic import atomic_path, atomic_write_text, remove_leftovers
from core.data.traces import Trace
from core.diagnose.encode import encode_trace
from core.diagnose.signals import SIGNAL_NAMES
from core.diagnose.step_forward import forward_steps
from core.progress import Progress
from core.runtime.layers import resolve_layers
from core.runtime.models import LoadedModel
from core.runtime.pooling import POOLINGS, check_poolings

STORE_VERSION = 2  # 2: the index holds each step's text (the text-only baseline reads it)
CHUNK_CHAINS = 64


@dataclass(frozen=True)
class CaptureConfig:
    """What to capture. `shard` = (index, count): this run takes chains with i % count == index."""

    layers: tuple[int, ...]
    poolings: tuple[str, ...] = POOLINGS
    batch_size: int = 4
    shard: tuple[int, int] = (0, 1)
    max_tokens: int = 2048

    def __post_init__(self) -> None:
        check_poolings(self.poolings)
        index, count = self.shard
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"Shard {index}/{count} is invalid: use i/N with 0 <= i < N.")
        if self.batch_size < 1:
            raise ValueError(f"Batch size must be at least 1, got {self.batch_size}.")
        if not self.layers:
            raise ValueError("Give at least one layer to capture.")


@dataclass(frozen=True)
class CaptureSummary:
    out_dir: Path
    n_chains: int
    n_steps: int
    chunks_written: int
    chunks_skipped: int
    skipped_chains: list[str] = field(default_factory=list)


def parse_shard(text: str) -> tuple[int, int]:
    """'i/N' -> (i, N)."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"Shard '{text}' must look like i/N, e.g. 0/4.") from None
    CaptureConfig(layers=(0,), shard=(index, count))  # validates
    return index, count


def traces_hash(traces: Sequence[Trace]) -> str:
    """A short content hash of the chains (ids, prompts, responses, labels)."""
    digest = hashlib.sha256()
    for trace in traces:
        digest.update(json.dumps([trace.id, trace.prompt, trace.response, trace.step_labels,
                                  trace.is_correct]).encode())
    return digest.hexdigest()[:16]


def _shard_dir(out_dir: Path, shard: tuple[int, int]) -> Path:
    return out_dir / f"shard-{shard[0]:05d}-of-{shard[1]:05d}"


def _index_rows(trace: Trace, spans: Sequence[tuple[int, int]],
                signals: list[dict[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for step, (start, end) in enumerate(spans):
        row: dict[str, Any] = {
            "trace_id": trace.id, "problem_id": trace.problem_id or trace.prompt, "step": step,
            "n_steps": len(spans), "n_tokens": end - start, "label": trace.steps[step].label,
            "prefix_label": trace.steps[step].prefix_label, "is_correct": trace.is_correct,
            "text": trace.steps[step].text,
        }
        row.update(signals[step] if signals else {})
        rows.append(row)
    return rows


@dataclass(frozen=True)
class BatchCapture:
    """One batch's output: index rows (one per step) and pooled vectors "L{layer}.{pooling}"."""

    rows: list[dict[str, Any]]
    tensors: dict[str, torch.Tensor]
    skipped: list[str]


def capture_batch(loaded: LoadedModel, traces: Sequence[Trace], layers: Sequence[int],
                  poolings: Sequence[str], max_tokens: int = 2048) -> BatchCapture:
    """One teacher-forced forward over a batch of traces. A trace that cannot be laid out (its
    first step past `max_tokens`, a step without a token of its own) is left out and its reason
    listed in `skipped`."""
    encoded, kept, skipped = [], [], []
    for trace in traces:
        try:
            encoded.append(encode_trace(loaded.tokenizer, trace, max_tokens))
            kept.append(trace)
        except ValueError as err:  # too long, or a step without tokens: say which and why
            skipped.append(str(err))
    rows: list[dict[str, Any]] = []
    parts: dict[str, list[torch.Tensor]] = {}
    if encoded:
        result = forward_steps(loaded, encoded, layers, poolings)
        for b, (trace, enc) in enumerate(zip(kept, encoded, strict=True)):
            rows.extend(_index_rows(trace, enc.step_spans, result.signals[b]))
            for (layer, method), per_seq in result.pooled.items():
                parts.setdefault(f"L{layer}.{method}", []).append(per_seq[b])
    tensors = {k: torch.cat(v).contiguous() for k, v in parts.items()}
    return BatchCapture(rows, tensors, skipped)


def _capture_chunk(loaded: LoadedModel, chunk: Sequence[Trace], layers: Sequence[int],
                   config: CaptureConfig, tick: Callable[[int], None]) -> BatchCapture:
    """Capture a list of traces batch by batch, calling `tick(n)` after each batch of n."""
    rows: list[dict[str, Any]] = []
    parts: dict[str, list[torch.Tensor]] = {}
    skipped: list[str] = []
    for lo in range(0, len(chunk), config.batch_size):
        batch = capture_batch(loaded, chunk[lo : lo + config.batch_size], layers,
                              config.poolings, config.max_tokens)
        rows.extend(batch.rows)
        skipped.extend(batch.skipped)
        for name, tensor in batch.tensors.items():
            parts.setdefault(name, []).append(tensor)
        tick(len(chunk[lo : lo + config.batch_size]))
    return BatchCapture(rows, {k: torch.cat(v) for k, v in parts.items()}, skipped)


def _counter(total: int, progress: Progress | None) -> Callable[[int], None]:
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    return tick


def capture_traces(loaded: LoadedModel, traces: Sequence[Trace], out_dir: str | Path,
                   config: CaptureConfig, progress: Progress | None = None) -> CaptureSummary:
    """Capture this shard's chains into `out_dir`: pooled step vectors and signals, resumable."""
    layers = tuple(resolve_layers(config.layers, loaded.n_layers))
    shard_dir = _shard_dir(Path(out_dir), config.shard)
    mine = [t for i, t in enumerate(traces) if i % config.shard[1] == config.shard[0]]
    manifest = _manifest(loaded, layers, config, traces)
    manifest["n_chains"] = len(mine)
    manifest_path = shard_dir / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old != manifest:
            changed = sorted(k for k in manifest if old.get(k) != manifest[k])
            raise ValueError(f"{shard_dir} holds a capture with other settings "
                             f"({', '.join(changed)}); use a new --out folder or the same "
                             "settings to resume.")
        remove_leftovers(shard_dir)  # of chunks a killed run was writing
    else:
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    tick = _counter(len(mine), progress)
    written = skipped_chunks = n_steps = 0
    skipped: list[str] = []
    for number, lo in enumerate(range(0, len(mine), CHUNK_CHAINS)):
        chunk = mine[lo : lo + CHUNK_CHAINS]
        index_path = shard_dir / f"chunk-{number:05d}.parquet"
        if index_path.exists():
            skipped_chunks += 1
            tick(len(chunk))
            continue
        captured = _capture_chunk(loaded, chunk, layers, config, tick)
        with atomic_path(shard_dir / f"chunk-{number:05d}.safetensors") as tmp:
            save_file(captured.tensors, str(tmp))
        with atomic_path(index_path) as tmp:
            pd.DataFrame(captured.rows).to_parquet(tmp, index=False)
        written += 1
        n_steps += len(captured.rows)
        skipped.extend(captured.skipped)
    return CaptureSummary(shard_dir.parent, len(mine), n_steps, written, skipped_chunks, skipped)


def capture_in_memory(loaded: LoadedModel, traces: Sequence[Trace], config: CaptureConfig,
                      progress: Progress | None = None) -> CaptureSet:
    """The same capture as `capture_traces`, returned as a CaptureSet without touching disk."""
    layers = tuple(resolve_layers(config.layers, loaded.n_layers))
    captured = _capture_chunk(loaded, traces, layers, config, _counter(len(traces), progress))
    features = {(int(name[1:].split(".", 1)[0]), name.split(".", 1)[1]): t.numpy()
                for name, t in captured.tensors.items()}
    manifest = _manifest(loaded, layers, config, traces)
    manifest["skipped"] = captured.skipped
    return CaptureSet(index=pd.DataFrame(captured.rows), features=features, manifest=manifest)


def _manifest(loaded: LoadedModel, layers: Sequence[int], config: CaptureConfig,
              traces: Sequence[Trace]) -> dict[str, Any]:
    return {
        "store_version": STORE_VERSION, "telltale": __version__, "model": loaded.spec,
        "model_name": loaded.name, "hidden_size": loaded.hidden_size, "layers": list(layers),
        "poolings": list(config.poolings), "max_tokens": config.max_tokens,
        "shard": list(config.shard), "traces_hash": traces_hash(traces),
        "n_chains": len(traces), "chunk_chains": CHUNK_CHAINS,
    }


@dataclass(frozen=True)
class CaptureSet:
    """A capture folder read as one: the step index and the feature matrices, rows aligned."""

    index: pd.DataFrame
    features: dict[tuple[int, str], np.ndarray]
    manifest: dict[str, Any]

    def matrix(self, layer: int, pooling: str) -> np.ndarray:
        key = (layer, pooling)
        if key not in self.features:
            have = ", ".join(f"L{lay}.{pool}" for lay, pool in sorted(self.features))
            raise KeyError(f"The capture has no layer {layer} with pooling '{pooling}' "
                           f"(it has {have}).")
        return self.features[key]


_MANIFEST_TYPES = {"model": str, "hidden_size": int, "layers": list, "traces_hash": str,
                   "n_chains": int}


def _read_manifest(path: Path) -> dict[str, Any]:
    """A shard's manifest.json with its fields checked; ValueError naming the file."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not a capture manifest (not valid JSON: {err}).") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not a capture manifest (not a JSON object).")
    for name, kind in _MANIFEST_TYPES.items():
        value = manifest.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{path}, field '{name}': expected {kind.__name__}, got "
                             f"{json.dumps(value)[:60]}.")
    return manifest


def _read_chunk(index_path: Path) -> tuple[pd.DataFrame, dict[tuple[int, str], np.ndarray]]:
    """One chunk's step index and its pooled features; ValueError naming the file."""
    tensors_path = index_path.with_suffix(".safetensors")
    try:
        frame = pd.read_parquet(index_path)
        tensors = load_file(str(tensors_path))
    except Exception as err:  # noqa: BLE001 - pyarrow and safetensors raise their own types
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"The capture chunk {index_path} (or its .safetensors) cannot be read "
                         f"({type(err).__name__}: {first}); capture again into a new "
                         "folder.") from None
    blocks = {}
    for name, tensor in tensors.items():
        layer, _, pooling = name[1:].partition(".")
        if not (name.startswith("L") and layer.isdigit() and pooling) \
                or tensor.ndim != 2 or tensor.shape[0] != len(frame):
            raise ValueError(f"{tensors_path}: tensor '{name}' does not match its chunk's "
                             f"{len(frame)} steps; capture again into a new folder.")
        blocks[(int(layer), pooling)] = tensor.numpy()
    return frame, blocks


def load_capture(path: str | Path) -> CaptureSet:
    """Read every shard and chunk under `path` (a capture folder or one shard) in order.

    A missing manifest is FileNotFoundError; a broken manifest, chunk or tensor file, or shards
    of different captures, a ValueError naming the file."""
    root = Path(path)
    shard_dirs = sorted(root.glob("shard-*")) or [root]
    manifests = []
    frames: list[pd.DataFrame] = []
    blocks: dict[tuple[int, str], list[np.ndarray]] = {}
    for shard_dir in shard_dirs:
        manifest_file = shard_dir / "manifest.json"
        if not manifest_file.exists():
            raise FileNotFoundError(f"{shard_dir} is not a capture folder (no manifest.json).")
        manifests.append(_read_manifest(manifest_file))
        for index_path in sorted(shard_dir.glob("chunk-*.parquet")):
            frame, chunk = _read_chunk(index_path)
            frames.append(frame)
            for key, block in chunk.items():
                blocks.setdefault(key, []).append(block)
    keys = {(m["model"], m["hidden_size"], tuple(m["layers"]), m["traces_hash"]) for m in manifests}
    if len(keys) > 1:
        raise ValueError(f"The shards under {root} come from different captures (model, layers or "
                         "trace file differ); capture them again with the same settings.")
    index = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if any(len(v) != len(frames) for v in blocks.values()):
        raise ValueError(f"The chunks under {root} do not all hold the same layers and poolings; "
                         "capture again into a new folder.")
    features = {k: np.concatenate(v) for k, v in blocks.items()}
    merged = dict(manifests[0])
    merged["n_chains"] = sum(m["n_chains"] for m in manifests)
    merged["shards"] = [m.get("shard") for m in manifests]
    return CaptureSet(index=index, features=features, manifest=merged)


def signal_table(loaded: LoadedModel, traces: Sequence[Trace], batch_size: int = 4,
                 max_tokens: int = 2048, progress: Progress | None = None) -> pd.DataFrame:
    """One row per step of every trace: its text, labels and the four baseline signals.

    Traces longer than `max_tokens` are left out.
    """
    rows: list[dict[str, Any]] = []
    tick = _counter(len(traces), progress)
    for lo in range(0, len(traces), batch_size):
        batch = capture_batch(loaded, traces[lo : lo + batch_size], (), (), max_tokens)
        rows.extend(batch.rows)
        tick(len(traces[lo : lo + batch_size]))
    return pd.DataFrame(rows, columns=["trace_id", "step", "text", "label", "prefix_label",
                                       "n_tokens", *SIGNAL_NAMES])
