"""Before training: run the model over a fine-tuning set and find the tokens that fight what it
already knows (confident conflicts), with the share of loss and gradient pressure they carry.

    scan = scan_conflicts(loaded, examples)                 # one row per response token
    summary = summarise_conflicts(scan.tokens)              # quadrant shares, as in eaft-stats
    strongest = with_quadrants(scan.tokens).query("quadrant == 'confident_conflict'")

The maths is `core.control.entropy` (statistics, quadrants) and `core.control.eaft` (the
gates); this module only batches the examples through the model and lays the results out as tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.control.eaft import LossConfig, gate_weights
from core.control.entropy import (
    QUADRANTS,
    Cuts,
    Thresholds,
    assign_quadrants,
    quadrant_shares,
    resolve_thresholds,
    token_stats,
)
from core.control.finetune_data import FinetuneExample, collate, encode_examples
from core.progress import Progress
from core.runtime.models import LoadedModel

CONTEXT_TOKENS = 12  # tokens of context shown before each target token
TOKEN_COLUMNS = ("example_id", "position", "context", "target_id", "target_token", "top_id",
                 "top_token", "p", "ce", "entropy_topk", "entropy_full", "entropy_norm",
                 "grad_norm", "new_fact")


@dataclass(frozen=True)
class ConflictScan:
    """Per response token statistics (`tokens`, columns TOKEN_COLUMNS) and the examples that
    could not be laid out (one message each)."""

    tokens: pd.DataFrame
    skipped: tuple[str, ...]
    k: int
    norm: str
    n_examples: int


@torch.no_grad()
def scan_conflicts(loaded: LoadedModel, examples: Sequence[FinetuneExample], k: int = 20,
                   norm: str = "lnk", batch_size: int = 4, max_tokens: int | None = 1024,
                   chunk: int = 256, progress: Progress | None = None) -> ConflictScan:
    """Teacher-force every example and record each response token's p, entropies and the
    model's own top token (see `core.control.entropy`)."""
    if batch_size < 1:
        raise ValueError(f"The batch size must be at least 1, got {batch_size}.")
    tokenizer = loaded.tokenizer
    encoded, skipped = encode_examples(tokenizer, examples, max_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    frames = []
    for lo in range(0, len(encoded), batch_size):
        part = encoded[lo : lo + batch_size]
        batch = collate(part, pad_id)
        inputs = {name: batch[name].to(loaded.input_device)
                  for name in ("input_ids", "attention_mask")}
        with loaded.lock:
            logits = loaded.model(**inputs, use_cache=False).logits
        stats = token_stats(logits, batch["labels"], k=k, norm=norm, chunk=chunk)
        del logits
        frame = stats.to_frame()
        rows, positions = stats.row.tolist(), stats.position.tolist()
        frame.insert(0, "example_id", [part[r].example_id for r in rows])
        frame["new_fact"] = batch["new_fact_mask"][stats.row, stats.position].numpy()
        frame["context"] = [
            tokenizer.decode(list(part[r].input_ids[max(0, t - CONTEXT_TOKENS) : t]))
            for r, t in zip(rows, positions, strict=True)]
        frame["target_token"] = tokenizer.convert_ids_to_tokens(stats.target.tolist())
        frame["top_token"] = tokenizer.convert_ids_to_tokens(stats.top_token.tolist())
        frames.append(frame.drop(columns=["row"]))
        if progress:
            progress(min(lo + batch_size, len(encoded)), len(encoded))
    tokens = (pd.concat(frames, ignore_index=True) if frames
              else pd.DataFrame(columns=list(TOKEN_COLUMNS)))
    return ConflictScan(tokens=tokens[list(TOKEN_COLUMNS)], skipped=tuple(skipped), k=k,
                        norm=norm, n_examples=len(encoded))


@dataclass(frozen=True)
class ConflictSummary:
    """Quadrant shares of a scan: the `telltale eaft-stats` report."""

    n_tokens: int
    conflict_fraction: float
    thresholds: Thresholds
    cuts: Cuts
    quadrants: pd.DataFrame  # index QUADRANTS; n_tokens, token_share, loss_share, *_grad_share

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: n_tokens, conflict_fraction, quadrants (name -> shares), thresholds."""
        return {
            "n_tokens": self.n_tokens,
            "conflict_fraction": self.conflict_fraction,
            "quadrants": {name: {column: (int(value) if column == "n_tokens" else float(value))
                                 for column, value in row.items()}
                          for name, row in self.quadrants.iterrows()},
            "thresholds": {"mode": self.thresholds.mode, "p": self.thresholds.p,
                           "h": self.thresholds.h, "uncertain": self.thresholds.uncertain,
                           "p_cut": self.cuts.p, "h_cut": self.cuts.h,
                           "uncertain_cut": self.cuts.uncertain},
        }


def default_gates(alpha: float = 1.0) -> dict[str, LossConfig]:
    """The two losses the report compares: plain SFT and EAFT."""
    return {"sft": LossConfig(kind="sft"), "eaft": LossConfig(kind="eaft", alpha=alpha)}


def token_gates(tokens: pd.DataFrame,
                configs: Mapping[str, LossConfig]) -> dict[str, np.ndarray]:
    """Each loss's weight of every token of a scan (percentile gates over the whole scan); the
    per-token weights to export for training elsewhere."""
    p = tokens["p"].to_numpy(dtype=np.float32)
    h = tokens["entropy_norm"].to_numpy(dtype=np.float32)
    facts = tokens["new_fact"].to_numpy(dtype=bool)
    return {name: gate_weights(config, h, p, facts) for name, config in configs.items()}


def with_quadrants(tokens: pd.DataFrame, thresholds: Thresholds | None = None) -> pd.DataFrame:
    """A copy of the token table with a `quadrant` column."""
    thresholds = thresholds or Thresholds()
    p = tokens["p"].to_numpy(dtype=np.float64)
    h = tokens["entropy_norm"].to_numpy(dtype=np.float64)
    out = tokens.copy()
    out["quadrant"] = (assign_quadrants(p, h, resolve_thresholds(p, h, thresholds))
                       if len(tokens) else [])
    return out


def summarise_conflicts(tokens: pd.DataFrame, thresholds: Thresholds | None = None,
                        gates: Mapping[str, LossConfig] | None = None) -> ConflictSummary:
    """Token, SFT-loss and gradient-pressure shares per quadrant (`core.control.entropy`)."""
    if tokens.empty:
        raise ValueError("There are no response tokens to summarise.")
    thresholds = thresholds or Thresholds()
    p = tokens["p"].to_numpy(dtype=np.float64)
    h = tokens["entropy_norm"].to_numpy(dtype=np.float64)
    cuts = resolve_thresholds(p, h, thresholds)
    quadrant = assign_quadrants(p, h, cuts)
    weights = token_gates(tokens, gates or default_gates())
    table = quadrant_shares(quadrant, tokens["ce"].to_numpy(dtype=np.float64),
                            tokens["grad_norm"].to_numpy(dtype=np.float64),
                            {name: w.astype(np.float64) for name, w in weights.items()})
    conflict = float(table["token_share"].to_numpy()[QUADRANTS.index("confident_conflict")])
    return ConflictSummary(n_tokens=len(tokens), conflict_fraction=conflict,
                           thresholds=thresholds, cuts=cuts, quadrants=table)


def example_scores(tokens: pd.DataFrame, thresholds: Thresholds | None = None) -> pd.DataFrame:
    """Per example: tokens, confident conflicts among them, their share, mean p and mean H~."""
    marked = with_quadrants(tokens, thresholds)
    marked["is_conflict"] = marked["quadrant"] == QUADRANTS[0]
    grouped = marked.groupby("example_id", sort=False)
    return pd.DataFrame({
        "n_tokens": grouped.size(), "n_conflicts": grouped["is_conflict"].sum(),
        "conflict_share": grouped["is_conflict"].mean(), "mean_p": grouped["p"].mean(),
        "mean_entropy_norm": grouped["entropy_norm"].mean(),
    }).reset_index()


__all__ = [
    "TOKEN_COLUMNS", "ConflictScan", "ConflictSummary", "default_gates", "example_scores",
    "scan_conflicts", "summarise_conflicts", "token_gates", "with_quadrants",
]
