"""Labelled chains of thought from any problem set: the model answers every problem `n` times,
its answers are read strictly, and its steps are labelled by the arithmetic rule, by a judge
model, or not at all.

    problems = read_problems("gsm8k_test.jsonl", limit=100)      # or arith_problem_set(...)
    summary = make_traces(loaded, problems, "chains.jsonl", MakeTracesConfig(n=2))

What each chain records: the prompt it was generated from (the user message as `prompt`, a
system message as `system`), the raw reply as `response` (the stop rule ends it after the line
of its first answer statement), its steps located in that reply, `answer` and `answered` (a
reply without an explicit answer statement is unanswered and not correct), `gold`,
`is_correct`, step labels and prefix labels (`core.data.prefix_labels`, the paper's convention
by default):
- "rule": `core.data.arith.label_steps` (a false calculation, or a number neither given nor
  an earlier result), with its reasons in `label_reasons`;
- "judge": a judge model's verdicts (`core.data.judge`): the step label is "this step is
  wrong", the prefix label "the reasoning so far is on a path to a wrong answer", except the
  last one, which is `not is_correct` (terminal consistency; the number of chains where the
  judge said otherwise is reported). With prefix_labels="any-so-far" the prefix labels are
  derived from the judge's step labels instead. A chain the judge could not label keeps null
  labels, and is counted;
- "none": outcome only (the last prefix label).

Following a run (the app does): `on_chains(traces)` is called with chains as they are labelled
(rule and none: after each batch of replies, the journalled ones first; judge: as the judge's
verdicts arrive), each chain once, in the form the written file holds; `should_stop()` is
checked after each batch and before each judge request, and ends the run with
`core.progress.Stopped`, leaving the journals to resume from.

Resuming: the replies are journalled batch by batch in OUT.replies.jsonl and the judge's
verdicts in OUT.judge.jsonl. Both are kept after the run, so a rerun of the same command samples
and judges nothing again; delete them to start afresh. With `test_share` > 0 the problems are
split (never a problem in both) into OUT_train.jsonl and OUT_test.jsonl. Every file gets a
`.meta.json` sidecar with the schema version, the versions that produced it, the settings and
the command that regenerates it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import __version__
from core.data.answers import (
    AccuracyWithChance,
    AnswerFormat,
    answers_match,
    parse_number,
    trace_accuracy,
)
from core.data.arith import find_numbers, label_steps
from core.data.atomic import atomic_write_text
from core.data.journal import Journal
from core.data.judge import (
    JudgeBackend,
    JudgeItem,
    JudgePrompt,
    JudgeResult,
    JudgeRun,
    judge_items,
)
from core.data.prefix_labels import check_convention, derive_prefix_labels
from core.data.problems import Problem
from core.data.prompting import DEFAULT_PROMPT, PromptSpec
from core.data.steps import DEFAULT_SEGMENTER, Segmenter, split_steps
from core.data.traces import SCHEMA_VERSION, Trace, trace_from_dict, write_traces
from core.progress import Progress, ShouldStop, check_stop
from core.runtime.generate import SamplingConfig, sample_replies
from core.runtime.models import LoadedModel

STEP_LABELLERS = ("rule", "judge", "none")


@dataclass(frozen=True)
class MakeTracesConfig:
    """How chains are sampled and labelled (see the module docstring)."""

    n: int = 2  # chains per problem
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=200)  # its seed splits the set
    batch_size: int = 16
    test_share: float = 0.0
    step_labels: str = "rule"
    prefix_labels: str = "paper"
    prompt: PromptSpec = DEFAULT_PROMPT
    answers: AnswerFormat | None = None  # None: the prompt's (`PromptSpec.reader`), numeric
    # when every gold is a number
    stop_at_answer: bool = True
    segmenter: Segmenter = DEFAULT_SEGMENTER
    source: str = "telltale-make-traces"
    judge_attempts: int = 3
    judge_workers: int = 1

    def __post_init__(self) -> None:
        if self.n < 1 or self.batch_size < 1:
            raise ValueError("Need at least one chain per problem and a batch size of 1+.")
        if not 0.0 <= self.test_share < 1.0:
            raise ValueError(f"The test share must be in [0, 1), got {self.test_share}.")
        if self.step_labels not in STEP_LABELLERS:
            raise ValueError(f"Unknown step labeller '{self.step_labels}'; choose from "
                             f"{', '.join(STEP_LABELLERS)}.")
        check_convention(self.prefix_labels)

    def reader(self, problems: Sequence[Problem] = ()) -> AnswerFormat:
        """The answer reader: `answers`, else the prompt's, numeric when every gold is one."""
        if self.answers is not None:
            return self.answers
        numeric = bool(problems) and all(p.gold is not None and parse_number(p.gold) is not None
                                         for p in problems)
        return self.prompt.reader(AnswerFormat(numeric=numeric))


