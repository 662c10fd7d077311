"""Streaming generation with the probes watching: scores at every step boundary, alarms while the
model writes, the alarm as a kill switch, and latent backtracking.

The loop decodes one token at a time with the KV cache and reads the residual stream at the
probe's layer through `record_residual`. After each token it re-segments the response with the
offline segmenter; a step is complete once the next step has begun (or generation ends), so its
tokens are exactly the tokens the offline path gives it (its trailing newline included), and the
streamed scores equal the teacher-forced ones.

Modes:
- "watch": flag alarms only;
- "stop": end generation at the first alarm (the kill switch);
- "random": the control for backtracking: resample each step listed in `resample_steps` as
  many times as it is listed, whatever the probes say (the last attempt is kept), so a gain of
  "backtrack" over it is the probe's, not resampling's;
- "backtrack": on an alarm, crop the KV cache back to the step's start (the prefix is never
  re-encoded), resample the step (its first token drawn among tokens that are not blank, as the
  first token of the alarming step was: a blank one would extend the step before) with the
  sampler's next random numbers and optionally a higher temperature, at most
  `retries` times per step and `max_backtracks` per chain; if every retry alarms, the least
  alarming attempt is kept. Every discarded attempt is returned with its scores.

    for event in monitor_events(loaded, bundle, prompt, MonitorConfig(mode="backtrack")):
        ...   # TokenEvent, StepEvent, DoneEvent
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.data.steps import (
    DEFAULT_SEGMENTER,
    CharSpan,
    Segmenter,
    split_steps,
    token_spans,
    token_step_index,
)
from core.diagnose.probes import ProbeBundle
from core.runtime.capture import record_residual
from core.runtime.chat import user_prompt
from core.runtime.models import LoadedModel
from core.runtime.pooling import span_weights

MODES = ("watch", "stop", "backtrack", "random")


@dataclass(frozen=True)
class MonitorConfig:
    """Sampling and alarm settings; `threshold` None uses the probe's calibrated one."""

    mode: str = "watch"
    threshold: float | None = None
    max_new_tokens: int = 256
    min_new_tokens: int = 0  # EOS is blocked until this many tokens are written
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    retries: int = 3  # per step
    max_backtracks: int = 8  # per chain
    retry_temperature_step: float = 0.0  # added to the temperature on each retry
    segmenter: Segmenter = DEFAULT_SEGMENTER
    resample_steps: tuple[int, ...] = ()  # mode "random": a step index listed n times: n retries

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}.")
        if self.max_new_tokens < 1 or self.retries < 0 or self.max_backtracks < 0:
            raise ValueError("max_new_tokens >= 1, retries >= 0 and max_backtracks >= 0.")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min_new_tokens must lie in [0, max_new_tokens].")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1].")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}.")


@dataclass(frozen=True)
class StepRecord:
    """A scored step: kept in the answer, or discarded by backtracking."""

    index: int  # position among the kept steps (the step it tried to be, for a discarded one)
    text: str
    n_tokens: int
    step_score: float | None
    prefix_score: float
    alarm: bool
    kept: bool
    attempt: int  # 0 for the first try, 1.. for retries


@dataclass(frozen=True)
class TokenEvent:
    text: str  # the response text so far


@dataclass(frozen=True)
class StepEvent:
    step: StepRecord


@dataclass(frozen=True)
class MonitorResult:
    prompt: str
    text: str
    steps: list[StepRecord]
    discarded: list[StepRecord]
    tokens_generated: int  # tokens in the final answer
    tokens_processed: int  # every forward position after the prompt, retries included
    stopped_by_alarm: bool
    threshold: float
    mode: str
    token_ids: list[int] = field(default_factory=list)

    @property
    def alarms(self) -> int:
        return sum(s.alarm for s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = asdict(self)
        out["alarms"] = self.alarms
        return out


@dataclass(frozen=True)
class DoneEvent:
    result: MonitorResult


MonitorEvent = TokenEvent | StepEvent | DoneEvent


def blank_token_mask(tokenizer: Any, size: int) -> torch.Tensor:
    """True for tokens that decode to whitespace only (they cannot begin a step)."""
    texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
    return torch.tensor([t.strip() == "" for t in texts])


def sample_token(logits: torch.Tensor, temperature: float, top_p: float,
                 generator: torch.Generator) -> int:
    """Greedy at temperature 0; else nucleus sampling from softmax(logits / temperature)."""
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, 0) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class _Decoder:
    """The running response: token ids, their char offsets, and segmentation into steps."""

    def __init__(self, tokenizer: Any, segmenter: Segmenter) -> None:
        self.tokenizer = tokenizer
        self.segmenter = segmenter
        self.ids: list[int] = []
        self.ends: list[int] = []  # char end of each token in the decoded text
        self.text = ""

    def push(self, token: int) -> None:
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        self.ends.append(len(self.text))

    def truncate(self, n_tokens: int) -> None:
        del self.ids[n_tokens:]
        del self.ends[n_tokens:]
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def steps(self) -> tuple[list[CharSpan], list[tuple[int, int]]]:
        """Char spans and token spans of the steps so far."""
        if not self.ids:  # the reply ended before its first token
            return [], []
        spans = split_steps(self.text, self.segmenter)
        starts = [0, *self.ends[:-1]]
        offsets = list(zip(starts, self.ends, strict=True))
        owner = token_step_index(offsets, spans)
        return spans, token_spans(owner, len(spans))


