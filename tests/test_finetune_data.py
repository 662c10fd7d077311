"""Fine-tuning JSONL: the three shapes, labels by hand on a word-level tokenizer, new-fact marks,
bad lines named by file, line and field, and padding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.control.finetune_data import (
    IGNORE_INDEX,
    FinetuneCollator,
    collate,
    encode_example,
    example_from_dict,
    example_to_dict,
    prompt_text,
    read_finetune,
    write_finetune,
)
from core.data.traces import TraceFileError
from tests.tiny_models import tiny_tokenizer

# <s> ROLE content </s> per turn; roles as words so every token is in the tiny vocabulary
TEMPLATE = ("{% for m in messages %}<s> "
            "{{ {'user': 'w3', 'assistant': 'w4'}.get(m['role'], 'w5') }} {{ m['content'] }} </s> "
            "{% endfor %}{% if add_generation_prompt %}<s> w4 {% endif %}")
X = IGNORE_INDEX


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(TEMPLATE)


def test_prompt_completion_labels_only_the_reply_and_its_end_token(tok) -> None:
    ex = example_from_dict({"prompt": "w10 w11", "completion": "w12 w13"}, "a")
    enc = encode_example(tok, ex)
    # <s> w3 w10 w11 </s> <s> w4 w12 w13 </s>
    assert enc.input_ids == (1, 3, 10, 11, 2, 1, 4, 12, 13, 2)
    assert enc.labels == (X, X, X, X, X, X, X, 12, 13, 2)
    assert enc.new_fact == (False,) * 10
    assert enc.n_response_tokens == 3


def test_response_key_and_system_turn(tok) -> None:
    ex = example_from_dict({"system": "w20", "prompt": "w10", "response": "w12"}, "a")
    assert [t.role for t in ex.turns] == ["system", "user", "assistant"]
    enc = encode_example(tok, ex)
    # <s> w5 w20 </s> <s> w3 w10 </s> <s> w4 w12 </s>
    assert enc.input_ids == (1, 5, 20, 2, 1, 3, 10, 2, 1, 4, 12, 2)
    assert enc.labels == (X,) * 10 + (12, 2)


def test_messages_train_every_assistant_turn_even_when_the_user_repeats_it(tok) -> None:
    turns = [("user", "w10"), ("assistant", "w11"), ("user", "w11"), ("assistant", "w12")]
    obj = {"messages": [{"role": role, "content": content} for role, content in turns]}
    enc = encode_example(tok, example_from_dict(obj, "a"))
    # <s> w3 w10 </s> <s> w4 w11 </s> <s> w3 w11 </s> <s> w4 w12 </s>
    assert enc.labels == (X, X, X, X, X, X, 11, 2, X, X, X, X, X, X, 12, 2)


def test_plain_text_trains_every_token(tok) -> None:
    enc = encode_example(tok, example_from_dict({"text": "w10 w11 w12"}, "a"))
    assert enc.input_ids == (10, 11, 12)
    assert enc.labels == (10, 11, 12)


def test_conversational_prompt_completion_lists(tok) -> None:
    obj = {"prompt": [{"role": "user", "content": "w10"}],
           "completion": [{"role": "assistant", "content": "w11"}]}
    ex = example_from_dict(obj, "a")
    assert encode_example(tok, ex).labels[-2:] == (11, 2)
    assert example_from_dict(example_to_dict(ex)) == ex


def test_new_facts_as_substrings_or_for_the_whole_reply(tok) -> None:
    ex = example_from_dict({"prompt": "w10", "completion": "w12 w13 w14", "new_facts": ["w13"]},
                           "a")
    enc = encode_example(tok, ex)
    # <s> w3 w10 </s> <s> w4 w12 w13 w14 </s>: only w13 is marked
    assert enc.new_fact == (False,) * 7 + (True, False, False)
    whole = example_from_dict({"prompt": "w10", "completion": "w12 w13", "new_facts": True}, "b")
    enc = encode_example(tok, whole)
    assert enc.new_fact == (False,) * 6 + (True, True, False)  # the end token is no fact


def test_prompt_text_is_the_chat_up_to_the_reply(tok) -> None:
    ex = example_from_dict({"prompt": "w10", "completion": "w12"}, "a")
    assert prompt_text(tok, ex) == "<s> w3 w10 </s> <s> w4 "
    assert prompt_text(tok, example_from_dict({"text": "w10"}, "b")) == ""


def test_max_tokens_cuts_and_rejects_an_example_without_response(tok) -> None:
    ex = example_from_dict({"prompt": "w10 w11", "completion": "w12 w13"}, "a")
    assert encode_example(tok, ex, max_tokens=8).labels == (X,) * 7 + (12,)
    with pytest.raises(ValueError, match="no response token within 6"):
        encode_example(tok, ex, max_tokens=6)


def test_no_chat_template_falls_back_to_plain_lines() -> None:
    tok = tiny_tokenizer()
    enc = encode_example(tok, example_from_dict({"prompt": "w10", "completion": "w12"}, "a"))
    labelled = [i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != X]
    assert labelled == [12]


BAD_LINES = [
    ('{"prompt": "w1"}', "completion", "missing"),
    ('{"prompt": 3, "completion": "w2"}', "prompt", "must be a string"),
    ('{"text": "w1", "prompt": "w2", "completion": "w3"}', "text", "exactly one"),
    ('{"messages": [{"role": "user", "content": "w1"}]}', "messages", "no assistant"),
    ('{"messages": [{"role": "assistant", "content": 5}]}', "messages[0].content", "string"),
    ('{"text": "w1 w2", "new_facts": ["w9"]}', "new_facts[0]", "not in the response"),
    ('{"text": "w1", "new_facts": "yes"}', "new_facts", "true, false or a list"),
    ('{"text": "w1", "answer": [1]}', "answer", "string or a number"),
    ('{"foo": 1}', "", "exactly one"),
    ("[1, 2]", "", "expected a JSON object"),
    ("{not json", "", "invalid JSON"),
]


@pytest.mark.parametrize(("line", "field", "words"), BAD_LINES)
def test_bad_lines_name_file_line_and_field(tmp_path: Path, line: str, field: str,
                                            words: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": 1, "text": "w5"}\n\n' + line + "\n")
    load = read_finetune(path)
    assert [e.id for e in load.examples] == ["1"]
    assert len(load.issues) == 1
    issue = load.issues[0]
    assert (issue.source, issue.line, issue.field) == ("data.jsonl", 3, field)
    assert words in issue.message
    assert str(issue).startswith("data.jsonl, line 3")
    with pytest.raises(TraceFileError):
        read_finetune(path, strict=True)


def test_duplicate_ids_and_default_ids(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a", "text": "w5"}\n{"id": "a", "text": "w6"}\n{"text": "w7"}\n')
    load = read_finetune(path)
    assert [e.id for e in load.examples] == ["a", "d-3"]
    assert load.issues[0].field == "id" and "duplicate" in load.issues[0].message


def test_write_and_read_back(tmp_path: Path) -> None:
    rows = [{"id": "1", "messages": [{"role": "user", "content": "w1"},
                                     {"role": "assistant", "content": "w2"}]},
            {"id": "2", "prompt": "w1", "completion": "w3 w4", "new_facts": ["w4"], "answer": 7,
             "source": "here"},
            {"id": "3", "text": "w9", "new_facts": True}]
    examples = [example_from_dict(r) for r in rows]
    path = tmp_path / "out.jsonl"
    write_finetune(path, examples)
    assert read_finetune(path).examples == examples
    assert examples[1].answer == "7" and examples[1].extra == {"source": "here"}
    assert json.loads(path.read_text().splitlines()[1])["schema_version"] == 1


def test_collate_pads_right_with_ignored_labels(tok) -> None:
    a = encode_example(tok, example_from_dict({"text": "w10 w11 w12"}, "a"))
    b = encode_example(tok, example_from_dict({"text": "w13 w14", "new_facts": True}, "b"))
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12], [13, 14, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[10, 11, 12], [13, 14, X]]
    assert batch["new_fact_mask"].tolist() == [[False] * 3, [True, True, False]]
    plain = FinetuneCollator(pad_id=0)([a, b])
    assert set(plain) == {"input_ids", "attention_mask", "labels"}
    assert plain["labels"].dtype == torch.long
