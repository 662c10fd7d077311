"""Streaming generation with the probes watching: scores at every step boundary, alarms while the
model writes, the alarm as a kill switch, and latent backtracking.

The loop decodes one token at a time with the KV cache and reads the residual stream at the
probe's layer through `record_residual`. After each token it re-segments the response with the
offline segmenter (the char spans only: a regex pass); a step is complete once the next step
has begun (or generation ends), so its tokens are exactly the tokens the offline path gives it
(its trailing newline included), and the streamed scores equal the teacher-forced ones. Tokens
are mapped to steps only when a step closes, not at every token.

One reply is a `_MonitorRun`: the KV cache, the response so far, the hidden states of its
tokens, and the steps kept or discarded; `monitor_events` is the loop over it:

    sample a token -> push it (forward, one hidden state) -> close the steps it completed
    (score each; keep it, or rewind to its start and resample) -> ... -> the result

An alarm is an event of the step itself, chosen by `trigger`:
- "step" (default): the step's own score c_step is over its threshold (the probe's calibrated
  step threshold unless `threshold` is given);
- "prefix-rise": the prefix score c_prefix rises by more than `rise_margin` over the last kept
  step's (the first step: over the probe's calibrated c_prefix threshold).
Never "c_prefix over its threshold": the prefix score is a state, and once up it stays up, so
that rule fires on every later step (backtracking then resamples until its budget is spent).

The reply ends at EOS, at `max_new_tokens`, or, by default, at the answer statement: after the
line of its first explicit answer (`core.data.answers.AnswerFormat.reply_end`, the stop rule
`make-traces` uses) or at any of `stop_strings`; neither before `min_new_tokens`. The result
records the answer read strictly from the reply (`answer`, `answered`) and what ended it.

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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from core.data.answers import DEFAULT_FORMAT, AnswerFormat
from core.data.steps import (
    DEFAULT_SEGMENTER,
    CharSpan,
    Segmenter,
    split_steps,
    token_spans,
    token_step_index,
)
from core.diagnose.probes import ProbeBundle
from core.runtime.capture import ResidualRecord, record_residual
from core.runtime.chat import user_prompt
from core.runtime.models import LoadedModel
from core.runtime.pooling import span_weights

MODES = ("watch", "stop", "backtrack", "random")
TRIGGERS = ("step", "prefix-rise")
ENDINGS = ("eos", "max_new_tokens", "answer", "stop_string", "alarm", "stopped")


@dataclass(frozen=True)
class MonitorConfig:
    """Sampling, alarm and stop settings (see the module docstring); `threshold` None uses the
    probe's calibrated step threshold."""

    mode: str = "watch"
    trigger: str = "step"
    threshold: float | None = None  # trigger "step": an alarm when c_step > threshold
    rise_margin: float = 0.2  # trigger "prefix-rise": an alarm when c_prefix rises by more
    stop_at_answer: bool = True  # end after the line of the first answer statement
    answers: AnswerFormat = DEFAULT_FORMAT  # how answers are stated (read and stopped at)
    stop_strings: tuple[str, ...] = ()  # also end once the reply contains one of these
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
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}, not "
                             f"{self.trigger!r}.")
        if not 0 <= self.rise_margin < 1:
            raise ValueError(f"rise_margin must be in [0, 1), got {self.rise_margin}.")
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        if any(not s for s in self.stop_strings):
            raise ValueError("A stop string cannot be empty.")

    def stop_rule(self, text: str) -> int | None:
        """Where a reply with this text ends under the stop settings (after the line of its
        first answer statement, or after a stop string), None while it goes on; the `stop` of
        `core.runtime.generate`, so batched sampling stops where the monitor does."""
        ends = [text.find(stop) + len(stop) for stop in self.stop_strings if stop in text]
        if self.stop_at_answer:
            answer_end = self.answers.reply_end(text)
            ends += [] if answer_end is None else [answer_end]
        return min(ends, default=None)


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
    """A finished reply: its text and steps, the discarded attempts, the tokens it cost, the
    alarm rule in force (`threshold` on c_step for the step trigger, else None), the answer
    read strictly from the reply (None and answered False when it states none) and what ended
    it (one of ENDINGS)."""

    prompt: str
    text: str
    steps: list[StepRecord]
    discarded: list[StepRecord]
    tokens_generated: int  # tokens in the final answer
    tokens_processed: int  # every forward position after the prompt, retries included
    stopped_by_alarm: bool
    threshold: float | None
    mode: str
    token_ids: list[int] = field(default_factory=list)
    trigger: str = "step"
    rise_margin: float | None = None  # trigger "prefix-rise" only
    answer: str | None = None
    answered: bool = False
    ended_by: str = ""

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


