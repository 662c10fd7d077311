"""Does latent backtracking help? Held-out problems answered five ways, with the same seed per
problem, each judged by the answer read strictly from the reply (`core.data.answers`):

- plain: the monitor in watch mode (its sampler, so with the same seed the other monitor arms
  write the very same reply until they first resample: a discordant pair is the method's
  doing, not sampling noise);
- backtrack: the monitor in backtrack mode (the alarm is the step's own event, see
  `core.diagnose.monitor`);
- random: the control that resamples randomly chosen steps of the reply, whatever the probes
  say, at the same token budget as backtracking on that problem (matched tokens, not matched
  resample counts: slots (step, retry) drawn in random order while their expected cost, the
  plain reply's step lengths, brings the spend nearer to backtracking's extra tokens);
- best_of_n_prefix / best_of_n_majority: best-of-N at the same token budget: the plain reply
  and further replies (batched sampling, `core.runtime.generate`, with the same stop rule) while
  they bring the spend nearer to backtracking's tokens; one picks the reply with the lowest
  final prefix score (the further replies are scored teacher-forced, which equals the streamed
  score), the other the most common stated answer. Both spend the same tokens.

Budgets are matched per problem: a control gets more tokens exactly where backtracking spent
more, which favours the controls (they learn from the probe which problems to spend on); a
gain of backtracking over them is the choice of the step. Tokens are every forward position
after the prompt (retries and replays included) for the monitor arms, and the tokens of every
reply used for best-of-N.

Each problem's arms are journalled as they finish (`core.data.journal`): a rerun of the same
settings reuses them, so an interrupted run resumes, and a longer run extends a shorter one.

    problems = held_out_problems(200)
    outcome = backtrack_eval(loaded, bundle, problems, BacktrackEvalConfig(), "bt.journal.jsonl")
    outcome.summary["arms"]["backtrack"]["mcnemar_p"]
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from core.data.answers import AnswerFormat, answers_match, parse_number
from core.data.journal import Journal, JournalMismatch
from core.data.problems import Problem, arith_problem_set
from core.data.prompting import DEFAULT_PROMPT
from core.data.steps import Segmenter, split_steps
from core.data.traces import trace_from_dict
from core.diagnose.backtrack_stats import (
    choose_by_majority,
    choose_by_prefix,
    plan_resamples,
    summarise,
    take_within_budget,
)
from core.diagnose.evaluation import score_capture
from core.diagnose.feature_store import CaptureConfig, capture_in_memory
from core.diagnose.monitor import MonitorConfig, MonitorResult, run_monitor
from core.diagnose.probes import ProbeBundle, probe_to_bytes
from core.progress import Progress
from core.runtime.generate import SamplingConfig, sample_responses
from core.runtime.models import LoadedModel

ARMS = ("plain", "backtrack", "random", "best_of_n_prefix", "best_of_n_majority")
HELD_OUT_SEED = 1000  # problem seed never used for the shipped training data
JOURNAL_KIND = "telltale-backtrack-eval"


@dataclass(frozen=True)
class BacktrackEvalConfig:
    """The monitor's settings (its mode is set per arm; problem i uses seed `monitor.seed + i`)
    and best-of-N's: at most `max_candidates` replies per problem, sampled `candidate_batch`
    at a time."""

    monitor: MonitorConfig = MonitorConfig(max_new_tokens=96)
    max_candidates: int = 16
    candidate_batch: int = 4
    n_shuffles: int = 20  # shuffled-gold chance rate

    def __post_init__(self) -> None:
        if self.max_candidates < 1 or self.candidate_batch < 1:
            raise ValueError("max_candidates and candidate_batch must be at least 1.")


@dataclass(frozen=True)
class BacktrackEval:
    """One row per problem and arm (`table`) and the per-arm summary (`backtrack_stats`)."""

    table: pd.DataFrame
    summary: dict[str, Any]


def held_out_problems(n: int, seed: int = HELD_OUT_SEED, min_ops: int = 2, max_ops: int = 4,
                      max_number: int = 9) -> list[Problem]:
    """Arithmetic problems of the shipped training set's kind, from a seed it does not use."""
    return arith_problem_set(n, seed=seed, min_ops=min_ops, max_ops=max_ops,
                             max_number=max_number)


