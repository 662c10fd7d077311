"""Write into the residual stream: add strength * vector after block L at chosen positions.

    with inject_residual(model, layer=15, vector=v, strength=4.0, positions=Positions.generated()):
        model.generate(**inputs, max_new_tokens=50)

Positions are absolute token positions in the sequence (KV cache included): the hook reads how
many tokens the cache already holds, so it works for a single forward and for `generate`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.runtime.hooks import hidden_of, past_length, removing, replace_hidden
from core.runtime.layers import decoder_layers, resolve_layer

POSITION_KINDS = ("all", "span", "from", "generated")


@dataclass(frozen=True)
class Positions:
    """Where to inject: every position, a span [start, stop), from a position on, or only the
    tokens `generate` produces (every position after the prompt)."""

    kind: str = "all"
    start: int = 0
    stop: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in POSITION_KINDS:
            raise ValueError(f"Position kind must be one of {', '.join(POSITION_KINDS)}, "
                             f"not {self.kind!r}.")
        if self.start < 0 or (self.stop is not None and self.stop < self.start):
            raise ValueError(f"Invalid injection positions start={self.start}, stop={self.stop}.")

    @classmethod
    def all(cls) -> Positions:
        return cls("all")

    @classmethod
    def span(cls, start: int, stop: int) -> Positions:
        return cls("span", start, stop)

    @classmethod
    def starting_at(cls, start: int) -> Positions:
        return cls("from", start)

    @classmethod
    def generated(cls) -> Positions:
        return cls("generated")

    def mask(self, first: int, length: int, prompt_length: int) -> torch.Tensor:
        """Boolean [length] mask for the positions first..first+length-1 of a call."""
        pos = torch.arange(first, first + length)
        if self.kind == "all":
            return torch.ones(length, dtype=torch.bool)
        if self.kind == "generated":
            return pos >= prompt_length
        stop = self.stop if self.kind == "span" and self.stop is not None else first + length
        return (pos >= self.start) & (pos < stop)


@dataclass
class InjectionState:
    """Live view of an injection: how many calls and token positions it touched."""

    layer: int
    prompt_length: int | None = None
    calls: int = 0
    positions_touched: int = 0


@contextmanager
def inject_residual(
    model: nn.Module,
    layer: int,
    vector: torch.Tensor,
    strength: float = 1.0,
    positions: Positions | None = None,
    layer_path: str | None = None,
) -> Iterator[InjectionState]:
    """Add `strength * vector` to block `layer`'s output at `positions` while the body runs.

    The prompt length for `Positions.generated()` is the length of the first call that starts
    with an empty cache (the prefill). Hooks are removed on exit, also when the body raises.
    """
    blocks = decoder_layers(model, layer_path)
    index = resolve_layer(layer, len(blocks))
    positions = positions or Positions.all()
    if vector.ndim != 1:
        raise ValueError("The injected vector must be 1-D [hidden], "
                         f"got shape {tuple(vector.shape)}.")
    state = InjectionState(layer=index)
    past: list[int] = [0]

    def pre_hook(_module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        past[0] = past_length(args, kwargs, index)

    def hook(_module: nn.Module, _args: Any, _kwargs: Any, output: Any) -> Any:
        hidden = hidden_of(output)
        length = hidden.shape[1]
        if past[0] == 0:  # a fresh prefill: its length is the prompt length
            state.prompt_length = length
        state.calls += 1
        mask = positions.mask(past[0], length, state.prompt_length or 0).to(hidden.device)
        if not bool(mask.any()):
            return None
        delta = (strength * vector).to(hidden.device, hidden.dtype)
        steered = hidden.clone()
        steered[:, mask] += delta
        state.positions_touched += int(mask.sum())
        return replace_hidden(output, steered)

    with removing([]) as handles:
        handles.append(blocks[index].register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(blocks[index].register_forward_hook(hook, with_kwargs=True))
        yield state
