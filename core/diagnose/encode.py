"""Lay a trace out for teacher forcing: prompt (through the chat template) + response, with the
token span of every step.

Each response token belongs to exactly one step (`core.data.steps.token_step_index`): the
newline that ends a step is part of it, as it is when the model writes the step while streaming.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.data.steps import CharSpan, token_spans, token_step_index
from core.data.traces import Trace
from core.runtime.chat import user_prompt
from core.runtime.pooling import Span


@dataclass(frozen=True)
class EncodedTrace:
    """Token ids of prompt + response and the [start, end) token span of each kept step."""

    trace_id: str
    input_ids: tuple[int, ...]
    step_spans: tuple[Span, ...]
    response_start: int  # first response token
    n_steps_dropped: int = 0  # steps cut off by max_tokens

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


def prompt_text(tokenizer: Any, trace: Trace) -> str:
    """The text before the response: the chat prompt for the trace's question, with its
    system message when the trace records one (`extra["system"]`, see core.data.prompting)."""
    system = trace.extra.get("system")
    return user_prompt(tokenizer, trace.prompt, system=system if isinstance(system, str)
                       else None)


def encode_trace(tokenizer: Any, trace: Trace, max_tokens: int | None = None) -> EncodedTrace:
    """Tokenise prompt + response once and map every response token to its step.

    With `max_tokens`, whole steps past the limit are dropped (never a partial step); a trace
    whose first step does not fit raises ValueError.
    """
    prefix = prompt_text(tokenizer, trace)
    text = prefix + trace.response
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    char_steps = [CharSpan(s.start, s.end) for s in trace.steps]  # relative to the response
    owner = token_step_index(offsets, char_steps, response_start=len(prefix))
    spans: list[Span] = token_spans(owner, len(trace.steps))
    empty = [step for step, (start, end) in enumerate(spans) if start == end]
    if empty:
        raise ValueError(f"Trace {trace.id}: step {empty[0]} received no tokens of its own "
                         "(it shares one token with the step before).")
    response_start = next((i for i, o in enumerate(owner) if o >= 0), len(ids))
    dropped = 0
    if max_tokens is not None and len(ids) > max_tokens:
        kept = [s for s in spans if s[1] <= max_tokens]
        if not kept:
            raise ValueError(f"Trace {trace.id}: its first step ends after token {spans[0][1]}, "
                             f"past the limit of {max_tokens} tokens.")
        dropped = len(spans) - len(kept)
        spans = kept
        ids = ids[: kept[-1][1]]
    return EncodedTrace(trace.id, tuple(ids), tuple(spans), response_start, dropped)
