"""A judge model labels every step of a chain the paper's way: is this step wrong (the step
label), and is the reasoning so far on a path to a wrong answer (the prefix label).

The judge is any OpenAI-compatible endpoint (`EndpointJudge`: vLLM, llama.cpp's server,
Ollama, hosted APIs; through the maintained `openai` client, the key from an environment
variable) or any model Telltale loads (`LocalJudge`). The prompt is a file the user may replace
(`JudgePrompt.load`; the default is `judge_prompt.md` beside this module). It may use the
placeholders {question}, {gold}, {steps} (required: "Step k: text" lines), {n_steps} and
{answer}; other braces are left as they are.

Verdicts are requested as one JSON object, {"steps": [{"step": 1, "wrong": false,
"wrong_path": false}, ...]}, and parsed strictly (`parse_verdicts`: exactly one entry per step,
in order, booleans; a code fence around it and a leading <think> block are allowed, nothing
else). A malformed reply is answered with the parse error and asked again, at most
`max_attempts` times in all; a chain whose verdicts still cannot be parsed gets none (its
labels stay null, and it is counted), never a guess. Every verdict, and every failure, is
journalled in a cache keyed by (judge, prompt hash, chain), so a rerun or a resumed run asks
nothing twice. A judge that cannot be reached raises `JudgeUnavailable` (not cached).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.data.journal import Journal
from core.progress import Progress, ShouldStop, check_stop
from core.runtime.chat import Message, format_chat

if TYPE_CHECKING:  # torch loads only when a local judge is used
    from core.runtime.models import LoadedModel

DEFAULT_PROMPT_FILE = Path(__file__).with_name("judge_prompt.md")
KEY_ENV_VARS = ("TELLTALE_JUDGE_API_KEY", "OPENAI_API_KEY")
_PLACEHOLDERS = re.compile(r"\{(question|gold|steps|n_steps|answer)\}")
_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n\s*```$", re.DOTALL)
_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_CACHE_HEADER = {"kind": "telltale-judge-cache", "version": 1}


class JudgeUnavailable(ValueError):
    """The judge could not be asked (a network or server error); nothing was cached."""


class VerdictError(ValueError):
    """A judge reply that is not the verdicts asked for; the message says what is wrong."""


@dataclass(frozen=True)
class StepVerdict:
    wrong: bool  # the step label: this step is wrong
    wrong_path: bool  # the prefix label: the chain so far is on a path to a wrong answer


@dataclass(frozen=True)
class JudgeItem:
    """What the judge reads about one chain."""

    question: str
    steps: tuple[str, ...]
    gold: str | None
    answer: str | None


@dataclass(frozen=True)
class JudgePrompt:
    template: str
    source: str = "default"

    def __post_init__(self) -> None:
        if "{steps}" not in self.template:
            raise ValueError(f"The judge prompt ({self.source}) needs the placeholder {{steps}} "
                             "where the chain's steps go.")

    @classmethod
    def load(cls, path: str | Path | None = None) -> JudgePrompt:
        """The prompt in `path`, or the default file beside this module."""
        file = Path(path) if path is not None else DEFAULT_PROMPT_FILE
        try:
            return cls(file.read_text(encoding="utf-8"), str(file))
        except OSError as error:
            raise ValueError(f"Cannot read the judge prompt {file}: {error.strerror}.") from None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()

    def render(self, item: JudgeItem) -> str:
        values = {
            "question": item.question.strip(), "gold": item.gold or "(not given)",
            "answer": item.answer if item.answer is not None else "(none stated)",
            "n_steps": str(len(item.steps)),
            "steps": "\n".join(f"Step {k}: {' '.join(text.split())}"
                               for k, text in enumerate(item.steps, start=1)),
        }
        return _PLACEHOLDERS.sub(lambda match: values[match.group(1)], self.template)


def parse_verdicts(reply: str, n_steps: int) -> tuple[StepVerdict, ...]:
    """The verdicts in a judge's reply; VerdictError naming what is wrong otherwise."""
    text = _THINK.sub("", reply).strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise VerdictError(f"the reply is not one JSON object ({error.msg} at char "
                           f"{error.pos})") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise VerdictError('the JSON object has no "steps" list')
    entries = data["steps"]
    if len(entries) != n_steps:
        raise VerdictError(f'"steps" has {len(entries)} entries; the chain has {n_steps} steps')
    verdicts = []
    for k, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise VerdictError(f"entry {k} is not an object")
        if entry.get("step") != k or isinstance(entry.get("step"), bool):
            raise VerdictError(f'entry {k} has "step": {json.dumps(entry.get("step"))}, not {k}')
        for name in ("wrong", "wrong_path"):
            if not isinstance(entry.get(name), bool):
                raise VerdictError(f'entry {k} has "{name}": {json.dumps(entry.get(name))}, '
                                   "not true or false")
        verdicts.append(StepVerdict(entry["wrong"], entry["wrong_path"]))
    return tuple(verdicts)


