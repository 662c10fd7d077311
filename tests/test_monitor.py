"""The streaming monitor on a tiny random Llama with a character tokenizer (every text round-trips
to the same ids): streamed scores equal the offline teacher-forced scores, also after
backtracking, which proves the KV-cache crop; the kill switch; hooks always removed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from core.data.traces import trace_from_dict
from core.diagnose.evaluation import score_capture
from core.diagnose.feature_store import CaptureConfig, capture_in_memory
from core.diagnose.monitor import MonitorConfig, run_monitor, sample_token
from core.diagnose.probes import LinearProbe, ProbeBundle, ProbeMeta
from core.runtime.models import wrap_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHARS = list("0123456789+=-ab \n")
TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


@pytest.fixture(scope="module")
def loaded():
    vocab = {"<unk>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        eos_token="</s>")
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, eos_token_id=1, bos_token_id=1)
    model = LlamaForCausalLM(config)
    newline = vocab["\n"]

    def shape_logits(_module, _inputs, logits):  # no <unk>/EOS; newlines common: several steps
        logits = logits.clone()
        logits[..., :2] = -1e9
        logits[..., newline] += 1.5
        return logits

    model.lm_head.register_forward_hook(shape_logits)
    return wrap_model(model, tokenizer, name="tiny-char")


def bundle(bias: float = 0.0, seed: int = 0, step_bias: float = 0.0) -> ProbeBundle:
    """Random probes: `bias` shifts the tracker (c_prefix), `step_bias` the step probe."""
    rng = np.random.default_rng(seed)
    meta = ProbeMeta(model="tiny-char", model_name="tiny-char", hidden_size=32, layer=1,
                     step_pooling="exp", tracker_pooling="causal",
                     baseline_pooling="prefix_mean", step_input=True, threshold=0.5,
                     step_threshold=0.5, data_hash="x")
    return ProbeBundle(meta=meta, step=LinearProbe(rng.normal(size=32) * 3, step_bias),
                       tracker=LinearProbe(rng.normal(size=33) * 3, bias, 1))


def offline_scores(loaded, probes: ProbeBundle, question: str, text: str):
    trace = trace_from_dict({"id": "x", "prompt": question, "response": text})
    capture = capture_in_memory(loaded, [trace], CaptureConfig(layers=(1,),
                                                                poolings=probes.poolings))
    assert not capture.manifest["skipped"]
    return trace, score_capture(probes, capture)[0]


QUESTION = "1+2="


def test_streamed_scores_equal_teacher_forced_scores(loaded) -> None:
    probes = bundle()
    result = run_monitor(loaded, probes, QUESTION, MonitorConfig(max_new_tokens=90, seed=3,
                                                                 temperature=1.0))
    assert len(result.steps) >= 3
    prompt_ids = loaded.tokenizer(loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True),
        add_special_tokens=False)["input_ids"]
    assert loaded.tokenizer(result.text, add_special_tokens=False)["input_ids"] == \
        result.token_ids  # the character tokenizer round-trips: same ids teacher-forced
    trace, chain = offline_scores(loaded, probes, QUESTION, result.text)
    assert [s.text for s in result.steps] == [s.text for s in trace.steps]
    np.testing.assert_allclose([s.prefix_score for s in result.steps], chain.prefix_scores,
                               atol=1e-5)
    np.testing.assert_allclose([s.step_score for s in result.steps], chain.step_scores,
                               atol=1e-5)
    assert result.tokens_processed == result.tokens_generated and prompt_ids


def test_backtracking_crops_the_cache_and_keeps_every_discarded_step(loaded) -> None:
    probes = bundle(bias=0.0, seed=1)
    config = MonitorConfig(mode="backtrack", max_new_tokens=90, seed=5, temperature=1.0,
                           threshold=0.3, retries=2, max_backtracks=6)
    result = run_monitor(loaded, probes, QUESTION, config)
    assert result.discarded, "the threshold is low enough for some alarm"
    # every retry of step 1 alarmed and its first attempt was written again (a replay)
    assert [s.attempt for s in result.discarded if s.index == 1] == [1, 2]
    assert result.steps[1].attempt == 0
    assert len(result.discarded) <= 6 and all(not s.kept for s in result.discarded)
    assert all(s.alarm for s in result.discarded)
    # the kept text scores exactly as teacher-forced: the cropped cache held no trace of retries
    _, chain = offline_scores(loaded, probes, QUESTION, result.text)
    np.testing.assert_allclose([s.prefix_score for s in result.steps], chain.prefix_scores,
                               atol=1e-5)
    # retries cost step-length tokens, never a re-encoded prefix
    extra = result.tokens_processed - result.tokens_generated
    assert 0 < extra <= sum(s.n_tokens + 1 for s in result.discarded) + sum(
        s.n_tokens for s in result.steps)


def test_all_retries_alarming_keeps_the_least_alarming(loaded) -> None:
    always = bundle(step_bias=50.0)  # every step score ~1: every retry alarms
    config = MonitorConfig(mode="backtrack", max_new_tokens=60, seed=2, temperature=1.0,
                           retries=2, max_backtracks=4)
    result = run_monitor(loaded, always, QUESTION, config)
    assert len(result.discarded) == 4  # the chain's budget of backtracks is spent
    assert all(s.alarm for s in result.steps)


def test_stop_mode_is_a_kill_switch(loaded) -> None:
    result = run_monitor(loaded, bundle(step_bias=50.0), QUESTION,
                         MonitorConfig(mode="stop", max_new_tokens=90, seed=3, temperature=1.0))
    assert result.stopped_by_alarm and len(result.steps) == 1 and result.steps[0].alarm
    assert result.ended_by == "alarm"
    watch = run_monitor(loaded, bundle(step_bias=-50.0), QUESTION,
                        MonitorConfig(mode="stop", max_new_tokens=40, seed=3, temperature=1.0))
    assert not watch.stopped_by_alarm and watch.alarms == 0
    assert watch.ended_by == "max_new_tokens"


WATCH_TEXT = ("a=937-0\n3876\n19=407\n\n93 \n6 -970-25a67\n1534 b \n8\na2\n0\n0--4\n\n22256616\n"
              " 6\n\n-\n\n+=5-2+=4-6\n\nb9=")  # seed 3, temperature 1, 90 tokens, no stop


def test_the_reply_ends_after_the_line_of_its_answer_statement(loaded) -> None:
    from core.data.answers import AnswerFormat

    config = MonitorConfig(max_new_tokens=90, seed=3, temperature=1.0,
                           answers=AnswerFormat(patterns=(r"=",)))  # "x=V": V is the answer
    result = run_monitor(loaded, bundle(), QUESTION, config)
    assert result.text == "a=937-0\n" and result.ended_by == "answer"  # the line has ended
    assert result.answered and result.answer == "937-0"
    assert [s.text for s in result.steps] == ["a=937-0"]  # nothing after it scored as a step
    free = run_monitor(loaded, bundle(), QUESTION, replace(config, stop_at_answer=False))
    assert free.text == WATCH_TEXT and free.ended_by == "max_new_tokens"
    assert free.answer == "937-0"  # the first statement is the answer, stopped or not
    held = run_monitor(loaded, bundle(), QUESTION, replace(config, min_new_tokens=12))
    assert held.text == WATCH_TEXT[:12] and held.ended_by == "answer"  # not before 12 tokens
    none = run_monitor(loaded, bundle(), QUESTION, MonitorConfig(max_new_tokens=90, seed=3,
                                                                 temperature=1.0))
    assert none.text == WATCH_TEXT and not none.answered and none.answer is None


def test_a_stop_string_ends_the_reply_where_it_appears(loaded) -> None:
    config = MonitorConfig(max_new_tokens=90, seed=3, temperature=1.0, stop_strings=("93 ",))
    result = run_monitor(loaded, bundle(), QUESTION, config)
    assert result.text == WATCH_TEXT[:WATCH_TEXT.index("93 ") + 3]
    assert result.ended_by == "stop_string" and result.steps[-1].text == "93"
    with pytest.raises(ValueError, match="stop string"):
        MonitorConfig(stop_strings=("",))


def test_alarms_are_the_steps_own_events(loaded) -> None:
    probes = bundle(seed=1)
    step = run_monitor(loaded, probes, QUESTION, MonitorConfig(max_new_tokens=60, seed=3,
                                                               temperature=1.0))
    assert step.threshold == probes.meta.step_threshold and step.trigger == "step"
    assert [s.alarm for s in step.steps] == [s.step_score > 0.5 for s in step.steps]
    assert 0 < step.alarms < len(step.steps)
    rise = run_monitor(loaded, probes, QUESTION, MonitorConfig(
        max_new_tokens=60, seed=3, temperature=1.0, trigger="prefix-rise", rise_margin=0.05))
    assert rise.text == step.text and rise.threshold is None and rise.rise_margin == 0.05
    prefix = [probes.meta.threshold, *(s.prefix_score for s in rise.steps)]  # before step 0
    rises = [b - a for a, b in zip(prefix[:-1], prefix[1:], strict=True)]
    assert [s.alarm for s in rise.steps] == [r > 0.05 for r in rises]
    assert 0 < rise.alarms < len(rise.steps)
    no_step_probe = replace(probes, step=None, tracker=LinearProbe(
        np.random.default_rng(2).normal(size=32) * 3, 0.0))  # c_prefix from the states alone
    with pytest.raises(ValueError, match="prefix-rise"):
        run_monitor(loaded, no_step_probe, QUESTION, MonitorConfig(max_new_tokens=5))
    assert run_monitor(loaded, no_step_probe, QUESTION, MonitorConfig(
        max_new_tokens=5, trigger="prefix-rise")).tokens_generated == 5
    with pytest.raises(ValueError, match="trigger"):
        MonitorConfig(trigger="prefix")


def test_min_new_tokens_holds_back_eos(loaded) -> None:
    def eos_first(_module, _inputs, logits):  # EOS (id 1) is by far the likeliest token
        logits = logits.clone()
        logits[..., 1] = 50.0
        return logits

    handle = loaded.model.lm_head.register_forward_hook(eos_first)
    try:
        early = run_monitor(loaded, bundle(bias=-50.0), QUESTION,
                            MonitorConfig(max_new_tokens=30, seed=1))
        held = run_monitor(loaded, bundle(bias=-50.0), QUESTION,
                           MonitorConfig(max_new_tokens=30, min_new_tokens=12, seed=1))
    finally:
        handle.remove()
    assert early.tokens_generated == 0
    assert held.tokens_generated == 12  # EOS comes the moment it is allowed
    with pytest.raises(ValueError, match="min_new_tokens"):
        MonitorConfig(max_new_tokens=5, min_new_tokens=6)


def test_hooks_removed_when_the_caller_stops_with_an_error(loaded) -> None:
    from core.diagnose.monitor import monitor_events

    blocks = loaded.model.model.layers
    before = [len(b._forward_hooks) for b in blocks]

    def boom() -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        for _ in monitor_events(loaded, bundle(), QUESTION, should_stop=boom):
            pass
    assert [len(b._forward_hooks) for b in blocks] == before


def test_sampling_is_greedy_at_zero_and_respects_top_p() -> None:
    logits = torch.tensor([0.0, 3.0, 1.0, -2.0])
    gen = torch.Generator().manual_seed(0)
    assert sample_token(logits, 0.0, 1.0, gen) == 1
    draws = {sample_token(logits, 1.0, 0.5, gen) for _ in range(50)}
    assert draws == {1}  # token 1 alone holds more than half the mass


def test_probe_for_another_model_is_refused(loaded) -> None:
    other = bundle()
    other = replace(other, meta=replace(other.meta, hidden_size=64))
    with pytest.raises(ValueError, match="hidden size 64"):
        run_monitor(loaded, other, QUESTION)


def test_random_mode_resamples_a_listed_step_as_often_as_listed(loaded) -> None:
    config = MonitorConfig(mode="random", max_new_tokens=60, seed=4, temperature=1.0,
                           resample_steps=(0, 0, 1))
    result = run_monitor(loaded, bundle(bias=-50.0), QUESTION, config)
    assert sorted(s.index for s in result.discarded) == [0, 0, 1]
    assert [s.attempt for s in result.discarded if s.index == 0] == [0, 1]


def test_monitor_command_prints_steps_and_json(loaded, tmp_path, monkeypatch, capsys) -> None:
    import json

    from core.cli import main as cli
    from core.diagnose.probes import save_probe

    save_probe(tmp_path / "p", bundle())
    monkeypatch.setattr("core.cli.common.load", lambda args: loaded)
    base = ["monitor", "--prompt", QUESTION, "--probe", str(tmp_path / "p"),
            "--max-new-tokens", "40", "--temperature", "1", "--seed", "3"]
    assert cli.main(base) == 0
    out = capsys.readouterr().out
    assert "[ 0] step" in out and "ended (max_new_tokens):" in out
    assert "alarm: c_step > 0.500" in out and "no answer stated" in out
    assert cli.main([*base, "--answer-pattern", "=", "--trigger", "prefix-rise"]) == 0
    out = capsys.readouterr().out
    assert "ended (answer)" in out and "answer 937-0" in out and "rises by more than 0.200" in out
    assert cli.main([*base, "--answer-pattern", "=", "--no-stop", "--stop-string", "93 ",
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"text", "steps", "discarded", "tokens_generated", "alarms", "answer", "answered",
            "ended_by", "trigger"} <= set(result)
    assert result["answered"] and result["ended_by"] == "stop_string"
    with pytest.raises(SystemExit):  # argparse refuses "c_prefix over its threshold"
        cli.main([*base, "--trigger", "prefix"])
    assert cli.main([*base, "--rise-margin", "2"]) == 2
    assert "rise_margin must be in [0, 1)" in capsys.readouterr().err


# Same seeds, same tiny model: the text, the forward count, and (index, attempt, alarm) of every
# kept and discarded step. Pinned from the loop before it became `_MonitorRun`; re-pinned when
# the alarm became the step's own event (trigger "step", c_step over its threshold, instead of
# c_prefix over its threshold): watch, stop, replay and random write the very same text with the
# same forward count as before (their probes now drive c_step where they drove c_prefix: a
# step bias for an always / never alarming step probe); only the alarm flags of watch and
# random moved, and "backtrack" retries other steps, so its text is new. Backtracking with a
# replayed attempt ("every retry alarms", also in "backtrack" at steps 1 and 2), the random
# control and the prefix-rise trigger are covered.
PINNED = {
    "watch": (
        bundle(), MonitorConfig(max_new_tokens=90, seed=3, temperature=1.0),
        "a=937-0\n3876\n19=407\n\n93 \n6 -970-25a67\n1534 b \n8\na2\n0\n0--4\n\n22256616\n 6\n\n-"
        "\n\n+=5-2+=4-6\n\nb9=", 90,
        [(0, 0, True), (1, 0, True), (2, 0, False), (3, 0, True), (4, 0, True), (5, 0, False),
         (6, 0, False), (7, 0, True), (8, 0, False), (9, 0, False), (10, 0, True),
         (11, 0, False), (12, 0, False), (13, 0, True), (14, 0, True)], []),
    "stop": (
        bundle(step_bias=50.0), MonitorConfig(mode="stop", max_new_tokens=90, seed=3,
                                              temperature=1.0),
        "a=937-0\n3", 9, [(0, 0, True)], []),
    "backtrack": (
        bundle(seed=1), MonitorConfig(mode="backtrack", max_new_tokens=90, seed=5,
                                      temperature=1.0, threshold=0.3, retries=2,
                                      max_backtracks=6),
        "12b=\n10 \n\n\n730=\n\n3\n2b\n\n\n5+\n866a2=6\n+\n\n18\n503 05=\n=\n36 -\n987\n"
        "99aa8\n037 311\n\n74a\n\n\n+\n9b=24\n6", 131,
        [(0, 2, True), (1, 0, True), (2, 1, True), *[(i, 0, True) for i in range(3, 9)],
         (9, 0, False), (10, 0, True), (11, 0, True), (12, 0, True), (13, 0, False),
         (14, 0, False), *[(i, 0, True) for i in range(15, 19)]],
        [(0, 0, True), (0, 1, True), (1, 1, True), (1, 2, True), (2, 0, True), (2, 2, True)]),
    "replay": (
        bundle(step_bias=50.0), MonitorConfig(mode="backtrack", max_new_tokens=60, seed=2,
                                              temperature=1.0, retries=2, max_backtracks=4,
                                              retry_temperature_step=0.2),
        "86156+3788\n6b\n+-46\n72 9\n67866 b\n0\n7785925\n\n6=\nbb6b\n83+8123a\n", 136,
        [(i, 0, True) for i in range(10)],
        [(0, 1, True), (0, 2, True), (1, 1, True), (1, 2, True)]),
    "random": (
        bundle(step_bias=-50.0), MonitorConfig(mode="random", max_new_tokens=60, seed=4,
                                               temperature=1.0, resample_steps=(0, 0, 1, 3)),
        "\n45\n\n31\n2a\nbb\n\n 551\n\n33+81888-5+\n12\n8-5\n03\n9a36\n0\n2a\n+\n =24\n", 97,
        [(0, 2, False), (1, 1, False), (2, 0, False), (3, 1, False),
         *[(i, 0, False) for i in range(4, 14)]],
        [(0, 0, False), (0, 1, False), (1, 0, False), (3, 0, False)]),
    "prefix-rise": (
        bundle(seed=1), MonitorConfig(mode="backtrack", trigger="prefix-rise", rise_margin=0.1,
                                      max_new_tokens=90, seed=5, temperature=1.0, retries=2,
                                      max_backtracks=6),
        "12b=\n40\n8\n9b4\n158\nb730=\n=\n\n2b\n\n\n5+\n866a2=6\n+\n\n18\n503305=\n=\n36 -\n"
        "987\n99aa8\n 20b=24\n668=a\n=-", 127,
        [(0, 2, False), (1, 1, False), *[(i, 0, False) for i in range(2, 6)], (6, 1, False),
         *[(i, 0, False) for i in range(7, 17)], (17, 2, False), (18, 0, False),
         (19, 0, False)],
        [(0, 0, True), (0, 1, True), (1, 0, True), (6, 0, True), (17, 0, True), (17, 1, True)]),
}


@pytest.mark.parametrize("name", list(PINNED))
def test_same_seeds_give_the_same_reply_as_before(loaded, name) -> None:
    probes, config, text, processed, kept, discarded = PINNED[name]
    result = run_monitor(loaded, probes, QUESTION, config)
    assert result.text == text and result.tokens_processed == processed
    assert [(s.index, s.attempt, s.alarm) for s in result.steps] == kept
    assert [(s.index, s.attempt, s.alarm) for s in result.discarded] == discarded
    assert all(s.kept for s in result.steps) and not any(s.kept for s in result.discarded)


def test_the_top_k_nucleus_keeps_what_a_full_sort_keeps() -> None:
    from core.diagnose.monitor import nucleus

    def full_sort(probs: torch.Tensor, top_p: float) -> torch.Tensor:  # the naive formula
        ordered, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, 0) - ordered < top_p
        return torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])

    gen = torch.Generator().manual_seed(0)
    for trial in range(120):
        logits = torch.randn(4000, generator=gen) * (0.5, 3.0, 10.0, 40.0)[trial % 4]
        if trial % 3 == 0:
            logits = torch.round(logits)  # ties, also at the cut
        if trial % 5 == 0:
            logits[torch.rand(4000, generator=gen) < 0.5] = float("-inf")  # a blank mask
        probs = torch.softmax(logits / 0.7, dim=-1)
        for top_p in (0.3, 0.9, 0.95, 0.999):
            assert torch.equal(nucleus(probs, top_p), full_sort(probs, top_p))
