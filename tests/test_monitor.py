"""The streaming monitor on a tiny random Llama with a character tokenizer (every text round-trips
to the same ids): streamed scores equal the offline teacher-forced scores, also after
backtracking, which proves the KV-cache crop; the kill switch; hooks always removed."""

from __future__ import annotations

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


def bundle(bias: float = 0.0, seed: int = 0) -> ProbeBundle:
    rng = np.random.default_rng(seed)
    meta = ProbeMeta(model="tiny-char", model_name="tiny-char", hidden_size=32, layer=1,
                     step_pooling="exp", tracker_pooling="causal",
                     baseline_pooling="prefix_mean", step_input=True, threshold=0.5,
                     step_threshold=0.5, data_hash="x")
    return ProbeBundle(meta=meta, step=LinearProbe(rng.normal(size=32) * 3, 0.0),
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
    always = bundle(bias=50.0)  # every prefix score ~1: every retry alarms
    config = MonitorConfig(mode="backtrack", max_new_tokens=60, seed=2, temperature=1.0,
                           retries=2, max_backtracks=4)
    result = run_monitor(loaded, always, QUESTION, config)
    assert len(result.discarded) == 4  # the chain's budget of backtracks is spent
    assert all(s.alarm for s in result.steps)


def test_stop_mode_is_a_kill_switch(loaded) -> None:
    result = run_monitor(loaded, bundle(bias=50.0), QUESTION,
                         MonitorConfig(mode="stop", max_new_tokens=90, seed=3, temperature=1.0))
    assert result.stopped_by_alarm and len(result.steps) == 1 and result.steps[0].alarm
    watch = run_monitor(loaded, bundle(bias=-50.0), QUESTION,
                        MonitorConfig(mode="stop", max_new_tokens=40, seed=3, temperature=1.0))
    assert not watch.stopped_by_alarm and watch.alarms == 0


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
    from dataclasses import replace

    other = replace(other, meta=replace(other.meta, hidden_size=64))
    with pytest.raises(ValueError, match="hidden size 64"):
        run_monitor(loaded, other, QUESTION)


def test_backtrack_eval_runs_three_paired_arms(loaded) -> None:
    from core.diagnose.backtrack_eval import BacktrackEvalConfig, backtrack_eval

    config = BacktrackEvalConfig(n_problems=2, monitor=MonitorConfig(
        max_new_tokens=40, temperature=1.0, threshold=0.3, retries=1, max_backtracks=2))
    table, summary = backtrack_eval(loaded, bundle(seed=1), config)
    assert len(table) == 6 and set(summary["arms"]) == {"plain", "backtrack", "random"}
    paired = table.pivot(index="problem_id", columns="arm", values="resampled")
    # the control resamples as many steps as backtracking did (capped by the plain step count)
    assert (paired["random"] <= paired["backtrack"]).all()
    assert (paired["plain"] == 0).all()
    for row in summary["arms"].values():
        lo, hi = row["accuracy_ci"]
        assert 0 <= lo <= row["accuracy"] <= hi <= 1


def test_control_slots_match_the_backtracks_up_to_the_retry_cap() -> None:
    from core.diagnose.backtrack_eval import control_slots

    slots = control_slots(n_steps=4, n_resamples=7, retries=3, seed=0)
    assert len(slots) == 7 and list(slots) == sorted(slots)
    assert all(0 <= s < 4 and slots.count(s) <= 3 for s in slots)
    assert len(control_slots(2, 9, 3, 0)) == 6  # no more than 2 steps x 3 retries
    assert control_slots(4, 7, 3, 5) == control_slots(4, 7, 3, 5)


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
    assert cli.main(["monitor", "--prompt", QUESTION, "--probe", str(tmp_path / "p"),
                     "--max-new-tokens", "40", "--temperature", "1"]) == 0
    out = capsys.readouterr().out
    assert "[ 0] step" in out and "finished:" in out
    assert cli.main(["monitor", "--prompt", QUESTION, "--probe", str(tmp_path / "p"),
                     "--max-new-tokens", "40", "--mode", "backtrack", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"text", "steps", "discarded", "tokens_generated", "alarms"} <= set(result)


def test_backtrack_eval_command_writes_the_table_and_json(loaded, tmp_path, monkeypatch,
                                                          capsys) -> None:
    import json

    import pandas as pd

    from core.cli import main as cli
    from core.diagnose.probes import save_probe

    save_probe(tmp_path / "p", bundle())
    monkeypatch.setattr("core.cli.common.load", lambda args: loaded)
    assert cli.main(["backtrack-eval", "--probe", str(tmp_path / "p"), "--problems", "2",
                     "--max-new-tokens", "30", "--threshold", "0.3", "--out",
                     str(tmp_path / "rows.csv"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_problems"] == 2 and set(summary["arms"]) == {"plain", "backtrack",
                                                                   "random"}
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert len(rows) == 6 and set(rows["arm"]) == {"plain", "backtrack", "random"}


# Outputs of the loop before it became `_MonitorRun` (same seeds, same tiny model): the text,
# the forward count, and (index, attempt, alarm) of every kept and discarded step. Backtracking
# with a replayed attempt ("every retry alarms") and the random control are both covered.
PINNED = {
    "watch": (
        bundle(), MonitorConfig(max_new_tokens=90, seed=3, temperature=1.0),
        "a=937-0\n3876\n19=407\n\n93 \n6 -970-25a67\n1534 b \n8\na2\n0\n0--4\n\n22256616\n 6\n\n-"
        "\n\n+=5-2+=4-6\n\nb9=", 90, [(i, 0, True) for i in range(15)], []),
    "stop": (
        bundle(bias=50.0), MonitorConfig(mode="stop", max_new_tokens=90, seed=3,
                                         temperature=1.0),
        "a=937-0\n3", 9, [(0, 0, True)], []),
    "backtrack": (
        bundle(seed=1), MonitorConfig(mode="backtrack", max_new_tokens=90, seed=5,
                                      temperature=1.0, threshold=0.3, retries=2,
                                      max_backtracks=6),
        "12b=\n79b4\n158\nb730=\nb\n\n\n5+\n866a2=6\n+\n\n18\n503305=\n=\n36 -\n987\n99aa8\n"
        "037 311\n\n74a\n\n\n+\n9b=24\n6", 126,
        [(0, 2, True), (1, 2, True), (2, 0, False), *[(i, 0, True) for i in range(3, 19)]],
        [(0, 0, True), (0, 1, True), (1, 0, True), (1, 1, True), (3, 1, True), (3, 2, True)]),
    "replay": (
        bundle(bias=50.0), MonitorConfig(mode="backtrack", max_new_tokens=60, seed=2,
                                         temperature=1.0, retries=2, max_backtracks=4,
                                         retry_temperature_step=0.2),
        "86156+3788\n6b\n+-46\n72 9\n67866 b\n0\n7785925\n\n6=\nbb6b\n83+8123a\n", 136,
        [(i, 0, True) for i in range(10)],
        [(0, 1, True), (0, 2, True), (1, 1, True), (1, 2, True)]),
    "random": (
        bundle(bias=-50.0), MonitorConfig(mode="random", max_new_tokens=60, seed=4,
                                          temperature=1.0, resample_steps=(0, 0, 1, 3)),
        "\n45\n\n31\n2a\nbb\n\n 551\n\n33+81888-5+\n12\n8-5\n03\n9a36\n0\n2a\n+\n =24\n", 97,
        [(0, 2, False), (1, 1, False), (2, 0, False), (3, 1, False),
         *[(i, 0, False) for i in range(4, 14)]],
        [(0, 0, False), (0, 1, False), (1, 0, False), (3, 0, False)]),
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