class _NoJournal:
    """Stands in for a Journal when the run is not journalled."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def append(self, entries: Sequence[dict[str, Any]]) -> None:
        self.entries.extend(entries)

    def close(self) -> None:
        pass


def _monitor_entry(result: MonitorResult) -> dict[str, Any]:
    return {"text": result.text, "answer": result.answer, "tokens": result.tokens_processed,
            "tokens_generated": result.tokens_generated, "resampled": len(result.discarded),
            "alarms": result.alarms, "ended_by": result.ended_by,
            "final_prefix": result.steps[-1].prefix_score if result.steps else None,
            "step_costs": [step.n_tokens + 1 for step in result.steps]}  # + the closing token


def final_prefix_scores(loaded: LoadedModel, bundle: ProbeBundle, question: str,
                        replies: Sequence[str], segmenter: Segmenter) -> list[float | None]:
    """The prefix score at the last step of each reply, teacher-forced (None: no step)."""
    traces = [trace_from_dict({"id": str(k), "prompt": question, "response": reply}, segmenter)
              for k, reply in enumerate(replies) if split_steps(reply, segmenter)]
    if not traces:
        return [None] * len(replies)
    capture = capture_in_memory(loaded, traces, CaptureConfig(layers=(bundle.meta.layer,),
                                                              poolings=bundle.poolings))
    scores = {chain.trace_id: float(chain.prefix_scores[-1])
              for chain in score_capture(bundle, capture)}
    return [scores.get(str(k)) for k in range(len(replies))]


class _Run:
    """The arms of every problem, computed or read back from the journal."""

    def __init__(self, loaded: LoadedModel, bundle: ProbeBundle, config: BacktrackEvalConfig,
                 monitor: MonitorConfig, journal: Journal | _NoJournal) -> None:
        self.loaded, self.bundle, self.config, self.monitor = loaded, bundle, config, monitor
        self.journal = journal
        self.done = {(int(e["problem"]), str(e["arm"])): e for e in journal.entries}

    def entry(self, number: int, problem: Problem, arm: str,
              compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The journalled entry of (problem, arm), else `compute()` journalled now."""
        found = self.done.get((number, arm))
        if found is not None:
            if found.get("problem_id") != problem.id:
                raise JournalMismatch(f"The journal's problem {number} is "
                                      f"{found.get('problem_id')!r}, not {problem.id!r}: it "
                                      "belongs to other problems.")
            return found
        entry = {"problem": number, "problem_id": problem.id, "arm": arm, **compute()}
        self.journal.append([entry])
        self.done[(number, arm)] = entry
        return entry

    def problem(self, number: int, problem: Problem) -> dict[str, dict[str, Any]]:
        seed = self.monitor.seed + number
        question = DEFAULT_PROMPT.user_message(problem.question)

        def monitored(mode: str, steps: tuple[int, ...] = ()) -> dict[str, Any]:
            config = replace(self.monitor, mode=mode, seed=seed, resample_steps=steps)
            return _monitor_entry(run_monitor(self.loaded, self.bundle, question, config))

        plain = self.entry(number, problem, "plain", lambda: monitored("watch"))
        backtrack = self.entry(number, problem, "backtrack", lambda: monitored("backtrack"))
        extra = max(0, backtrack["tokens"] - plain["tokens"])
        slots = plan_resamples(plain["step_costs"], extra, self.monitor.retries, seed)
        random_arm = self.entry(number, problem, "random",
                                lambda: {**monitored("random", slots), "planned": list(slots)})
        best = self.entry(number, problem, "best_of_n",
                          lambda: self.best_of_n(question, plain, backtrack["tokens"], seed))
        return {"plain": plain, "backtrack": backtrack, "random": random_arm, "best_of_n": best}

    def best_of_n(self, question: str, plain: dict[str, Any], budget: int,
                  seed: int) -> dict[str, Any]:
        """Further replies after the plain one while they bring the spend nearer to `budget`
        (`take_within_budget`), with their strict answers and final prefix scores."""
        monitor, config, tokenizer = self.monitor, self.config, self.loaded.tokenizer
        costs: list[int] = [max(int(plain["tokens"]), 1)]
        replies: list[str] = []
        while sum(costs) < budget and len(costs) < config.max_candidates:
            wanted = math.ceil((budget - sum(costs)) / (sum(costs) / len(costs))) + 1
            k = min(wanted, config.candidate_batch, config.max_candidates - len(costs))
            sampling = SamplingConfig(monitor.max_new_tokens, monitor.temperature,
                                      monitor.top_p, seed=seed * 1000 + len(replies))
            stops = monitor.stop_at_answer or bool(monitor.stop_strings)
            batch = sample_responses(self.loaded, [question] * k, sampling, batch_size=k,
                                     stop=monitor.stop_rule if stops else None)
            replies.extend(batch)
            costs.extend(max(len(tokenizer(r, add_special_tokens=False)["input_ids"]), 1)
                         for r in batch)
        used = replies[: take_within_budget(costs, budget, random.Random(seed).random()) - 1]
        scores = final_prefix_scores(self.loaded, self.bundle, question, used, monitor.segmenter)
        candidates = []
        for reply, cost, score in zip(used, costs[1:], scores, strict=False):
            answer = monitor.answers.read(reply)
            candidates.append({"text": reply, "tokens": cost, "final_prefix": score,
                               "answer": None if answer is None else answer.text})
        return {"budget": budget, "sampled": len(replies), "candidates": candidates}