@dataclass(frozen=True)
class MakeTracesSummary:
    files: tuple[str, ...]
    n_problems: int
    n_chains: int
    n_empty: int
    n_sampled: int  # replies sampled in this run (0 when the journal had them all)
    step_label_rate: float | None  # share of labelled steps with label 1
    outcome: AccuracyWithChance
    n_judged: int = 0
    n_judge_failed: int = 0  # chains whose verdicts could not be parsed (null labels)
    n_judge_requests: int = 0  # requests sent in this run (0 when all were cached)
    n_judge_terminal_fixed: int = 0  # last prefix verdict contradicted the outcome

    def __str__(self) -> str:
        o = self.outcome
        rate = "n/a" if self.step_label_rate is None else f"{self.step_label_rate:.1%}"
        text = (f"Wrote {self.n_chains} chains for {self.n_problems} problems to "
                f"{', '.join(self.files)} (sampled now: {self.n_sampled}; empty replies "
                f"dropped: {self.n_empty}). Answered {o.answered_share:.1%}; accuracy "
                f"{o.accuracy:.1%} against a shuffled-gold chance of {o.chance_mean:.1%} "
                f"(sd {o.chance_sd:.1%}, {o.n_shuffles} shuffles); step label 1 on {rate} of "
                "labelled steps.")
        if self.n_judged:
            text += (f" Judge: {self.n_judged} chains, {self.n_judge_failed} without parsable "
                     f"verdicts (null labels), {self.n_judge_requests} requests now, last "
                     f"prefix verdict set by the outcome in {self.n_judge_terminal_fixed}.")
        return text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"telltale": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def _sha256(texts: Sequence[str]) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()


def sample_chains(loaded: LoadedModel, problems: Sequence[Problem], out: Path,
                  config: MakeTracesConfig, reader: AnswerFormat,
                  progress: Progress | None = None,
                  on_replies: Callable[[Mapping[int, str]], None] | None = None,
                  should_stop: ShouldStop | None = None) -> tuple[list[str], int]:
    """(one reply per problem and chain, problem-major; how many were sampled now), journalled
    in OUT.replies.jsonl so an interrupted or repeated run reuses what it has.
    `on_replies({index: reply})` gets the journalled replies, then each sampled batch;
    `should_stop()` is checked before sampling and after each journalled batch."""
    prompts = [config.prompt.render(loaded.tokenizer, p.question)
               for p in problems for _ in range(config.n)]
    settings = {"model": loaded.name, "sampling": asdict(config.sampling),
                "batch_size": config.batch_size, "n": config.n,
                "stop": reader.as_dict() if config.stop_at_answer else None,
                "prompts_sha256": _sha256(prompts)}
    journal_path = out.with_name(out.stem + ".replies.jsonl")
    with Journal.open(journal_path, {"kind": "telltale-replies", "settings": settings}) as log:
        done = {int(entry["index"]): str(entry["reply"]) for entry in log.entries}
        sampled = 0
        if on_replies and done:
            on_replies(done)
        check_stop(should_stop, "Sampling")

        def keep(first: int, batch: list[str]) -> None:
            nonlocal sampled
            sampled += len(batch)
            log.append({"index": first + offset, "reply": reply}
                       for offset, reply in enumerate(batch))
            if on_replies:
                on_replies({first + offset: reply for offset, reply in enumerate(batch)})
            check_stop(should_stop, "Sampling")

        replies = sample_replies(loaded, prompts, config.sampling, batch_size=config.batch_size,
                                 progress=progress, done=done, on_batch=keep,
                                 stop=reader.reply_end if config.stop_at_answer else None)
    return replies, sampled


@dataclass(frozen=True)
class _Chain:
    problem: Problem
    index: int
    reply: str
    steps: tuple[str, ...]


