"""What the Fine-tuning page keeps between reruns: fine-tuning files read once per content, token
scans cached per model, file and settings, and comparison runs working in background threads.

- `read_finetune_file` and `scan_part` are `st.cache_data`, keyed on the file's content hash
  (never on an object) and the settings; a scan is cached in parts of PART_SIZE examples, so the
  page reports progress between parts and an interrupted scan resumes where it stopped.
- A comparison run takes minutes, so it works in a background job (`dashboard.common.jobs`):
  a widget press reruns the page, which finds the same job on the process's board by its key
  (model + both files' hashes + settings) and follows it on. A finished run stays on the board
  under that key: the same request later is a cache hit.
- Session state holds only small plain values (the requests, as dicts of strings and numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core.control.conflicts import TOKEN_COLUMNS, ConflictScan, scan_conflicts
from core.control.entropy import NORMS
from core.control.finetune import CompareConfig, CompareResult, compare_methods
from core.control.finetune_data import FinetuneExample, FinetuneLoad, read_finetune
from core.progress import Progress
from core.runtime.models import LoadedModel
from dashboard.common.jobs import Job, board
from dashboard.common.state import SAMPLE_FOLDER, ModelKey, get_model, model_key

PART_SIZE = 4  # examples per cached scan part (and per forward batch)
TEXT_COLUMNS = ("target_text", "top_text")  # decoded token text the page adds to a scan


def finetune_samples(folder: Path = SAMPLE_FOLDER) -> list[Path]:
    """The fine-tuning files shipped with the project (`sample_traces/finetune*.jsonl`)."""
    return sorted(folder.glob("finetune*.jsonl")) if folder.is_dir() else []


def has_peft() -> bool:
    """Whether LoRA is available (the peft package imports)."""
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


@st.cache_data(show_spinner=False, max_entries=16)
def read_finetune_file(data: bytes, name: str) -> FinetuneLoad:
    """`core.control.finetune_data.read_finetune` on a file's bytes: never raises on content;
    every bad line is an issue naming the line and the field."""
    return read_finetune(data, name=name)


# ---------------------------------------------------------------------------- token scans


@dataclass(frozen=True)
class ScanSettings:
    """How the tokens are scanned (the CLI's `eaft-stats` defaults): top-K, the entropy's
    normalisation, the longest example kept, and how many examples (None: all)."""

    k: int = 20
    norm: str = "lnk"
    max_tokens: int = 1024
    max_examples: int | None = None

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"K must be at least 2 (the entropy of one logit is 0), got {self.k}.")
        if self.norm not in NORMS:
            raise ValueError(f"The normalisation must be one of {', '.join(NORMS)}, not "
                             f"{self.norm!r}.")
        if self.max_tokens < 2:
            raise ValueError(f"The longest example must be at least 2 tokens, got "
                             f"{self.max_tokens}.")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"Scan at least one example, got {self.max_examples}.")


@dataclass(frozen=True)
class ScanRequest:
    """What "Scan tokens" asked for: the model, the file (content hash) and the settings."""

    model: ModelKey
    file_hash: str
    settings: ScanSettings

    def to_state(self) -> dict[str, Any]:
        return {"model": list(self.model), "file_hash": self.file_hash,
                "settings": asdict(self.settings)}

    @classmethod
    def from_state(cls, value: object) -> ScanRequest | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(model_key(value["model"]), str(value["file_hash"]),
                       ScanSettings(**value["settings"]))
        except (KeyError, TypeError, ValueError):
            return None


def decoded_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token id as the text it stands for (not the vocabulary's byte-level spelling, e.g.
    ' Paris', not 'ĠParis')."""
    return [str(t) for t in tokenizer.batch_decode([[int(i)] for i in ids])]


@st.cache_data(show_spinner=False, max_entries=5000)
def scan_part(model: ModelKey, file_hash: str, settings: ScanSettings, start: int,
              _examples: tuple[FinetuneExample, ...]) -> ConflictScan:
    """`core.control.conflicts.scan_conflicts` on one part of a file (examples start .. start +
    len), with the decoded text of each target and top token. `_examples` is not hashed: the
    other arguments name it."""
    loaded = get_model(*model)
    scan = scan_conflicts(loaded, list(_examples), k=settings.k, norm=settings.norm,
                          batch_size=PART_SIZE, max_tokens=settings.max_tokens)
    tokens = scan.tokens.copy()
    tokens["target_text"] = decoded_tokens(loaded.tokenizer, tokens["target_id"].tolist())
    tokens["top_text"] = decoded_tokens(loaded.tokenizer, tokens["top_id"].tolist())
    return ConflictScan(tokens=tokens, skipped=scan.skipped, k=scan.k, norm=scan.norm,
                        n_examples=scan.n_examples)


def scan_file(request: ScanRequest, examples: Sequence[FinetuneExample],
              progress: Progress | None = None) -> ConflictScan:
    """The scan of the first `max_examples` examples, part by part (each part cached on its own)
    with `progress(examples done, total)` reported between parts, outside any cached call, (0,
    total) first."""
    settings = request.settings
    chosen = list(examples)[: settings.max_examples] if settings.max_examples else list(examples)
    if progress:
        progress(0, len(chosen))
    parts = []
    for start in range(0, len(chosen), PART_SIZE):
        part = tuple(chosen[start : start + PART_SIZE])
        parts.append(scan_part(request.model, request.file_hash, settings, start, part))
        if progress:
            progress(min(start + PART_SIZE, len(chosen)), len(chosen))
    frames = [p.tokens for p in parts if not p.tokens.empty]
    tokens = (pd.concat(frames, ignore_index=True) if frames
              else pd.DataFrame(columns=[*TOKEN_COLUMNS, *TEXT_COLUMNS]))
    return ConflictScan(tokens=tokens, skipped=tuple(m for p in parts for m in p.skipped),
                        k=settings.k, norm=settings.norm,
                        n_examples=sum(p.n_examples for p in parts))


# ---------------------------------------------------------------------------- comparison runs


@dataclass(frozen=True)
class CompareRequest:
    """One comparison run: the model, the target and general files (content hashes) and the
    `CompareConfig` fields the page sets (seeds seed .. seed + repeats - 1, an evaluation
    every `eval_every` steps). `key` names it on the board."""

    model: ModelKey
    train_hash: str
    general_hash: str
    methods: tuple[str, ...]
    steps: int
    batch_size: int
    lora: bool
    max_eval: int
    lr: float | None = None
    repeats: int = 1
    eval_every: int | None = None
    max_tokens: int = 256
    target_new_tokens: int = 48
    general_new_tokens: int = 24
    seed: int = 0

    def config(self) -> CompareConfig:
        """The core config (raises ValueError with a sentence for bad settings)."""
        return CompareConfig(methods=self.methods, steps=self.steps, batch_size=self.batch_size,
                             lr=self.lr, seed=self.seed, repeats=self.repeats,
                             eval_every=self.eval_every, lora=self.lora,
                             max_tokens=self.max_tokens, max_eval=self.max_eval,
                             target_new_tokens=self.target_new_tokens,
                             general_new_tokens=self.general_new_tokens)

    @property
    def key(self) -> str:
        """The run's name on the job board."""
        return "compare-" + repr(asdict(self))

    def to_state(self) -> dict[str, Any]:
        state = asdict(self)
        state["model"], state["methods"] = list(self.model), list(self.methods)
        return state

    @classmethod
    def from_state(cls, value: object) -> CompareRequest | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(**{**value, "model": model_key(value["model"]),
                          "methods": tuple(str(m) for m in value["methods"])})
        except (KeyError, TypeError, ValueError):
            return None


def start_compare(request: CompareRequest, loaded: LoadedModel,
                  train: Sequence[FinetuneExample],
                  general: Sequence[FinetuneExample]) -> Job[CompareResult]:
    """The comparison run for `request` on the process's job board (`dashboard.common.jobs`):
    the one there (running, or finished with its `CompareResult`: curves, the runs at matched
    target-loss reduction, seed summaries), or a new one. Raises ValueError at once for bad
    settings."""
    config = request.config()
    train, general = list(train), list(general)

    def work(job: Job[CompareResult]) -> CompareResult:
        return compare_methods(loaded, train, general, config, progress=job.report_or_stop)

    return board().start(request.key, work, "The comparison", request=request,
                         page="fine-tuning", keeps_going=True)


__all__ = [
    "PART_SIZE", "CompareRequest", "ScanRequest", "ScanSettings", "decoded_tokens",
    "finetune_samples", "has_peft", "read_finetune_file", "scan_file", "scan_part",
    "start_compare",
]