# ---------------------------------------------------------------------------- judges


class JudgeBackend(Protocol):
    """A judge: `name` identifies it in the cache; `complete` returns its reply text."""

    name: str

    def complete(self, messages: list[Message], max_tokens: int) -> str: ...


def api_key(env_var: str | None = None) -> str | None:
    """The endpoint key: from `env_var`, else TELLTALE_JUDGE_API_KEY, else OPENAI_API_KEY."""
    for name in ((env_var,) if env_var else KEY_ENV_VARS):
        if value := os.environ.get(name):
            return value
    return None


class EndpointJudge:
    """A model behind an OpenAI-compatible chat completions endpoint, asked at temperature 0.
    Identified by its model name alone, so a moved server keeps its cache."""

    def __init__(self, url: str, model: str, key: str | None = None,
                 timeout: float = 300.0) -> None:
        from openai import OpenAI

        self.url, self.model, self.name = url, model, f"endpoint:{model}"
        # servers without keys (vLLM, llama.cpp, Ollama) accept any non-empty one
        self._client = OpenAI(base_url=url, api_key=key or "none", timeout=timeout,
                              max_retries=2)

    def complete(self, messages: list[Message], max_tokens: int) -> str:
        import openai

        try:
            response = self._client.chat.completions.create(
                model=self.model, messages=messages,  # type: ignore[arg-type]
                temperature=0, max_tokens=max_tokens)
        except openai.OpenAIError as error:
            raise JudgeUnavailable(f"The judge {self.model} at {self.url} did not answer: "
                                   f"{error}") from None
        if not response.choices:
            return ""
        return response.choices[0].message.content or ""


class LocalJudge:
    """A model Telltale loads, greedy through its chat template."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded, self.name = loaded, f"local:{loaded.name}"

    def complete(self, messages: list[Message], max_tokens: int) -> str:
        from core.runtime.generate import SamplingConfig, sample_replies

        prompt = format_chat(self.loaded.tokenizer, messages)
        sampling = SamplingConfig(max_new_tokens=max_tokens, temperature=0.0)
        return sample_replies(self.loaded, [prompt], sampling, batch_size=1)[0]


# ---------------------------------------------------------------------------- judging


@dataclass(frozen=True)
class JudgeResult:
    """The verdicts on one chain (None when no reply could be parsed), the attempts it took
    in the run that asked, and the last parse error."""

    key: str
    verdicts: tuple[StepVerdict, ...] | None
    attempts: int
    error: str | None = None
    cached: bool = False


@dataclass(frozen=True)
class JudgeRun:
    """What a judging run did: results aligned with the items, requests sent now."""

    results: tuple[JudgeResult, ...]
    n_requests: int
    n_cached: int

    @property
    def n_failed(self) -> int:
        return sum(result.verdicts is None for result in self.results)


def cache_key(judge: JudgeBackend, prompt: JudgePrompt, item: JudgeItem) -> str:
    payload = json.dumps([judge.name, prompt.sha256, item.question, list(item.steps),
                          item.gold, item.answer], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def judge_item(judge: JudgeBackend, prompt: JudgePrompt, item: JudgeItem,
               max_attempts: int = 3) -> tuple[JudgeResult, str]:
    """Ask until the reply parses, at most `max_attempts` times; (result, last reply)."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}.")
    messages: list[Message] = [{"role": "user", "content": prompt.render(item)}]
    max_tokens = 64 + 32 * len(item.steps)
    key = cache_key(judge, prompt, item)
    reply, error = "", None
    for attempt in range(1, max_attempts + 1):
        reply = judge.complete(messages, max_tokens)
        try:
            return JudgeResult(key, parse_verdicts(reply, len(item.steps)), attempt), reply
        except VerdictError as failure:
            error = str(failure)
        messages = messages[:1] + [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": f"That reply could not be read: {error}. Reply again "
                                        f"with only the JSON object, one entry for each of the "
                                        f"{len(item.steps)} steps."}]
    return JudgeResult(key, None, max_attempts, error), reply