def _outcome(chain: _Chain, reader: AnswerFormat) -> dict[str, Any]:
    answer = reader.read(chain.reply)
    gold = chain.problem.gold
    correct = None if gold is None else answer is not None and answers_match(answer.text, gold)
    return {"answer": None if answer is None else answer.text, "answered": answer is not None,
            "gold": gold, "is_correct": correct}


def _rule_labels(chain: _Chain) -> tuple[list[int | None], dict[str, Any]]:
    given = chain.problem.numbers if chain.problem.numbers is not None else \
        find_numbers(chain.problem.question)
    checks = label_steps(given, chain.steps)
    return [c.label for c in checks], {"label_reasons": [c.reason for c in checks]}


def _judged_labels(result: JudgeResult, is_correct: bool | None, convention: str
                   ) -> tuple[list[int | None], list[int | None] | None, bool]:
    """(step labels, prefix labels or None to derive them, whether the last prefix verdict
    contradicted the outcome) from a judge's verdicts."""
    if result.verdicts is None:
        return [], None, False
    labels: list[int | None] = [int(v.wrong) for v in result.verdicts]
    if convention != "paper":
        return labels, None, False
    prefix: list[int | None] = [int(v.wrong_path) for v in result.verdicts]
    if is_correct is None:
        return labels, prefix, False
    fixed = prefix[-1] != int(not is_correct)
    prefix[-1] = int(not is_correct)  # terminal consistency
    return labels, prefix, fixed


def _record(chain: _Chain, outcome: dict[str, Any], config: MakeTracesConfig,
            labeller: str, result: JudgeResult | None) -> tuple[dict[str, Any], bool]:
    """The trace record of one chain, labelled; and whether a judge's last prefix verdict was
    overruled by the outcome."""
    extra: dict[str, Any] = {"system": config.prompt.system} if config.prompt.system else {}
    labels: list[int | None] = [None] * len(chain.steps)
    prefix: list[int | None] | None = None
    fixed = False
    if config.step_labels == "rule":
        labels, more = _rule_labels(chain)
        extra.update(more)
    elif result is not None:
        extra["judge"] = {"key": result.key, "error": result.error,
                          "verdicts": "ok" if result.verdicts else "unparsed"}
        judged, prefix, fixed = _judged_labels(result, outcome["is_correct"],
                                               config.prefix_labels)
        labels = judged or labels
    if prefix is None:
        prefix = derive_prefix_labels(labels, outcome["is_correct"], config.prefix_labels)
    return {
        "id": f"{chain.problem.id}-c{chain.index}", "problem_id": chain.problem.id,
        "prompt": config.prompt.user_message(chain.problem.question), "response": chain.reply,
        "steps": [{"text": text, "label": label, "prefix_label": pre}
                  for text, label, pre in zip(chain.steps, labels, prefix, strict=True)],
        **outcome, "source": config.source, "step_labeller": labeller, **extra}, fixed


