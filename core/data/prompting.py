"""How a problem becomes the model's prompt: an optional system message, worked examples, the
question and the answer format, rendered through the model's chat template (plain text for a
model without one, `core.runtime.chat`).

The user message (the default, used for Telltale's own arithmetic chains):

    Example.
    Question: Mia has 4 pens. She buys 3 more pens, then doubles them. How many ...?
    4 + 3 = 7
    7 * 2 = 14
    Answer: 14

    Question: <the problem>
    Solve it the same way: one calculation per line, then a line 'Answer: <number>'.

A 135M model copies the numbers of an inline example ("like 12 + 5 = 17") into most of its
answers; a separate worked example with its own question keeps the format without that. The
answer format's lead ("Answer:" here) is also what the strict reader and the stop rule look for
(`PromptSpec.reader`). A trace stores its user message as `prompt` and a system message, when
there is one, as `system`, so the text it was generated from is
`core.runtime.chat.user_prompt(tokenizer, trace.prompt, system=trace.extra.get("system"))`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from core.data.answers import AnswerFormat
from core.runtime.chat import Message, format_chat

_PLACEHOLDER = re.compile(r"<[^<>]+>")


@dataclass(frozen=True)
class Example:
    """A worked example: its question, its solution lines (without the answer line) and the
    answer, which the prompt's answer format states."""

    question: str
    solution: str
    answer: str


DEFAULT_EXAMPLE = Example(
    "Mia has 4 pens. She buys 3 more pens, then doubles them. How many pens does she have?",
    "4 + 3 = 7\n7 * 2 = 14", "14")
_INSTRUCTION_WITH_EXAMPLES = ("Solve it the same way: one calculation per line, then a line "
                              "'{answer_format}'.")
_INSTRUCTION_ALONE = ("Solve it step by step: one calculation per line, then a line "
                      "'{answer_format}'.")


@dataclass(frozen=True)
class PromptSpec:
    """A system message (None: the template's default), worked examples, the answer format
    (its first "<...>" marks where the answer goes: "Answer: <number>", "#### <number>",
    "\\boxed{<answer>}") and the instruction after the question ("{answer_format}" in it is
    replaced; None: a default that fits whether there are examples)."""

    system: str | None = None
    examples: tuple[Example, ...] = (DEFAULT_EXAMPLE,)
    answer_format: str = "Answer: <number>"
    instruction: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "examples", tuple(self.examples))
        if not _PLACEHOLDER.search(self.answer_format):
            raise ValueError(f"The answer format {self.answer_format!r} needs a placeholder "
                             "such as <number> where the answer goes.")

    @property
    def lead(self) -> str:
        """The answer format's text before its placeholder ("Answer:")."""
        found = _PLACEHOLDER.search(self.answer_format)
        assert found is not None  # checked in __post_init__
        return self.answer_format[:found.start()]

    def answer_line(self, answer: str) -> str:
        """The answer format with `answer` in place of its placeholder."""
        return _PLACEHOLDER.sub(lambda _: answer, self.answer_format, count=1)

    def user_message(self, question: str) -> str:
        """The text of the user turn (see the module docstring)."""
        parts = []
        for index, example in enumerate(self.examples, start=1):
            title = "Example." if len(self.examples) == 1 else f"Example {index}."
            parts.append(f"{title}\nQuestion: {example.question}\n{example.solution.strip()}\n"
                         f"{self.answer_line(example.answer)}\n\n")
        instruction = self.instruction if self.instruction is not None else (
            _INSTRUCTION_WITH_EXAMPLES if self.examples else _INSTRUCTION_ALONE)
        instruction = instruction.replace("{answer_format}", self.answer_format)
        return "".join(parts) + f"Question: {question}\n{instruction}"

    def messages(self, question: str) -> list[Message]:
        system: list[Message] = [{"role": "system", "content": self.system}] \
            if self.system else []
        return system + [{"role": "user", "content": self.user_message(question)}]

    def render(self, tokenizer: Any, question: str) -> str:
        """The prompt text the model reads, through its chat template."""
        return format_chat(tokenizer, self.messages(question))

    def reader(self, base: AnswerFormat | None = None) -> AnswerFormat:
        """The answer reader for replies to this prompt: `base`'s patterns (default: the
        standard statements) plus this format's lead, unless one of them reads it already."""
        base = base or AnswerFormat()
        lead = self.lead.strip()
        if not lead or any(re.fullmatch(p, lead, re.IGNORECASE) for p in base.patterns):
            return base  # "Answer:" or "####": already a standard statement
        return AnswerFormat.with_lead(lead, base.patterns, base.numeric)

    def as_dict(self) -> dict[str, Any]:
        return {"system": self.system, "answer_format": self.answer_format,
                "instruction": self.instruction,
                "examples": [{"question": e.question, "solution": e.solution,
                              "answer": e.answer} for e in self.examples]}


DEFAULT_PROMPT = PromptSpec()

