"""Shared hook plumbing: block outputs come as a tensor or a tuple, and hooks must always go.

transformers changed what a decoder block returns (older versions: a tuple whose first item is
the hidden states; Llama in 5.x: a plain tensor). Every hook here accepts both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden-state tensor [batch, seq, hidden] inside a block's output."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"Unexpected decoder block output of type {type(output).__name__}.")


def replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """The block output with its hidden states swapped for `hidden`, in the same container."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return type(output)((hidden, *output[1:]))
    return [hidden, *output[1:]]


def past_length(args: tuple[Any, ...], kwargs: dict[str, Any], layer_index: int) -> int:
    """Tokens already in the KV cache for this block before this call (0 without a cache)."""
    candidates = [kwargs.get(name) for name in CACHE_KWARGS] + list(args[1:])
    for cache in candidates:
        if cache is not None and hasattr(cache, "get_seq_length"):
            try:
                return int(cache.get_seq_length(layer_index))
            except (TypeError, IndexError):
                return int(cache.get_seq_length())
    return 0


@contextmanager
def removing(handles: list[RemovableHandle]) -> Iterator[list[RemovableHandle]]:
    """Yield a list to fill with hook handles; every handle in it is removed on exit, even on error.

        with removing([]) as handles:
            handles.append(block.register_forward_hook(fn))
            model(**batch)
    """
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()
        handles.clear()