def _entry(result: JudgeResult, judge: JudgeBackend, prompt: JudgePrompt,
           reply: str) -> dict[str, Any]:
    verdicts = None if result.verdicts is None else \
        [[v.wrong, v.wrong_path] for v in result.verdicts]
    return {"key": result.key, "judge": judge.name, "prompt_sha256": prompt.sha256,
            "verdicts": verdicts, "attempts": result.attempts, "error": result.error,
            "reply": reply[:4000]}


def _from_entry(entry: dict[str, Any]) -> JudgeResult:
    raw = entry.get("verdicts")
    verdicts = None if raw is None else tuple(StepVerdict(bool(w), bool(p)) for w, p in raw)
    return JudgeResult(str(entry["key"]), verdicts, int(entry.get("attempts", 0)),
                       entry.get("error"), cached=True)


def judge_items(judge: JudgeBackend, prompt: JudgePrompt, items: Sequence[JudgeItem],
                cache: str | Path, max_attempts: int = 3, workers: int = 1,
                progress: Progress | None = None,
                on_result: Callable[[int, JudgeResult], None] | None = None,
                should_stop: ShouldStop | None = None) -> JudgeRun:
    """Verdicts for every item, from the cache where it has them, else asked (in `workers`
    threads for an endpoint) and journalled as each arrives. `on_result(index, result)` is
    called once per item as its verdicts are known (the cached ones first); `should_stop()` is
    checked before each request and ends the run with `core.progress.Stopped` (the journal
    keeps every verdict that arrived, so the same call resumes)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}.")
    with Journal.open(cache, _CACHE_HEADER) as journal:
        known = {str(entry["key"]): _from_entry(entry) for entry in journal.entries}
        keys = [cache_key(judge, prompt, item) for item in items]
        n_cached = sum(key in known for key in keys)
        todo = list({key: i for i, key in reversed(list(enumerate(keys)))
                     if key not in known}.values())[::-1]  # first item of each new key
        indices: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            indices.setdefault(key, []).append(index)
            if on_result and key in known:
                on_result(index, known[key])

        def ask(index: int) -> JudgeResult:
            check_stop(should_stop, "Judging")
            result, reply = judge_item(judge, prompt, items[index], max_attempts)
            journal.append([_entry(result, judge, prompt, reply)])
            return result

        requests, done = 0, len(items) - len(todo)
        if progress:
            progress(done, len(items))
        with ThreadPoolExecutor(workers) as pool:
            fresh: Iterator[JudgeResult] = map(ask, todo) if workers == 1 else \
                pool.map(ask, todo)
            for result in fresh:
                known[result.key] = result
                if on_result is not None:
                    for index in indices[result.key]:
                        on_result(index, result)
                requests += result.attempts
                done += 1
                if progress:
                    progress(done, len(items))
    return JudgeRun(tuple(known[key] for key in keys), requests, n_cached)
