"""What the Traces page's chain maker keeps and runs: the request a Start press makes, the
problem files it reads, and the run itself, a background job on the process's board
(`dashboard.common.jobs`) around `core.data.sample_data.make_traces`.

- A request is plain values (`GenerateRequest.to_state()`); its hash names the run: the job's
  key on the board and its folder, `runs/chains-<hash>/` under the server's working folder
  (TELLTALE_RUNS_DIR moves it). The folder holds the problems (problems.jsonl, GSM8K's
  shape), the request (run.json), the chains (chains.jsonl and its .meta.json, written
  atomically at the end) and core's journals (chains.replies.jsonl, chains.judge.jsonl): Start
  with the same settings after a Stop or a restart resumes from them, and a finished run's
  sidecar holds the `telltale make-traces` command that makes the same file.
- The job publishes a frozen `GenerateProgress` (stage, counts, the chains labelled so far,
  from make_traces' `on_chains`); Stop is make_traces' `should_stop`.
- Nothing here draws on the page.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.data.atomic import atomic_write_text
from core.data.judge import EndpointJudge, JudgeBackend, JudgePrompt, LocalJudge, api_key
from core.data.problems import Problem, arith_problem_set, read_problems, write_problems
from core.data.sample_data import MakeTracesConfig, MakeTracesSummary, make_traces
from core.data.traces import Trace
from core.progress import Progress, Stopped
from core.runtime.access import ModelAccess
from core.runtime.generate import SamplingConfig
from core.runtime.models import LoadedModel, LoadOptions, load_model
from dashboard.common.jobs import Job, board
from dashboard.diagnose.generate_request import GenerateRequest

RUNS_ENV = "TELLTALE_RUNS_DIR"
CHAINS_FILE = "chains.jsonl"


def runs_folder() -> Path:
    """Where runs go: TELLTALE_RUNS_DIR, else runs/ in the server's working folder (kept
    relative, so the summary and the command name runs/... as a user at that folder types)."""
    return Path(os.environ.get(RUNS_ENV) or "runs").expanduser()


def run_folder(request: GenerateRequest) -> Path:
    return runs_folder() / f"chains-{request.run_id}"


# ---------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class GenerateProgress:
    """A run so far: its stage ("Sampling replies", "Judging chains", ...), the stage's counts
    and the chains labelled so far, in the order they were labelled."""

    stage: str = "Starting"
    done: int = 0
    total: int = 0
    unit: str = ""
    chains: tuple[Trace, ...] = ()


@dataclass(frozen=True)
class GenerateRun:
    """What a job was started for (`Job.request`): the request, its folder and the command
    that makes the same file."""

    request: GenerateRequest
    folder: Path
    command: str

    @property
    def chains_file(self) -> Path:
        return self.folder / CHAINS_FILE


@dataclass(frozen=True)
class GenerateResult:
    """How a job ended: the summary, or None when it was stopped."""

    summary: MakeTracesSummary | None

    @property
    def stopped(self) -> bool:
        return self.summary is None


def progress_of(job: Job[Any]) -> GenerateProgress:
    return job.snapshot if isinstance(job.snapshot, GenerateProgress) else GenerateProgress()


def run_of(job: Job[Any]) -> GenerateRun:
    if not isinstance(job.request, GenerateRun):
        raise TypeError(f"Job {job.key} is not a chain-making run.")
    return job.request


def config_of(request: GenerateRequest) -> MakeTracesConfig:
    """The make_traces settings (as `telltale make-traces` builds them from the same values)."""
    sampling = SamplingConfig(request.max_new_tokens, request.temperature, seed=request.seed)
    return MakeTracesConfig(
        n=request.n, sampling=sampling, batch_size=request.batch_size,
        step_labels=request.step_labels,
        source="telltale-arith" if request.source == "arith" else "telltale-make-traces",
        judge_workers=request.judge.workers if request.judge and request.judge.url else 1)


def command_line(request: GenerateRequest, folder: Path) -> str:
    """The `telltale make-traces` command that writes the same chains file."""
    spec, device, dtype = request.model
    problems = "arith" if request.source == "arith" else str(folder / "problems.jsonl")
    parts = ["telltale", "make-traces", "--model", spec, "--device", device, "--dtype", dtype,
             "--out", str(folder / CHAINS_FILE), "--problems", problems,
             "--n-problems", str(request.n_problems), "--n", str(request.n),
             "--seed", str(request.seed), "--max-new-tokens", str(request.max_new_tokens),
             "--temperature", str(request.temperature), "--batch-size", str(request.batch_size),
             "--step-labels", request.step_labels]
    judge = request.judge
    if judge is not None and request.step_labels == "judge":
        parts += ["--judge-model", judge.model or spec]
        if judge.url:
            parts += ["--judge-url", judge.url, "--judge-workers", str(judge.workers)]
            parts += ["--judge-key-env", judge.key_env] if judge.key_env else []
        if judge.prompt_hash:
            parts += ["--judge-prompt", str(folder / "judge_prompt.md")]
    return shlex.join(parts)


def problem_set(request: GenerateRequest, problems: list[Problem], folder: Path
                ) -> tuple[list[Problem], dict[str, Any]]:
    """The problems the run answers and their sidecar record: Telltale's arithmetic as the CLI
    makes it, or a file's first n_problems, written to the folder in GSM8K's shape and read
    back from there (so the command in the sidecar reads the same problems)."""
    if request.source == "arith":
        return arith_problem_set(request.n_problems, seed=request.seed), {
            "kind": "arith", "n": request.n_problems, "seed": request.seed, "min_ops": 2,
            "max_ops": 8, "max_number": 99}
    path = folder / "problems.jsonl"
    write_problems(path, problems[: request.n_problems])
    return read_problems(path), {"kind": "file", "path": str(path), "n": request.n_problems,
                                 "file": request.problems, "sha256": request.problems_hash}


def judge_to_load(request: GenerateRequest, loaded: LoadedModel) -> str | None:
    """The spec of a judge model the run must load: None for no judge, an endpoint, or the
    model that writes the chains."""
    choice = request.judge
    if choice is None or request.step_labels != "judge" or choice.url or not choice.model \
            or choice.model == loaded.spec:
        return None
    return choice.model


def check_judge(request: GenerateRequest, loaded: LoadedModel) -> None:
    """Raise ValueError when the judge model to load lies where the server may not read."""
    spec = judge_to_load(request, loaded)
    if spec is not None:
        try:
            ModelAccess.from_environment().check(spec)
        except RuntimeError as error:  # ModelLoadError: already one sentence
            raise ValueError(str(error)) from None


def make_judge(request: GenerateRequest, loaded: LoadedModel) -> JudgeBackend | None:
    """The judge the request names (None unless its steps are labelled by one); a judge model
    other than the chains' is loaded here, with their device and dtype."""
    choice = request.judge
    if choice is None or request.step_labels != "judge":
        return None
    if choice.url:
        return EndpointJudge(choice.url, choice.model, api_key(choice.key_env or None))
    spec = judge_to_load(request, loaded)
    if spec is None:
        return LocalJudge(loaded)
    _, device, dtype = request.model
    return LocalJudge(load_model(spec, LoadOptions(device=device, dtype=dtype)))


