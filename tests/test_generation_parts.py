"""The parts make-traces is built from: the prompt (examples, answer format, system message,
chat template), the journal (resuming, a cut-off line, other settings) and sampling (raw
replies, the stop rule per row)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data.journal import Journal, JournalMismatch
from core.data.prompting import DEFAULT_PROMPT, Example, PromptSpec
from core.runtime.chat import user_prompt
from core.runtime.generate import SamplingConfig, sample_replies, sample_responses
from core.runtime.models import wrap_model
from tests.tiny_models import tiny_model, tiny_tokenizer

CHAT = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} | {% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}")

# ---------------------------------------------------------------------------- prompting


def test_default_prompt_has_one_worked_example_and_the_answer_line() -> None:
    text = DEFAULT_PROMPT.user_message("Tom has 3 cats. How many?")
    assert text == (
        "Example.\nQuestion: Mia has 4 pens. She buys 3 more pens, then doubles them. How many "
        "pens does she have?\n4 + 3 = 7\n7 * 2 = 14\nAnswer: 14\n\nQuestion: Tom has 3 cats. "
        "How many?\nSolve it the same way: one calculation per line, then a line "
        "'Answer: <number>'.")
    assert DEFAULT_PROMPT.reader().read("4 + 3 = 7\nAnswer: 7\n").text == "7"  # type: ignore


def test_prompt_spec_variants() -> None:
    spec = PromptSpec(system="Be brief.", examples=(Example("1 + 1?", "1 + 1 = 2", "2"),
                                                    Example("2 + 2?", "2 + 2 = 4", "4")),
                      answer_format="#### <number>")
    text = spec.user_message("3 + 3?")
    assert text.startswith("Example 1.\nQuestion: 1 + 1?\n1 + 1 = 2\n#### 2\n\nExample 2.")
    assert text.endswith("Question: 3 + 3?\nSolve it the same way: one calculation per line, "
                         "then a line '#### <number>'.")
    assert spec.messages("q")[0] == {"role": "system", "content": "Be brief."}
    tokenizer = tiny_tokenizer(CHAT)
    assert spec.render(tokenizer, "3 + 3?") == user_prompt(tokenizer, text, system="Be brief.")
    alone = PromptSpec(examples=(), answer_format="\\boxed{<answer>}")
    assert alone.user_message("q") == ("Question: q\nSolve it step by step: one calculation "
                                       "per line, then a line '\\boxed{<answer>}'.")
    assert alone.reader().read("so \\boxed{x^2}").text == "x^2"  # type: ignore[union-attr]
    custom = PromptSpec(examples=(), answer_format="Result = <number>",
                        instruction="Answer as '{answer_format}'.")
    assert custom.user_message("q").endswith("Answer as 'Result = <number>'.")
    assert custom.reader().read("Result = 12\n").text == "12"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="placeholder"):
        PromptSpec(answer_format="Answer:")
    assert json.loads(json.dumps(spec.as_dict()))["examples"][1]["answer"] == "4"


# ---------------------------------------------------------------------------- journal


def test_journal_resumes_drops_a_cut_line_and_refuses_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal.open(path, {"settings": 1}) as journal:
        assert journal.entries == []
        journal.append([{"i": 0}, {"i": 1}])
    with path.open("a") as handle:
        handle.write('{"i": 2, "cut off')  # an interruption mid-line
    with Journal.open(path, {"settings": 1}) as journal:
        assert journal.entries == [{"i": 0}, {"i": 1}]
        journal.append([{"i": 2}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"settings": 1}, {"i": 0}, {"i": 1}, {"i": 2}]
    with pytest.raises(JournalMismatch, match="other settings"):
        Journal.open(path, {"settings": 2})
    path.write_text('{"settings"')  # even the header cut off: start over
    with Journal.open(path, {"settings": 3}) as journal:
        assert journal.entries == []
    assert path.read_text() == '{"settings": 3}\n'


# ---------------------------------------------------------------------------- sampling


@pytest.fixture()
def loaded(one_torch_thread):
    return wrap_model(tiny_model("llama"), tiny_tokenizer(CHAT), name="tiny")


def test_replies_are_raw_and_the_stop_rule_ends_each_row(loaded) -> None:
    sampling = SamplingConfig(max_new_tokens=12, seed=3)
    prompts = [user_prompt(loaded.tokenizer, f"w{10 + i} w20") for i in range(5)]
    free = sample_replies(loaded, prompts, sampling, batch_size=5)

    def third_word(text: str) -> int | None:  # stop once three words are written
        words = text.split()
        return len(text) if len(words) >= 3 else None

    stopped = sample_replies(loaded, prompts, sampling, batch_size=5, stop=third_word)
    for full, short in zip(free, stopped, strict=True):
        assert full.startswith(short)  # same random numbers up to the stop
        assert len(short.split()) == min(3, len(full.split()))
    assert any(len(full.split()) > 3 for full in free)
    assert sample_responses(loaded, [f"w{10 + i} w20" for i in range(5)], sampling,
                            batch_size=5) == free
