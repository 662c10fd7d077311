"""Build prompts through the tokenizer's chat template, or as plain text for base models."""

from __future__ import annotations

from typing import Any

Message = dict[str, str]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_chat(tokenizer: Any, messages: list[Message], add_generation_prompt: bool = True) -> str:
    """The prompt text for a conversation.

    With a chat template: the template's rendering (a "system" turn the template rejects is
    merged into the first user turn). Without one: "User: ...\\nAssistant: ..." lines, ending in
    "Assistant:" when a reply is wanted; a single user message is passed through as it is.
    """
    for message in messages:
        if set(message) != {"role", "content"} or not isinstance(message["content"], str):
            raise ValueError("A chat message needs exactly 'role' and 'content' strings, "
                             f"got {message}")
    if has_chat_template(tokenizer):
        try:
            return str(tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt))
        except Exception:  # noqa: BLE001 - e.g. templates that forbid a system turn
            if messages and messages[0]["role"] == "system" and len(messages) > 1:
                merged = [{"role": messages[1]["role"],
                           "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
                return format_chat(tokenizer, merged + messages[2:], add_generation_prompt)
            raise
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"] + ("\n" if add_generation_prompt else "")
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    if add_generation_prompt:
        lines.append("Assistant:")
    return "\n".join(lines)


def user_prompt(tokenizer: Any, text: str, system: str | None = None) -> str:
    """The prompt for one user turn, ready for the assistant's reply."""
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    return format_chat(tokenizer, messages + [{"role": "user", "content": text}])
