"""Record the residual stream after chosen decoder blocks (`resid_post`).

    with record_residual(model, layers=[8, 15]) as rec:
        model(**batch)
    rec.hidden[8][0]            # [batch, seq, hidden] from the first forward call

With `spans` the recorder pools on the fly, keeping [steps, hidden] per sequence instead of every
token, so memory grows with the number of steps, not tokens:

    with record_residual(model, [8, 15], spans=batch_spans, poolings=("exp", "mean")) as rec:
        model(**batch)
    rec.pooled[(8, "exp")][b]   # [n_steps_b, hidden] for sequence b

Hooks are registered inside the context and removed on exit, also when the body raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.runtime.hooks import hidden_of, removing
from core.runtime.layers import decoder_layers, resolve_layers
from core.runtime.pooling import Span, batch_span_weights, check_poolings


@dataclass
class ResidualRecord:
    """What a `record_residual` context collected (filled while the body runs)."""

    layers: list[int]
    hidden: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    pooled: dict[tuple[int, str], list[torch.Tensor]] = field(default_factory=dict)

    def stacked(self, layer: int) -> torch.Tensor:
        """All recorded calls of one layer concatenated along the sequence axis."""
        return torch.cat(self.hidden[layer], dim=1)


def _pool(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[batch, spans, seq] x [batch, seq, hidden] -> [batch, spans, hidden] in float32."""
    return torch.bmm(weights.to(hidden.device, torch.float32), hidden.float())


@contextmanager
def record_residual(
    model: nn.Module,
    layers: Sequence[int],
    *,
    spans: Sequence[Sequence[Span]] | None = None,
    poolings: Sequence[str] = ("exp",),
    to_cpu: bool = True,
    layer_path: str | None = None,
) -> Iterator[ResidualRecord]:
    """Record block outputs at `layers` (negative indices count from the end).

    Without `spans`: every token's vector, one tensor per forward call, in `hidden`.
    With `spans` (per sequence of the batch, token spans [start, end) of its steps): only pooled
    step vectors, one [n_steps, hidden] tensor per sequence, in `pooled[(layer, method)]`.
    """
    blocks = decoder_layers(model, layer_path)
    chosen = resolve_layers(layers, len(blocks))
    record = ResidualRecord(layers=chosen)
    weights: dict[str, torch.Tensor] = {}
    if spans is not None:
        check_poolings(poolings)

    def make_hook(layer: int) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            hidden = hidden_of(output).detach()
            if spans is None:
                record.hidden.setdefault(layer, []).append(hidden.cpu() if to_cpu else hidden)
                return
            for method in poolings:
                if method not in weights or weights[method].shape[-1] != hidden.shape[1]:
                    weights[method] = batch_span_weights(spans, hidden.shape[1], method)
                pooled = _pool(hidden, weights[method])
                per_seq = [pooled[b, : len(s)] for b, s in enumerate(spans)]
                record.pooled[(layer, method)] = [p.cpu() if to_cpu else p for p in per_seq]

        return hook

    with removing([]) as handles:
        for layer in chosen:
            handles.append(blocks[layer].register_forward_hook(make_hook(layer)))
        yield record