def start_job(loaded: LoadedModel, request: GenerateRequest, problems: list[Problem],
              judge_prompt: JudgePrompt | None) -> Job[GenerateResult]:
    """Start (or find on the board) the run for `request`. Raises ValueError at once for a
    judge the server may not load."""
    check_judge(request, loaded)
    folder = run_folder(request)
    run = GenerateRun(request, folder, command_line(request, folder))

    def work(job: Job[GenerateResult]) -> GenerateResult:
        now = GenerateProgress()

        def show(**changes: Any) -> None:
            nonlocal now
            now = replace(now, **changes)
            job.publish(now)

        def step(stage: str, unit: str) -> Progress:
            def report(done: int, total: int) -> None:
                job.report(done, total)
                show(stage=stage, unit=unit, done=done, total=total)
            return report

        show(stage="Preparing the problems")
        folder.mkdir(parents=True, exist_ok=True)
        chosen, info = problem_set(request, problems, folder)
        atomic_write_text(folder / "run.json", json.dumps(
            {"request": request.to_state(), "command": run.command}, indent=2) + "\n")
        if judge_prompt is not None and request.judge and request.judge.prompt_hash:
            atomic_write_text(folder / "judge_prompt.md", judge_prompt.template)
        if (spec := judge_to_load(request, loaded)) is not None:
            show(stage=f"Loading the judge model {spec}")
        judge = make_judge(request, loaded)
        step("Sampling replies", "replies")(0, len(chosen) * request.n)
        try:
            summary = make_traces(
                loaded, chosen, folder / CHAINS_FILE, config_of(request), judge=judge,
                judge_prompt=judge_prompt, progress=step("Sampling replies", "replies"),
                judge_progress=step("Judging chains", "chains"), problems_info=info,
                command=run.command, should_stop=job.should_stop,
                on_chains=lambda traces: show(chains=(*now.chains, *traces)))
        except Stopped:
            return GenerateResult(None)
        show(stage="Finished")
        return GenerateResult(summary)

    return board().start(f"generate-{request.run_id}", work, "Making chains", request=run,
                         page="traces", keeps_going=True)


__all__ = ["CHAINS_FILE", "RUNS_ENV", "GenerateProgress", "GenerateResult", "GenerateRun",
           "check_judge", "command_line", "config_of", "judge_to_load", "make_judge",
           "progress_of", "problem_set", "run_folder", "run_of", "runs_folder", "start_job"]
