"""Fine-tuning data: read JSONL in the usual shapes, lay each example out for training with the
chat template, and pad batches.

One JSON object per line, in exactly one of three shapes:
    {"messages": [{"role": "system"|"user"|"assistant"|..., "content": str}, ...]}   chat
    {"prompt": str, "completion": str}  (or "response" for "completion"; optional "system")
    {"text": str}                                                                 plain text
`prompt` and `completion` may also be message lists (TRL's conversational prompt-completion).
Optional keys:
    "id":        string or integer; default "{file stem}-{line}".
    "new_facts": true (the whole response states new facts), false (none; the default), or a
                 list of strings, each a substring of the response that states a new fact. Only
                 the three-way gate of `core.control.eaft` reads it: a confident conflict on
                 a marked token is overridden (learned), elsewhere it is protected.
    "answer":    string or number, the checkable final answer (accuracy in `core.control.finetune`);
                 "a|b" lists accepted alternatives.
Any other key is kept in `FinetuneExample.extra`.

Which tokens are trained (labels != -100): the content of every assistant turn (the completion;
all of a plain text), and the special token that closes each assistant turn (e.g. <|im_end|>),
so the model learns to stop. Everything else (system, user, template markup) is -100.

`read_finetune` never raises on bad content: each bad line becomes a `TraceIssue` (the trace
reader's record) naming the file, the line and the field; strict=True raises `TraceFileError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.data.atomic import atomic_path
from core.data.records import FieldError, TraceFileError, TraceIssue, read_records
from core.runtime.chat import format_chat

IGNORE_INDEX = -100
SCHEMA_VERSION = 1
SHAPES = ("messages", "prompt_completion", "text")
_KNOWN_KEYS = frozenset({"id", "messages", "prompt", "completion", "response", "system", "text",
                         "new_facts", "answer", "schema_version"})

CharSpan = tuple[int, int]


@dataclass(frozen=True)
class ChatTurn:
    role: str
    content: str


@dataclass(frozen=True)
class FinetuneExample:
    """One training example. Chat shapes hold `turns`; the plain-text shape holds `text`.

    `new_facts` is True/False for the whole response, or the substrings that state new facts.
    """

    id: str
    shape: str
    turns: tuple[ChatTurn, ...] = ()
    text: str | None = None
    new_facts: bool | tuple[str, ...] = False
    answer: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}, not {self.shape!r}.")
        if (self.text is not None) != (self.shape == "text"):
            raise ValueError(f"Example '{self.id}': the text shape needs `text`, the others "
                             "`turns`.")
        if self.shape != "text" and not any(t.role == "assistant" for t in self.turns):
            raise ValueError(f"Example '{self.id}' has no assistant turn to learn from.")

    @property
    def responses(self) -> list[str]:
        """The texts the model learns: every assistant turn, or the whole plain text."""
        if self.text is not None:
            return [self.text]
        return [t.content for t in self.turns if t.role == "assistant"]

    @property
    def prompt_turns(self) -> tuple[ChatTurn, ...]:
        """The turns before the last assistant turn: what a model answers when it is evaluated."""
        last = max(i for i, t in enumerate(self.turns) if t.role == "assistant")
        return self.turns[:last]

    def messages(self) -> list[dict[str, str]]:
        return [{"role": t.role, "content": t.content} for t in self.turns]


@dataclass(frozen=True)
class FinetuneLoad:
    """What `read_finetune` found: the valid examples, the problems, how many lines it read."""

    examples: list[FinetuneExample]
    issues: list[TraceIssue]
    n_lines: int

    @property
    def n_skipped(self) -> int:
        return len({issue.line for issue in self.issues})


# ---------------------------------------------------------------------------- parsing


def _string(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        got = "missing" if name not in obj else type(value).__name__
        raise FieldError(name, f"must be a string, got {got}")
    return value


def _turns(raw: Any, name: str, default_role: str | None = None) -> list[ChatTurn]:
    if not isinstance(raw, list) or not raw:
        got = "an empty list" if raw == [] else type(raw).__name__
        raise FieldError(name, f"must be a non-empty list of messages, got {got}")
    turns = []
    for index, item in enumerate(raw):
        where = f"{name}[{index}]"
        if not isinstance(item, Mapping):
            raise FieldError(where, f"must be an object, got {type(item).__name__}")
        role = item.get("role", default_role)
        if not isinstance(role, str) or not role:
            raise FieldError(f"{where}.role", "must be a non-empty string")
        content = item.get("content")
        if not isinstance(content, str):
            got = "missing" if "content" not in item else type(content).__name__
            raise FieldError(f"{where}.content", f"must be a string, got {got}")
        turns.append(ChatTurn(role, content))
    return turns


def _shape_of(obj: Mapping[str, Any]) -> str:
    """The shape by its key; with several, the field named is the second key found."""
    keys = {"messages": "messages", "prompt": "prompt_completion", "text": "text"}
    found = [key for key in keys if key in obj]
    if len(found) != 1:
        what = "none" if not found else " and ".join(repr(key) for key in found)
        raise FieldError("" if not found else found[1],
                         f"give exactly one of 'messages', 'prompt' + 'completion', or 'text' "
                         f"(found {what})")
    return keys[found[0]]


def _prompt_completion(obj: Mapping[str, Any]) -> list[ChatTurn]:
    key = "completion" if "completion" in obj else "response"
    if "completion" in obj and "response" in obj:
        raise FieldError("response", "give 'completion' or 'response', not both")
    if key not in obj:
        raise FieldError("completion", "missing: a 'prompt' needs a 'completion' (or 'response')")
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        raise FieldError("system", f"must be a string, got {type(system).__name__}")
    turns = [ChatTurn("system", system)] if system else []
    prompt = obj["prompt"]
    turns += _turns(prompt, "prompt", "user") if isinstance(prompt, list) else [
        ChatTurn("user", _string(obj, "prompt"))]
    completion = obj[key]
    turns += _turns(completion, key, "assistant") if isinstance(completion, list) else [
        ChatTurn("assistant", _string(obj, key))]
    return turns


def _new_facts(raw: Any, responses: list[str]) -> bool | tuple[str, ...]:
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    if not isinstance(raw, list):
        raise FieldError("new_facts", "must be true, false or a list of strings from the "
                                      f"response, got {type(raw).__name__}")
    for index, fact in enumerate(raw):
        if not isinstance(fact, str) or not fact.strip():
            raise FieldError(f"new_facts[{index}]", "must be a non-blank string")
        if not any(fact in response for response in responses):
            raise FieldError(f"new_facts[{index}]", f"{fact[:60]!r} is not in the response")
    return tuple(raw)


def example_from_dict(obj: Mapping[str, Any], default_id: str | None = None) -> FinetuneExample:
    """Build an example from one decoded JSON object; raises FieldError naming the bad field."""
    version = obj.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise FieldError("schema_version", f"this Telltale reads version {SCHEMA_VERSION} "
                                           f"or older, got {json.dumps(version)}")
    raw_id = obj.get("id", default_id)
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not raw_id:
        raise FieldError("id", "must be a non-empty string or an integer")
    shape = _shape_of(obj)
    turns: list[ChatTurn] = []
    text = None
    if shape == "messages":
        turns = _turns(obj["messages"], "messages")
        if not any(t.role == "assistant" for t in turns):
            raise FieldError("messages", "has no assistant turn to learn from")
    elif shape == "prompt_completion":
        turns = _prompt_completion(obj)
    else:
        text = _string(obj, "text")
        if not text.strip():
            raise FieldError("text", "is blank")
    responses = [text] if text is not None else [t.content for t in turns
                                                  if t.role == "assistant"]
    answer = obj.get("answer")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, str | int
                                                                          | float)):
        raise FieldError("answer", f"must be a string or a number, got {type(answer).__name__}")
    extra = {key: value for key, value in obj.items() if key not in _KNOWN_KEYS}
    return FinetuneExample(id=raw_id, shape=shape, turns=tuple(turns), text=text,
                           new_facts=_new_facts(obj.get("new_facts"), responses),
                           answer=None if answer is None else str(answer), extra=extra)


def example_to_dict(example: FinetuneExample) -> dict[str, Any]:
    """The JSON object of an example; `example_from_dict` of it gives the example back."""
    obj: dict[str, Any] = {"id": example.id}
    if example.shape == "text":
        obj["text"] = example.text
    elif example.shape == "messages":
        obj["messages"] = example.messages()
    else:
        turns = list(example.turns)
        if turns and turns[0].role == "system":
            obj["system"] = turns.pop(0).content
        simple = (len(turns) == 2 and turns[0].role == "user" and turns[1].role == "assistant")
        if simple:
            obj["prompt"], obj["completion"] = turns[0].content, turns[1].content
        else:
            last = max(i for i, t in enumerate(turns) if t.role == "assistant")
            obj["prompt"] = [{"role": t.role, "content": t.content} for t in turns[:last]]
            obj["completion"] = [{"role": t.role, "content": t.content} for t in turns[last:]]
    if example.new_facts:
        obj["new_facts"] = (example.new_facts if isinstance(example.new_facts, bool)
                            else list(example.new_facts))
    if example.answer is not None:
        obj["answer"] = example.answer
    return {**obj, **example.extra, "schema_version": SCHEMA_VERSION}


def read_finetune(source: str | Path | bytes, *, name: str | None = None, strict: bool = False,
                  max_line_bytes: int = 16_000_000) -> FinetuneLoad:
    """Read a fine-tuning JSONL file (a path, or its bytes); lines are numbered from 1.

    Blank lines are skipped; every other line gives an example or one TraceIssue (bad bytes,
    bad JSON, not an object, a bad field, an id seen before). strict=True raises TraceFileError.
    """
    examples, issues, n_lines = read_records(
        source, lambda obj, default_id: example_from_dict(obj, default_id=default_id),
        lambda example: example.id, name=name, max_line_bytes=max_line_bytes)
    if strict and issues:
        raise TraceFileError(issues)
    return FinetuneLoad(examples, issues, n_lines)


def write_finetune(path: str | Path, examples: Sequence[FinetuneExample]) -> None:
    """Write examples as JSONL, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        for example in examples:
            handle.write(json.dumps(example_to_dict(example), ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example, its labels (-100 outside the response: the Hugging Face
    convention, unshifted) and, per token, whether it is a trained token marked as a new fact."""

    example_id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    new_fact: tuple[bool, ...]

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_response_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def render_example(tokenizer: Any, example: FinetuneExample) -> tuple[str, list[CharSpan]]:
    """The full training text and the char spans [start, end) of every response in it.

    Each turn's content is found in the rendered chat in order (each search starts where the
    previous turn's content ended), so a reply that repeats the question is placed correctly.
    """
    if example.text is not None:
        return example.text, [(0, len(example.text))]
    text = format_chat(tokenizer, example.messages(), add_generation_prompt=False)
    spans, position = [], 0
    for turn in example.turns:
        start = text.find(turn.content, position)
        if start < 0:
            raise ValueError(f"Example '{example.id}': the chat template dropped or changed a "
                             f"{turn.role} turn, so its tokens cannot be located.")
        position = start + len(turn.content)
        if turn.role == "assistant":
            spans.append((start, position))
    return text, spans


def prompt_text(tokenizer: Any, example: FinetuneExample) -> str:
    """What the model sees before it answers (the chat up to the last assistant turn, with the
    generation prompt); "" for plain text."""
    if example.text is not None:
        return ""
    messages = [{"role": t.role, "content": t.content} for t in example.prompt_turns]
    return format_chat(tokenizer, messages, add_generation_prompt=True)


def _fact_spans(text: str, spans: list[CharSpan], facts: tuple[str, ...]) -> list[CharSpan]:
    """The first occurrence of each fact inside a response span."""
    found = []
    for fact in facts:
        for start, end in spans:
            at = text.find(fact, start, end)
            if at >= 0:
                found.append((at, at + len(fact)))
                break
    return found


def _overlaps(token: CharSpan, spans: list[CharSpan]) -> bool:
    return any(token[0] < end and token[1] > start for start, end in spans)


def encode_example(tokenizer: Any, example: FinetuneExample,
                   max_tokens: int | None = None) -> EncodedExample:
    """Tokenise an example once and label its response tokens.

    A token is trained when its characters overlap a response; the special token right after a
    response (the end of the assistant turn) is trained too. With `max_tokens` the sequence is
    cut at that length; an example with no trained token left raises ValueError.
    """
    text, spans = render_example(tokenizer, example)
    plain = example.text is not None
    enc = tokenizer(text, add_special_tokens=plain, return_offsets_mapping=True)
    if "offset_mapping" not in enc:
        raise ValueError("This tokenizer gives no character offsets; load a fast tokenizer.")
    ids = [int(i) for i in enc["input_ids"]]
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if example.new_facts is True:
        facts = spans
    elif example.new_facts:
        facts = _fact_spans(text, spans, tuple(example.new_facts))
    else:
        facts = []
    trained = [_overlaps(o, spans) and o[1] > o[0] for o in offsets]
    for _, end in spans:
        after = next((i for i, o in enumerate(offsets) if o[0] >= end and o[1] > o[0]), None)
        if after is not None and ids[after] in special and not trained[after]:
            trained[after] = True
    labels = [i if keep else IGNORE_INDEX for i, keep in zip(ids, trained, strict=True)]
    new_fact = [keep and _overlaps(o, facts) for o, keep in zip(offsets, trained, strict=True)]
    if max_tokens is not None:
        ids, labels, new_fact = ids[:max_tokens], labels[:max_tokens], new_fact[:max_tokens]
    # the first token is never predicted, so it cannot be a target
    if not any(label != IGNORE_INDEX for label in labels[1:]):
        raise ValueError(f"Example '{example.id}' has no response token"
                         + (f" within {max_tokens} tokens." if max_tokens else "."))
    return EncodedExample(example.id, tuple(ids), tuple(labels), tuple(new_fact))


def encode_examples(tokenizer: Any, examples: Sequence[FinetuneExample],
                    max_tokens: int | None = None) -> tuple[list[EncodedExample], list[str]]:
    """Encode every example that can be; returns (encoded, one message per example left out)."""
    encoded, skipped = [], []
    for example in examples:
        try:
            encoded.append(encode_example(tokenizer, example, max_tokens))
        except ValueError as err:
            skipped.append(str(err))
    return encoded, skipped


def collate(batch: Sequence[EncodedExample], pad_id: int,
            with_new_facts: bool = True) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask, labels (-100 on padding) and new_fact_mask.

    Shapes: [batch, longest] each; new_fact_mask is bool and left out with with_new_facts=False
    (a model's forward does not accept it; `core.control.eaft_trainer` takes it out before the
    model).
    """
    if not batch:
        raise ValueError("Cannot collate an empty batch.")
    width = max(e.n_tokens for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    facts = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, example in enumerate(batch):
        n = example.n_tokens
        ids[row, :n] = torch.tensor(example.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels)
        facts[row, :n] = torch.tensor(example.new_fact)
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if with_new_facts:
        out["new_fact_mask"] = facts
    return out


@dataclass(frozen=True)
class FinetuneCollator:
    """`collate` as a Hugging Face `data_collator`: the dataset is a list of EncodedExample."""

    pad_id: int
    with_new_facts: bool = False

    def __call__(self, features: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        return collate(features, self.pad_id, self.with_new_facts)


__all__ = [
    "IGNORE_INDEX", "SCHEMA_VERSION", "SHAPES", "ChatTurn", "EncodedExample", "FinetuneCollator",
    "FinetuneExample", "FinetuneLoad", "collate", "encode_example", "encode_examples",
    "example_from_dict", "example_to_dict", "prompt_text", "read_finetune", "render_example",
    "write_finetune",
]