def make_traces(loaded: LoadedModel, problems: Sequence[Problem], out: str | Path,
                config: MakeTracesConfig = MakeTracesConfig(),
                judge: JudgeBackend | None = None, judge_prompt: JudgePrompt | None = None,
                progress: Progress | None = None, judge_progress: Progress | None = None,
                problems_info: Mapping[str, Any] | None = None,
                command: str | None = None,
                on_chains: Callable[[Sequence[Trace]], None] | None = None,
                should_stop: ShouldStop | None = None) -> MakeTracesSummary:
    """Sample, label and write chains for `problems` (see the module docstring); `command`
    (the command line that made them) and `problems_info` go into the sidecar; `on_chains`
    and `should_stop` follow and end a run (see the module docstring)."""
    if not problems:
        raise ValueError("No problems to answer.")
    if config.step_labels == "judge" and judge is None:
        raise ValueError("Step labels by a judge need a judge model.")
    out = Path(out)
    judge_prompt = (judge_prompt or JudgePrompt.load()) if judge is not None else None
    reader = config.reader(problems)
    labeller = config.step_labels if judge is None or config.step_labels != "judge" \
        else f"judge:{judge.name}"
    read: dict[int, tuple[_Chain, dict[str, Any]]] = {}  # reply index -> chain, outcome
    empty: set[int] = set()  # replies without a step
    built: dict[int, tuple[Trace, bool]] = {}  # reply index -> labelled chain, overruled

    def read_reply(index: int, reply: str) -> None:
        spans = split_steps(reply, config.segmenter)
        if not spans:
            empty.add(index)
            return
        chain = _Chain(problems[index // config.n], index % config.n, reply,
                       tuple(reply[s.start:s.end] for s in spans))
        read[index] = chain, _outcome(chain, reader)

    def build(index: int, result: JudgeResult | None) -> Trace:
        record, overruled = _record(*read[index], config, labeller, result)
        built[index] = trace_from_dict(record, config.segmenter), overruled
        return built[index][0]

    def replies_read(replies: Mapping[int, str]) -> None:
        for index in sorted(replies):
            read_reply(index, replies[index])
        if on_chains and config.step_labels != "judge":
            new = [build(index, None) for index in sorted(replies) if index in read]
            if new:
                on_chains(new)

    replies, n_sampled = sample_chains(loaded, problems, out, config, reader, progress,
                                       replies_read, should_stop)
    for index, reply in enumerate(replies):
        if index not in read and index not in empty:
            read_reply(index, reply)
    numbers = sorted(read)  # the chains, in reply order
    run: JudgeRun | None = None
    if config.step_labels == "judge":
        assert judge is not None and judge_prompt is not None
        items = [JudgeItem(read[i][0].problem.question, read[i][0].steps, read[i][1]["gold"],
                           read[i][1]["answer"]) for i in numbers]

        def judged(number: int, result: JudgeResult) -> None:
            if on_chains:
                on_chains([build(numbers[number], result)])

        run = judge_items(judge, judge_prompt, items, out.with_name(out.stem + ".judge.jsonl"),
                          config.judge_attempts, config.judge_workers, judge_progress,
                          judged, should_stop)
    traces, fixed = [], 0
    for number, index in enumerate(numbers):
        if index not in built:
            build(index, run.results[number] if run else None)
        trace, overruled = built[index]
        traces.append(trace)
        fixed += overruled
    groups = _split(traces, out, config.test_share, config.sampling.seed)
    labelled = [label for t in traces for label in t.step_labels if label is not None]
    settings = {"problems": dict(problems_info or {}), "n_problems": len(problems),
                **{k: v for k, v in asdict(config).items()
                   if k not in ("prompt", "answers", "segmenter")},
                "prompt": config.prompt.as_dict(), "answers": reader.as_dict(),
                "segmenter": asdict(config.segmenter),
                "judge": None if judge is None or judge_prompt is None else {
                    "name": judge.name, "prompt": judge_prompt.source,
                    "prompt_sha256": judge_prompt.sha256}}
    summary = MakeTracesSummary(
        files=tuple(groups), n_problems=len(problems), n_chains=len(traces),
        n_empty=len(empty),
        n_sampled=n_sampled,
        step_label_rate=sum(labelled) / len(labelled) if labelled else None,
        outcome=trace_accuracy(traces),
        n_judged=len(numbers) if run else 0, n_judge_failed=run.n_failed if run else 0,
        n_judge_requests=run.n_requests if run else 0, n_judge_terminal_fixed=fixed)
    for path, group in groups.items():
        write_traces(path, group)
        meta = {"schema_version": SCHEMA_VERSION, "source": config.source, "model": loaded.name,
                "versions": _versions(), "settings": settings, "n_chains": len(group),
                "outcome": trace_accuracy(group).as_dict() if group else None,
                "summary": summary.as_dict(), "regenerate": command}
        atomic_write_text(Path(path).with_suffix(".meta.json"),
                          json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return summary


def _split(traces: list[Trace], out: Path, test_share: float,
           seed: int) -> dict[str, list[Trace]]:
    """{path: traces}: one file, or OUT_train/OUT_test split by problem."""
    if test_share <= 0:
        return {str(out): traces}
    ids = sorted({t.problem_id or t.id for t in traces})
    random.Random(seed).shuffle(ids)
    test_ids = set(ids[: max(1, round(len(ids) * test_share))])
    return {
        str(out.with_name(f"{out.stem}_train.jsonl")):
            [t for t in traces if (t.problem_id or t.id) not in test_ids],
        str(out.with_name(f"{out.stem}_test.jsonl")):
            [t for t in traces if (t.problem_id or t.id) in test_ids],
    }