_NUCLEUS_CANDIDATES = 256  # tokens ranked by top-k before falling back to a full sort


def sample_token(logits: torch.Tensor, temperature: float, top_p: float,
                 generator: torch.Generator) -> int:
    """Greedy at temperature 0; else nucleus sampling from softmax(logits / temperature)."""
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs = nucleus(probs, top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`probs` [vocab] with every token zeroed whose likelier tokens already hold `top_p`.

    Naively: sort descending, keep position i when cumsum(sorted)[i] - sorted[i] < top_p. On
    the CPU the nucleus is usually found among the top `_NUCLEUS_CANDIDATES` tokens (top-k is
    ~20x cheaper than sorting a 50k vocabulary); that shortcut is taken only where it keeps the
    same tokens as the full sort: the kept positions form a prefix, a later position is dropped
    (CPU cumsum accumulates in order, so the prefix sums are the sort's and only grow after),
    and no tie straddles the cut (ties elsewhere do not change which tokens are kept).
    """
    if probs.device.type == "cpu" and _NUCLEUS_CANDIDATES < probs.shape[-1]:
        values, order = torch.topk(probs, _NUCLEUS_CANDIDATES)  # sorted descending
        keep = torch.cumsum(values, 0) - values < top_p
        n = int(keep.sum())
        if n < len(values) and bool(keep[:n].all()) and bool(values[n - 1] > values[n]):
            return torch.zeros_like(probs).scatter(0, order[:n], values[:n])
    sorted_probs, order = torch.sort(probs, descending=True)
    keep = torch.cumsum(sorted_probs, 0) - sorted_probs < top_p
    return torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])


class _Response:
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

    def char_steps(self) -> list[CharSpan]:
        """Char spans of the steps so far (none before the first token)."""
        return split_steps(self.text, self.segmenter) if self.ids else []

    def token_spans(self, char_spans: list[CharSpan]) -> list[tuple[int, int]]:
        """Token spans [start, end) of the steps `char_steps` gave."""
        if not self.ids:
            return []
        offsets = list(zip([0, *self.ends[:-1]], self.ends, strict=True))
        return token_spans(token_step_index(offsets, char_spans), len(char_spans))


def _feature_rows(hidden: list[torch.Tensor], spans: list[tuple[int, int]], step: int,
                  bundle: ProbeBundle) -> dict[str, np.ndarray]:
    """Pooled features of `step` (rows for the bundle's poolings), as the offline path pools."""
    matrix = torch.stack(hidden[: spans[step][1]]).cpu().double()  # [tokens so far, hidden]
    out = {}
    for pooling in bundle.poolings:
        weights = span_weights(spans[: step + 1], matrix.shape[0], pooling)[step]
        out[pooling] = (weights @ matrix).float().numpy()[None]
    return out


class _MonitorRun:
    """One reply being written with the probes watching.

    State: the KV cache (prompt + response so far), the response (`_Response`), the
    probe-layer residual of each response token, the logits after each position of the open
    step (a rewind lands on one of them), the steps kept and discarded, and the retry counts.
    The methods each do one job: `sample` a token, `push` it, `close_steps` (score, then keep
    or retry), `rewind`, `replay`, and the `result`.
    """

    def __init__(self, loaded: LoadedModel, bundle: ProbeBundle, question: str,
                 config: MonitorConfig, rec: ResidualRecord) -> None:
        from transformers import DynamicCache

        self.bundle, self.config, self.question, self.rec = bundle, config, question, rec
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.layer = bundle.meta.layer
        if config.trigger == "step" and bundle.step is None:
            raise ValueError("This probe has no step probe, so the step trigger cannot fire; "
                             "use the trigger prefix-rise.")
        self.threshold: float | None = None  # on c_step; None for the trigger prefix-rise
        if config.trigger == "step":
            self.threshold = bundle.meta.step_threshold if config.threshold is None \
                else config.threshold
        prompt = user_prompt(self.tokenizer, question)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False,
                                    return_tensors="pt")["input_ids"].to(loaded.input_device)
        self.device = prompt_ids.device
        self.prompt_len = int(prompt_ids.shape[1])
        self.eos = _eos_ids(self.tokenizer, self.model)
        self.eos_index = torch.tensor(sorted(self.eos), dtype=torch.long, device=self.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.temperature = config.temperature
        self.response = _Response(self.tokenizer, config.segmenter)
        self.hidden: list[torch.Tensor] = []  # probe-layer residual of each response token
        self.kept: list[StepRecord] = []
        self.discarded: list[StepRecord] = []
        self.attempts: list[tuple[StepRecord, list[int]]] = []  # the open step's alarming tries
        self.attempt = 0  # retries of the open step
        self.backtracks = 0
        self.processed = 0
        self.stopped = False
        self.finished = False
        self.ending: str | None = None  # what ends the reply (one of ENDINGS), None: going on
        self.replayed = False  # the open step is the least alarming attempt, written again
        self.step_start_blocked = False  # right after a rewind: the next token must begin a step
        self.blank: torch.Tensor | None = None
        self.kept_end = 0  # token where the open (not yet kept) step begins
        self.cache = DynamicCache(config=self.model.config)
        self.logits, _ = self.forward(prompt_ids)
        self.last_logits = {self.prompt_len - 1: self.logits}  # by position, from kept_end on

    @property
    def n_tokens(self) -> int:
        return len(self.response.ids)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run `ids` [1, n] through the model on the cache: (last logits, states [n, hidden])."""
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True)
        states = self.rec.hidden[self.layer].pop()
        self.rec.hidden[self.layer].clear()
        return out.logits[0, -1], states[0]

    def sample(self) -> int:
        """The next token: blank ones blocked right after a rewind, EOS before min_new_tokens."""
        logits = self.logits
        if self.step_start_blocked:
            if self.blank is None:
                self.blank = blank_token_mask(self.tokenizer, logits.shape[-1]).to(logits.device)
            logits = logits.masked_fill(self.blank, float("-inf"))
            self.step_start_blocked = False
        if self.n_tokens < self.config.min_new_tokens:
            logits = logits.index_fill(0, self.eos_index, float("-inf"))
        return sample_token(logits, self.temperature, self.config.top_p, self.generator)

    def push(self, token: int) -> None:
        """Append `token` to the response and run it: its hidden state, the logits after it."""
        self.response.push(token)
        self.logits, states = self.forward(torch.tensor([[token]], device=self.device))
        self.processed += 1
        self.hidden.append(states[-1])
        self.last_logits[self.prompt_len + self.n_tokens - 1] = self.logits

    def reply_end(self) -> str | None:
        """Why the reply ends after its last token (one of ENDINGS), or None to go on."""
        config = self.config
        if self.n_tokens >= config.max_new_tokens:
            return "max_new_tokens"
        if self.n_tokens < config.min_new_tokens:
            return None
        text = self.response.text
        if config.stop_rule(text) is None:
            return None
        return "stop_string" if any(stop in text for stop in config.stop_strings) else "answer"

    def close_steps(self) -> Iterator[StepEvent]:
        """Score the steps the last token completed (every step once the reply has ended:
        `ending` is set) and keep them, or discard one and rewind to resample it; sets
        `finished`."""
        ended = self.ending is not None
        char_spans = self.response.char_steps()
        done = len(char_spans) if ended else len(char_spans) - 1
        self.finished = ended
        if len(self.kept) >= done:
            return  # the usual case: the token only extended the open step
        spans = self.response.token_spans(char_spans)
        while len(self.kept) < done:
            step = len(self.kept)
            start, end = spans[step]
            text = self.response.text[char_spans[step].start : char_spans[step].end]
            record = self.score(spans, step, text)
            if self.replayed:
                pass  # the least alarming attempt, written again: kept as it ends now
            elif self.should_retry(step, record):
                self.attempts.append((record, self.response.ids[start:end]))
                yield self.discard(record)
                self.retry(start, step)
                return
            elif record.alarm and self.attempts and self.config.mode == "backtrack":
                # every retry alarmed: keep the least alarming attempt
                self.attempts.append((record, self.response.ids[start:end]))
                best, best_ids = min(self.attempts, key=lambda a: self.alarm_level(a[0]))
                if best is not record:
                    yield self.discard(record)
                    self.replay(start, best, best_ids)
                    yield from self.close_steps()
                    return
            yield self.keep(record, spans[step][1])
            if record.alarm and self.config.mode == "stop":
                self.stopped = self.finished = True
                self.ending = "alarm"
                return

    def score(self, spans: list[tuple[int, int]], step: int, text: str) -> StepRecord:
        """The probes' scores of `step` (token spans of the steps so far in `spans`)."""
        scores = self.bundle.score_chain(_feature_rows(self.hidden, spans, step, self.bundle))
        step_score = float(scores["step"][0]) if "step" in scores else None
        prefix = float(scores["prefix"][0])
        return StepRecord(index=step, text=text, n_tokens=spans[step][1] - spans[step][0],
                          step_score=step_score, prefix_score=prefix,
                          alarm=self.is_alarm(step_score, prefix), kept=True,
                          attempt=self.attempt)

    def is_alarm(self, step_score: float | None, prefix: float) -> bool:
        """The trigger's event at the step being scored (it comes right after the kept ones)."""
        if self.threshold is not None:
            return step_score is not None and step_score > self.threshold
        previous = self.kept[-1].prefix_score if self.kept else self.bundle.meta.threshold
        return prefix - previous > self.config.rise_margin

    def alarm_level(self, record: StepRecord) -> float:
        """How strongly an attempt alarms, to keep the least alarming when every retry alarms:
        c_step under the step trigger, c_prefix under prefix-rise (every attempt of a step
        rises from the same kept step)."""
        if self.threshold is not None and record.step_score is not None:
            return record.step_score
        return record.prefix_score

    def should_retry(self, step: int, record: StepRecord) -> bool:
        config = self.config
        if config.mode == "random":
            return self.attempt < config.resample_steps.count(step)
        return (config.mode == "backtrack" and record.alarm and self.attempt < config.retries
                and self.backtracks < config.max_backtracks)

    def discard(self, record: StepRecord) -> StepEvent:
        self.discarded.append(_discard(record))
        return StepEvent(self.discarded[-1])

    def keep(self, record: StepRecord, end: int) -> StepEvent:
        """Keep `record`, its step ending at token `end`; forget logits no rewind can reach."""
        self.kept.append(record)
        self.kept_end = end
        self.replayed = False
        self.attempts, self.attempt, self.temperature = [], 0, self.config.temperature
        for position in [p for p in self.last_logits if p < self.prompt_len - 1 + end]:
            del self.last_logits[position]
        return StepEvent(record)

    def retry(self, start: int, step: int) -> None:
        """Rewind to the step's first token `start` and resample the step from there."""
        self.rewind(start)
        self.step_start_blocked = step > 0  # a first step may begin after blank lines
        self.backtracks += 1
        self.attempt += 1
        self.ending = None
        config = self.config
        self.temperature = config.temperature + self.attempt * config.retry_temperature_step
        self.finished = False

    def rewind(self, to_tokens: int) -> None:
        """Crop the cache to the prompt + `to_tokens` response tokens; logits to go on from."""
        length = self.prompt_len + to_tokens
        self.cache.crop(-(self.cache.get_seq_length() - length))
        self.response.truncate(to_tokens)
        del self.hidden[to_tokens:]
        self.logits = self.last_logits[length - 1]

    def replay(self, start: int, best: StepRecord, ids: list[int]) -> None:
        """Rewind to token `start` and run the attempt `best` (its token `ids`) again, at
        step-length cost. The step stays open until the next one begins, as any step does:
        blank lines written after it belong to it, so it is scored again when it closes (and
        then kept), and its scores are the teacher-forced ones."""
        self.rewind(start)
        for token in ids:
            self.push(token)
        self.discarded.remove(_discard(best))
        self.replayed = True
        self.attempt, self.temperature = best.attempt, self.config.temperature
        self.ending = self.reply_end()

    def result(self) -> MonitorResult:
        config = self.config
        answer = config.answers.read(self.response.text)
        return MonitorResult(
            prompt=self.question, text=self.response.text, steps=self.kept,
            discarded=self.discarded, tokens_generated=self.n_tokens,
            tokens_processed=self.processed, stopped_by_alarm=self.stopped,
            threshold=self.threshold, mode=config.mode, token_ids=list(self.response.ids),
            trigger=config.trigger,
            rise_margin=config.rise_margin if config.trigger == "prefix-rise" else None,
            answer=None if answer is None else answer.text, answered=answer is not None,
            ended_by=self.ending or "stopped")


@torch.no_grad()
def monitor_events(loaded: LoadedModel, bundle: ProbeBundle, question: str,
                   config: MonitorConfig = MonitorConfig(),
                   should_stop: Callable[[], bool] | None = None) -> Iterator[MonitorEvent]:
    """Generate a reply to `question` (a user turn) with the probes watching; yields events."""
    bundle.check_model(loaded.spec, loaded.hidden_size)
    layer = bundle.meta.layer
    with loaded.lock, record_residual(loaded.model, [layer], layer_path=loaded.layer_path,
                                      to_cpu=False) as rec:
        run = _MonitorRun(loaded, bundle, question, config, rec)
        while not run.finished:
            if should_stop is not None and should_stop():
                break
            token = run.sample()
            if token in run.eos:
                run.ending = "eos"
            else:
                run.push(token)
                yield TokenEvent(run.response.text)
                run.ending = run.reply_end()
            yield from run.close_steps()
    yield DoneEvent(run.result())


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """The tokens that end a reply: the tokenizer's EOS and the generation config's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return {i for i in (tokenizer.eos_token_id, *ids) if i is not None}


def _discard(record: StepRecord) -> StepRecord:
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