def _feature_rows(hidden: list[torch.Tensor], spans: list[tuple[int, int]], step: int,
                  bundle: ProbeBundle) -> dict[str, np.ndarray]:
    """Pooled features of `step` (rows for the bundle's poolings), as the offline path pools."""
    matrix = torch.stack(hidden[: spans[step][1]]).double()  # [tokens so far, hidden]
    out = {}
    for pooling in bundle.poolings:
        weights = span_weights(spans[: step + 1], matrix.shape[0], pooling)[step]
        out[pooling] = (weights @ matrix).float().numpy()[None]
    return out


@torch.no_grad()
def monitor_events(loaded: LoadedModel, bundle: ProbeBundle, question: str,
                   config: MonitorConfig = MonitorConfig(),
                   should_stop: Callable[[], bool] | None = None) -> Iterator[MonitorEvent]:
    """Generate a reply to `question` (a user turn) with the probes watching; yields events."""
    from transformers import DynamicCache

    bundle.check_model(loaded.spec, loaded.hidden_size)
    threshold = bundle.meta.threshold if config.threshold is None else config.threshold
    tokenizer, model = loaded.tokenizer, loaded.model
    prompt = user_prompt(tokenizer, question)
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    prompt_ids = prompt_ids.to(loaded.input_device)
    eos = _eos_ids(tokenizer, model)
    generator = torch.Generator().manual_seed(config.seed)
    decoder = _Decoder(tokenizer, config.segmenter)
    hidden: list[torch.Tensor] = []  # probe-layer residual of each response token
    kept: list[StepRecord] = []
    discarded: list[StepRecord] = []
    processed = 0
    backtracks = 0
    attempt = 0  # retries of the current step
    attempts: list[tuple[StepRecord, list[int]]] = []  # the current step's alarming tries
    temperature = config.temperature
    stopped = False
    step_start_blocked = False  # right after a rewind: the next token must begin a step
    blank: torch.Tensor | None = None
    kept_end = 0  # token where the open (not yet kept) step begins
    layer = bundle.meta.layer

    with loaded.lock, record_residual(model, [layer], layer_path=loaded.layer_path) as rec:
        cache = DynamicCache(config=model.config)

        def forward(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = model(input_ids=ids, cache=cache, use_cache=True)
            states = rec.hidden[layer].pop()
            rec.hidden[layer].clear()
            return out.logits[0, -1], states[0]

        logits, _ = forward(prompt_ids)
        last_logits = {len(prompt_ids[0]) - 1: logits}

        def score(spans: list[tuple[int, int]], step: int, text: str) -> StepRecord:
            scores = bundle.score_chain(_feature_rows(hidden, spans, step, bundle))
            step_score = float(scores["step"][0]) if "step" in scores else None
            prefix = float(scores["prefix"][0])
            return StepRecord(index=step, text=text, n_tokens=spans[step][1] - spans[step][0],
                              step_score=step_score, prefix_score=prefix,
                              alarm=prefix > threshold, kept=True, attempt=attempt)

        def rewind(to_tokens: int) -> torch.Tensor:
            """Crop the cache to the prompt + `to_tokens` response tokens; logits to go on."""
            length = len(prompt_ids[0]) + to_tokens
            cache.crop(-(cache.get_seq_length() - length))
            decoder.truncate(to_tokens)
            del hidden[to_tokens:]
            return last_logits[length - 1]

        finished = False
        while not finished:
            if should_stop is not None and should_stop():
                break
            if step_start_blocked:
                if blank is None:
                    blank = blank_token_mask(tokenizer, logits.shape[-1])
                logits = logits.masked_fill(blank.to(logits.device), float("-inf"))
                step_start_blocked = False
            if len(decoder.ids) < config.min_new_tokens:
                logits = logits.clone()
                logits[list(eos)] = float("-inf")
            token = sample_token(logits, temperature, config.top_p, generator)
            ended = token in eos or len(decoder.ids) + 1 >= config.max_new_tokens
            if token not in eos:
                decoder.push(token)
                logits, states = forward(torch.tensor([[token]], device=prompt_ids.device))
                processed += 1
                hidden.append(states[-1].cpu())
                last_logits[len(prompt_ids[0]) + len(decoder.ids) - 1] = logits
                yield TokenEvent(decoder.text)
            char_spans, spans = decoder.steps()
            done_steps = len(spans) if ended else len(spans) - 1
            finished = ended
            while len(kept) < done_steps:
                step = len(kept)
                text = decoder.text[char_spans[step].start : char_spans[step].end]
                record = score(spans, step, text)
                if config.mode == "random":
                    retry = attempt < config.resample_steps.count(step)
                else:
                    retry = (config.mode == "backtrack" and record.alarm
                             and attempt < config.retries and backtracks < config.max_backtracks)
                if retry:
                    attempts.append((record, decoder.ids[spans[step][0] : spans[step][1]]))
                    discarded.append(_discard(record))
                    yield StepEvent(discarded[-1])
                    logits = rewind(spans[step][0])
                    step_start_blocked = step > 0  # a first step may begin after blank lines
                    backtracks += 1
                    attempt += 1
                    temperature = config.temperature + attempt * config.retry_temperature_step
                    finished = False
                    break
                if record.alarm and attempts and config.mode == "backtrack":
                    # every retry alarmed: keep the least alarming attempt
                    attempts.append((record, decoder.ids[spans[step][0] : spans[step][1]]))
                    best, best_ids = min(attempts, key=lambda a: a[0].prefix_score)
                    if best is not record:
                        discarded.append(_discard(record))
                        yield StepEvent(discarded[-1])
                        rewind(spans[step][0])
                        for tok in best_ids:  # replay the kept attempt (step-length cost)
                            decoder.push(tok)
                            logits, states = forward(torch.tensor([[tok]],
                                                                  device=prompt_ids.device))
                            processed += 1
                            hidden.append(states[-1].cpu())
                            last_logits[len(prompt_ids[0]) + len(decoder.ids) - 1] = logits
                        discarded.remove(_discard(best))
                        record = best
                        char_spans, spans = decoder.steps()
                        finished = False
                kept.append(record)
                kept_end = spans[step][1]
                attempts, attempt, temperature = [], 0, config.temperature
                yield StepEvent(record)
                if record.alarm and config.mode == "stop":
                    stopped, finished = True, True
                    break
            # keep logits only from the open step's start on: a rewind lands nowhere earlier
            for position in [p for p in last_logits if p < len(prompt_ids[0]) - 1 + kept_end]:
                del last_logits[position]

    result = MonitorResult(
        prompt=question, text=decoder.text, steps=kept, discarded=discarded,
        tokens_generated=len(decoder.ids), tokens_processed=processed,
        stopped_by_alarm=stopped, threshold=threshold, mode=config.mode,
        token_ids=list(decoder.ids))
    yield DoneEvent(result)


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """The tokens that end a reply: the tokenizer's EOS and the generation config's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return {i for i in (tokenizer.eos_token_id, *ids) if i is not None}


def _discard(record: StepRecord) -> StepRecord:
    from dataclasses import replace

    return replace(record, kept=False)


def run_monitor(loaded: LoadedModel, bundle: ProbeBundle, question: str,
                config: MonitorConfig = MonitorConfig(),
                on_event: Callable[[MonitorEvent], None] | None = None) -> MonitorResult:
    """Run `monitor_events` to the end and return its result."""
    for event in monitor_events(loaded, bundle, question, config):
        if on_event is not None:
            on_event(event)
        if isinstance(event, DoneEvent):
            return event.result
    raise RuntimeError("The monitor ended without a result.")