def _rows(number: int, problem: Problem, arms: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows of one problem: the three monitor arms and the two best-of-N choices."""
    plain = arms["plain"]
    candidates = [plain, *arms["best_of_n"]["candidates"]]
    tokens = sum(int(c["tokens"]) for c in candidates)
    chosen = {
        "best_of_n_prefix": choose_by_prefix([c["final_prefix"] for c in candidates]),
        "best_of_n_majority": choose_by_majority([c["answer"] for c in candidates]),
    }
    rows = []
    for arm in ARMS:
        if arm in chosen:
            pick = candidates[chosen[arm]]
            entry = {"answer": pick["answer"], "text": pick["text"], "tokens": tokens,
                     "final_prefix": pick["final_prefix"], "resampled": 0, "alarms": None}
            extra = {"candidates": len(candidates), "chosen": chosen[arm]}
        else:
            entry, extra = arms[arm], {"candidates": 1, "chosen": 0}
        rows.append({
            "problem": number, "problem_id": problem.id, "arm": arm, "gold": problem.gold,
            "answer": entry["answer"], "answered": entry["answer"] is not None,
            "correct": answers_match(entry["answer"], problem.gold), "tokens": entry["tokens"],
            "resampled": entry["resampled"], "alarms": entry["alarms"], **extra,
            "final_prefix": entry["final_prefix"], "reply": entry["text"]})
    return rows


def _probe_hash(bundle: ProbeBundle) -> str:
    weights, sidecar = probe_to_bytes(bundle)
    return hashlib.sha256(weights + b"\x00" + sidecar).hexdigest()


def backtrack_eval(loaded: LoadedModel, bundle: ProbeBundle, problems: Sequence[Problem],
                   config: BacktrackEvalConfig = BacktrackEvalConfig(),
                   journal: str | Path | None = None, problem_source: Any = None,
                   progress: Progress | None = None) -> BacktrackEval:
    """Answer every problem five ways (see the module docstring); `journal` (a path) keeps each
    problem's arms as they finish for a rerun to reuse. `problem_source` names the problem set
    in the journal's header (not its length, so a longer run extends a shorter one)."""
    if not problems:
        raise ValueError("Need at least one problem.")
    if any(p.gold is None for p in problems):
        raise ValueError("Every problem needs a gold answer to be scored.")
    numeric = all(parse_number(p.gold or "") is not None for p in problems)
    monitor = replace(config.monitor, mode="watch", resample_steps=(),
                      answers=AnswerFormat(config.monitor.answers.patterns, numeric))
    bundle.check_model(loaded.spec, loaded.hidden_size)
    header = {"kind": JOURNAL_KIND, "model": loaded.name, "probe_sha256": _probe_hash(bundle),
              "monitor": asdict(monitor), "max_candidates": config.max_candidates,
              "candidate_batch": config.candidate_batch, "problems": problem_source}
    log = Journal.open(journal, header) if journal is not None else _NoJournal()
    rows: list[dict[str, Any]] = []
    try:
        run = _Run(loaded, bundle, config, monitor, log)
        for number, problem in enumerate(problems):
            rows.extend(_rows(number, problem, run.problem(number, problem)))
            if progress:
                progress(number + 1, len(problems))
    finally:
        log.close()
    table = pd.DataFrame(rows)
    summary = summarise(table, ARMS, n_shuffles=config.n_shuffles)
    summary["settings"] = {"trigger": monitor.trigger, "threshold": (
        bundle.meta.step_threshold if monitor.threshold is None else monitor.threshold)
        if monitor.trigger == "step" else None,
        "rise_margin": monitor.rise_margin if monitor.trigger == "prefix-rise" else None,
        "retries": monitor.retries, "max_backtracks": monitor.max_backtracks,
        "temperature": monitor.temperature, "top_p": monitor.top_p,
        "max_new_tokens": monitor.max_new_tokens, "stop_at_answer": monitor.stop_at_answer,
        "seed": monitor.seed}
    return BacktrackEval(table, summary)
