"""One batched, teacher-forced forward over encoded traces: pooled step vectors at chosen layers
and the per-step baseline signals, from the same pass.

Sequences are right-padded; a causal model's real tokens do not see the padding, so results match
unpadded single-sequence runs to float tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.diagnose.encode import EncodedTrace
from core.diagnose.signals import step_signals, token_entropy_nll
from core.runtime.capture import record_residual
from core.runtime.models import LoadedModel


@dataclass(frozen=True)
class StepBatchResult:
    """Per sequence: pooled vectors per (layer, pooling) as [n_steps, hidden] float32 tensors, and
    one signal dict per step."""

    pooled: dict[tuple[int, str], list[torch.Tensor]]
    signals: list[list[dict[str, float]]]


def pad_batch(encoded: Sequence[EncodedTrace], pad_id: int,
              device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-padded input_ids and attention_mask for a batch."""
    width = max(e.n_tokens for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, enc in enumerate(encoded):
        ids[row, : enc.n_tokens] = torch.tensor(enc.input_ids)
        mask[row, : enc.n_tokens] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def forward_steps(loaded: LoadedModel, encoded: Sequence[EncodedTrace], layers: Sequence[int],
                  poolings: Sequence[str] = ("exp",), with_signals: bool = True) -> StepBatchResult:
    """Run the model once over the batch, recording pooled step vectors and step signals."""
    pad_id = loaded.tokenizer.pad_token_id or 0
    batch = pad_batch(encoded, pad_id, loaded.input_device)
    spans = [list(e.step_spans) for e in encoded]
    with loaded.lock, record_residual(loaded.model, layers, spans=spans, poolings=poolings,
                                      layer_path=loaded.layer_path) as record:
        out = loaded.model(**batch, use_cache=False)
    signals: list[list[dict[str, float]]] = [[] for _ in encoded]
    if with_signals:
        entropy, nll = token_entropy_nll(out.logits, batch["input_ids"])
        signals = [step_signals(entropy[b], nll[b], spans[b]) for b in range(len(encoded))]
    return StepBatchResult(pooled=record.pooled, signals=signals)

