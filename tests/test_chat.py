"""Prompt building: through a chat template, as plain text, and the system-turn fallback."""

from __future__ import annotations

import pytest

from core.runtime.chat import format_chat, has_chat_template, user_prompt
from tests.tiny_models import tiny_tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Like Gemma's: a system turn is an error.
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<turn>{{ m['role'] }}: {{ m['content'] }}</turn>{% endfor %}"
    "{% if add_generation_prompt %}<turn>assistant: {% endif %}"
)
BROKEN = "{{ raise_exception('always broken') }}"


def test_has_chat_template() -> None:
    assert has_chat_template(tiny_tokenizer(CHATML))
    assert not has_chat_template(tiny_tokenizer())
    assert not has_chat_template(object())


def test_template_renders_the_conversation() -> None:
    tok = tiny_tokenizer(CHATML)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert format_chat(tok, messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert format_chat(tok, messages, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )
    assert user_prompt(tok, "2+2?") == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert user_prompt(tok, "2+2?", system="Be brief.").startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n")


def test_without_template_a_single_user_turn_passes_through() -> None:
    tok = tiny_tokenizer()
    assert format_chat(tok, [{"role": "user", "content": "Once upon"}]) == "Once upon\n"
    assert format_chat(tok, [{"role": "user", "content": "Once upon"}],
                       add_generation_prompt=False) == "Once upon"
    assert user_prompt(tok, "Q") == "Q\n"


def test_without_template_a_conversation_becomes_role_lines() -> None:
    tok = tiny_tokenizer()
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
    assert format_chat(tok, messages) == "System: S\nUser: U1\nAssistant: A1\nUser: U2\nAssistant:"
    assert format_chat(tok, messages, add_generation_prompt=False) == (
        "System: S\nUser: U1\nAssistant: A1\nUser: U2")
    assert user_prompt(tok, "Q", system="S") == "System: S\nUser: Q\nAssistant:"


def test_a_template_that_rejects_system_gets_it_merged_into_the_user_turn() -> None:
    tok = tiny_tokenizer(NO_SYSTEM)
    assert user_prompt(tok, "Hi") == "<turn>user: Hi</turn><turn>assistant: "
    assert user_prompt(tok, "Hi", system="Be brief.") == (
        "<turn>user: Be brief.\n\nHi</turn><turn>assistant: ")
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
    assert format_chat(tok, messages, add_generation_prompt=False) == (
        "<turn>user: S\n\nU1</turn><turn>assistant: A1</turn><turn>user: U2</turn>")


def test_a_template_error_without_a_system_turn_is_raised() -> None:
    tok = tiny_tokenizer(BROKEN)
    with pytest.raises(Exception, match="always broken"):
        user_prompt(tok, "Hi")
    with pytest.raises(Exception, match="always broken"):
        format_chat(tok, [{"role": "system", "content": "only a system turn"}])


@pytest.mark.parametrize("message", [{"role": "user"}, {"role": "user", "content": 3},
                                     {"role": "user", "content": "x", "name": "bob"}])
def test_malformed_messages_raise(message: dict) -> None:
    with pytest.raises(ValueError, match="role"):
        format_chat(tiny_tokenizer(CHATML), [message])
