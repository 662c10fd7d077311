"""Segmenting responses into steps, and mapping real tokenizer offsets onto those steps."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from core.data.steps import CharSpan, Segmenter, split_steps, token_spans, token_step_index

CORPUS = [
    "The answer is 42. First, compute 3.5 + 2 = 5.5 and then check it.",
    "Café naïve résumé, déjà vu. 数学很有趣。 Step 1: add 🙂 and 🚀.",
    "<think>\nLet me think about it.\n</think>\nSo the answer is 7.\r\n",
    "1. Read the question.\n2) Solve it.\nStep 3: Check e.g. the units.",
] * 4


def texts(text: str, spans: list[CharSpan]) -> list[str]:
    return [text[span.start:span.end] for span in spans]


def build_tokenizer(pre_tokenizer: pre_tokenizers.PreTokenizer | None) -> PreTrainedTokenizerFast:
    """A BPE trained in memory on CORPUS, with a BOS token that has (0, 0) offsets."""
    tokenizer = Tokenizer(models.BPE())
    if pre_tokenizer is not None:
        tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>")


TOKENIZERS = {
    "byte_bpe": build_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False)),
    "whitespace_bpe": build_tokenizer(pre_tokenizers.Whitespace()),  # no tokens for whitespace
    "raw_bpe": build_tokenizer(None),  # merges may straddle newlines and step boundaries
}

# --- split_steps: hand-written expected steps -------------------------------------------------


def test_lines_trims_and_skips_blank_lines_crlf_and_think_tags() -> None:
    text = "<think>\n  First  step. \r\n\r\n\n\tSecond 🙂 step\r\n</think>\nAnswer: 数学"
    assert texts(text, split_steps(text)) == ["First  step.", "Second 🙂 step", "Answer: 数学"]


def test_think_tags_at_line_start_or_end_are_not_in_any_step() -> None:
    text = "<think>Plan the sum.\nAdd 2 and 2.</think>The answer is 4."
    for mode in ("lines", "sentences", "numbered"):
        steps = texts(text, split_steps(text, Segmenter(mode)))
        assert all("think>" not in step for step in steps), (mode, steps)
    assert texts(text, split_steps(text)) == ["Plan the sum.", "Add 2 and 2.", "The answer is 4."]


def test_sentences_keep_decimals_abbreviations_and_list_numbers() -> None:
    text = ("We have 3.5 apples, e.g. red ones. Dr. Smith agrees! Is it 7? Yes...\n"
            "1. Count them (i.e. all). Done.\n\"Quoted end.\" Next one")
    assert texts(text, split_steps(text, Segmenter("sentences"))) == [
        "We have 3.5 apples, e.g. red ones.", "Dr. Smith agrees!", "Is it 7?", "Yes...",
        "1. Count them (i.e. all).", "Done.", "\"Quoted end.\"", "Next one"]


def test_numbered_steps_with_preamble_and_continuation_lines() -> None:
    text = ("Let us solve it.\n1. Read 3.5 as a decimal.\n   It is a number.\n"
            "2) Add.\n**Step 3:** Check.\n## 4. Answer: 9")
    assert texts(text, split_steps(text, Segmenter("numbered"))) == [
        "Let us solve it.", "1. Read 3.5 as a decimal.\n   It is a number.", "2) Add.",
        "**Step 3:** Check.", "## 4. Answer: 9"]


def test_numbered_without_numbers_is_one_step() -> None:
    text = "just one line\nand another"
    assert split_steps(text, Segmenter("numbered")) == [CharSpan(0, len(text))]


def test_regex_pattern_matches_step_starts() -> None:
    text = "Intro. First we add. Then we check.\nFinally done"
    segmenter = Segmenter("regex", r"\b(?:First|Then|Finally)\b")
    assert texts(text, split_steps(text, segmenter)) == [
        "Intro.", "First we add.", "Then we check.", "Finally done"]


@pytest.mark.parametrize("text", ["", "   \n\r\n\t", "<think>\n</think>\n"])
def test_blank_text_has_no_steps(text: str) -> None:
    for mode in ("lines", "sentences", "numbered"):
        assert split_steps(text, Segmenter(mode)) == []


@pytest.mark.parametrize(("mode", "pattern", "message"), [
    ("words", None, "Unknown segmenting mode"),
    ("regex", None, "needs a pattern"),
    ("regex", "(unclosed", "not a valid regex"),
    ("lines", r"\n", "only used with mode 'regex'"),
])
def test_segmenter_rejects_bad_configs(mode: str, pattern: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Segmenter(mode, pattern)


# --- token_step_index: hand-computed cases -----------------------------------------------------


def test_synthetic_offsets_prompt_gap_straddle_and_trailing_tokens() -> None:
    prompt = "Q?\n"  # response starts at char 3
    response = "  ab\n\ncd\nxy"  # steps: "ab" 2:4, "cd" 6:8, "xy" 9:11
    steps = split_steps(response)
    assert steps == [CharSpan(2, 4), CharSpan(6, 8), CharSpan(9, 11)]
    offsets = [(0, 0), (0, 2), (2, 4),  # BOS, prompt, token straddling into the response
               (5, 6), (6, 7), (7, 8),  # "a", "b", first "\n" (gap after step 0)
               (8, 10),                 # "\nc": straddles the gap and step 1 -> step 1
               (10, 12),                # "d\n": starts in step 1, spills into the gap
               (12, 14), (14, 14)]      # "xy", a zero-width token at the very end
    assert token_step_index(offsets, steps, response_start=len(prompt)) == [
        -1, -1, 0, 0, 0, 0, 1, 1, 2, 2]


def test_token_holding_two_steps_goes_to_the_first_and_byte_tokens_share_a_step() -> None:
    steps = [CharSpan(0, 1), CharSpan(2, 3), CharSpan(4, 5)]  # "a b 🙂" as chars 0, 2, 4
    offsets = [(0, 3), (3, 5), (4, 5), (4, 5)]  # "a b" holds steps 0 and 1; 🙂 as 3 byte tokens
    assert token_step_index(offsets, steps) == [0, 2, 2, 2]
    assert token_spans([0, 2, 2, 2], 3) == [(0, 1), (1, 1), (1, 4)]


def test_zero_steps_gives_all_minus_one_and_bad_steps_raise() -> None:
    assert token_step_index([(0, 0), (0, 3), (3, 5)], [], response_start=3) == [-1, -1, -1]
    with pytest.raises(ValueError, match="must be non-empty, in order"):
        token_step_index([(0, 1)], [CharSpan(3, 5), CharSpan(4, 6)])
    with pytest.raises(ValueError, match="not contiguous"):
        token_spans([0, 1, 0], 2)


# --- token_step_index on real tokenizers, against a character-by-character oracle ---------------


def oracle(offsets: list[tuple[int, int]], steps: list[CharSpan], start: int) -> list[int]:
    """The rules restated per character: the step owning each char, else the gap rule."""
    owner: dict[int, int] = {}
    for index, step in enumerate(steps):
        owner.update({start + char: index for char in range(step.start, step.end)})
    expected = []
    for char_start, char_end in offsets:
        if char_end <= start or not steps:
            expected.append(-1)
            continue
        inside = [owner[c] for c in range(max(char_start, start), char_end) if c in owner]
        before = [i for i, step in enumerate(steps) if start + step.end <= max(char_start, start)]
        expected.append(inside[0] if inside else (before[-1] if before else 0))
    return expected


AWKWARD = [
    "First step.\nSecond step.\n",
    "<think>\nCafé  naïve   résumé.\n\n数学很有趣。\n</think>\nThe answer is 🙂🚀 42",
    "1. Read.\r\n2) Solve 3.5 + 2.\r\nStep 3: e.g. check.\r\nx",
    "\n\n   leading blank lines\n  a\n",
    "no trailing newline, one step",
]


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@pytest.mark.parametrize("mode", ["lines", "sentences", "numbered"])
@pytest.mark.parametrize("response", AWKWARD)
def test_real_tokenizer_offsets_follow_the_rules(name: str, mode: str, response: str) -> None:
    prompt = "Question: what is 40 + 2?\nAnswer:"
    encoded = TOKENIZERS[name](prompt + response, return_offsets_mapping=True)
    offsets = [tuple(pair) for pair in encoded["offset_mapping"]]
    steps = split_steps(response, Segmenter(mode))
    index = token_step_index(offsets, steps, response_start=len(prompt))

    assert offsets[0] == (0, 0) and index[0] == -1  # BOS
    assert index == oracle(offsets, steps, len(prompt))
    in_response = [i for i, (_, end) in enumerate(offsets) if end > len(prompt)]
    assert all(index[i] == -1 for i in range(len(offsets)) if i not in in_response)
    assert all(index[i] >= 0 for i in in_response)  # every response token has one step
    response_steps = [index[i] for i in in_response]
    assert response_steps == sorted(response_steps)  # non-decreasing
    for k, step in enumerate(steps):
        # The token holding the step's first char: if it holds no char of an earlier step, the
        # step has a char of its own and must receive at least that token.
        first_char = len(prompt) + step.start
        holder = next(i for i, (a, b) in enumerate(offsets) if a <= first_char < b)
        earlier = [s for s in steps[:k] if offsets[holder][0] < len(prompt) + s.end]
        if not earlier:
            assert index[holder] == k
    if name == "byte_bpe":  # this tokenizer never merges across whitespace
        assert set(response_steps) == set(range(len(steps)))
        spans = token_spans(index, len(steps))
        assert all(start < end for start, end in spans)


def test_newline_ending_a_line_belongs_to_its_step() -> None:
    response = "Add the numbers.\nCheck the sum.\n"
    encoded = TOKENIZERS["byte_bpe"](response, return_offsets_mapping=True)
    offsets = [tuple(pair) for pair in encoded["offset_mapping"]]
    index = token_step_index(offsets, split_steps(response))
    newline_tokens = [i for i, (a, b) in enumerate(offsets) if response[a:b] == "\n"]
    assert [index[i] for i in newline_tokens] == [0, 1]


def test_a_catastrophic_pattern_is_a_clear_error_within_a_second() -> None:
    import time

    from core.data.traces import read_traces

    segmenter = Segmenter("regex", r"(a+)+$")
    start = time.perf_counter()
    with pytest.raises(ValueError, match="backtracks catastrophically"):
        split_steps("a" * 5000 + "b", segmenter)
    assert time.perf_counter() - start < 1.0
    line = json.dumps({"id": 1, "prompt": "q", "response": "a" * 5000 + "b"}) + "\n"
    start = time.perf_counter()
    with pytest.raises(ValueError, match="backtracks catastrophically"):
        read_traces((line * 50).encode(), segmenter=segmenter)
    assert time.perf_counter() - start < 1.0  # the first slow line stops the read


def test_a_harmless_pattern_still_splits() -> None:
    spans = split_steps("First a.\nThen b.\nFinally c.",
                        Segmenter("regex", r"^(?:First|Then|Finally)\b"))
    assert len(spans) == 3
