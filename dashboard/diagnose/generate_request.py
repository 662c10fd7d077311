"""What a Start press of the chain maker asks for, as plain values, and the problem files it
names: the shipped ones (sample_traces/*_problems.jsonl) and uploads, read with
`core.data.problems.read_problems` and cached on their content.

    request = GenerateRequest(model, "shipped", "arith_problems.jsonl", file_hash, ...)
    GenerateRequest.from_state(request.to_state()) == request
    request.run_id            # names the run: its job on the board and its folder

Nothing here draws on the page.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import streamlit as st

from core.data.judge import KEY_ENV_VARS
from core.data.problems import Problem, ProblemFileError, read_problems
from core.data.sample_data import STEP_LABELLERS
from dashboard.common.state import SAMPLE_FOLDER, ModelKey, model_key

SOURCES = ("shipped", "upload", "arith")
KEY_ENV_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*_(KEY|TOKEN)")
EXTRA_KEY_VARS_ENV = "TELLTALE_JUDGE_KEY_VARS"  # more key variables the server may send out


def allowed_key_variables() -> tuple[str, ...]:
    """The environment variables a judge key may come from: the two defaults, and those the
    person who started the server listed (comma-separated) in TELLTALE_JUDGE_KEY_VARS. Anyone
    who can reach the page chooses the URL the key goes to, so no other variable is read."""
    extra = [v.strip() for v in os.environ.get(EXTRA_KEY_VARS_ENV, "").split(",") if v.strip()]
    return tuple(dict.fromkeys([*KEY_ENV_VARS, *extra]))
MAX_WORKERS = 32


@dataclass(frozen=True)
class JudgeChoice:
    """The judge: a local model (`url` empty; `model` a spec, empty = the sidebar's model) or
    an OpenAI-compatible endpoint (`url`, `model` its model name, the key from the server's
    environment variable `key_env`, empty = TELLTALE_JUDGE_API_KEY or OPENAI_API_KEY); the
    prompt by name and template hash (empty: the default prompt file)."""

    model: str = ""
    url: str = ""
    key_env: str = ""
    workers: int = 4
    prompt_name: str = "default"
    prompt_hash: str = ""

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"The endpoint URL must start with http:// or https://, not "
                             f"{self.url[:60]!r}.")
        if self.url and not self.model:
            raise ValueError("Name the endpoint's model (as its /v1/models lists it).")
        if self.key_env and not KEY_ENV_PATTERN.fullmatch(self.key_env):
            raise ValueError(f"The key's variable must be a name ending in _KEY or _TOKEN (the "
                             f"app reads no other variable), not {self.key_env[:60]!r}.")
        if self.key_env and self.key_env not in allowed_key_variables():
            raise ValueError(f"The app sends only the keys in {', '.join(allowed_key_variables())}"
                             f"; the server's owner can allow {self.key_env} by listing it in "
                             f"{EXTRA_KEY_VARS_ENV} before starting the server.")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"Parallel requests must be between 1 and {MAX_WORKERS}.")

    @property
    def key_variables(self) -> tuple[str, ...]:
        return (self.key_env,) if self.key_env else KEY_ENV_VARS


@dataclass(frozen=True)
class GenerateRequest:
    """A Start press: the model, the problems (`source` shipped, upload or arith; the file's
    name and the hash of its bytes and field names), how many problems and chains, the
    labelling, the sampling and the judge. Checked on construction (ValueError)."""

    model: ModelKey
    source: str
    problems: str
    problems_hash: str
    n_problems: int
    n: int = 2
    step_labels: str = "rule"
    max_new_tokens: int = 200
    temperature: float = 0.7
    seed: int = 0
    batch_size: int = 8
    question_field: str = ""
    answer_field: str = ""
    judge: JudgeChoice | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"Unknown problem source {self.source!r}.")
        if min(self.n_problems, self.n, self.max_new_tokens, self.batch_size) < 1:
            raise ValueError("Problems, chains per problem, new tokens and the batch size "
                             "must each be at least 1.")
        if self.step_labels not in STEP_LABELLERS:
            raise ValueError(f"Unknown step labels {self.step_labels!r}.")
        if (self.judge is None) != (self.step_labels != "judge"):
            raise ValueError("A judge goes with step labels by a judge, and only with them.")
        if self.temperature < 0:
            raise ValueError("The temperature must be 0 (greedy) or more.")

    def to_state(self) -> dict[str, Any]:
        values = asdict(self)
        values["model"] = list(self.model)
        return values

    @classmethod
    def from_state(cls, value: object) -> GenerateRequest | None:
        if not isinstance(value, dict):
            return None
        try:
            judge = value.get("judge")
            return cls(**{**value, "model": model_key(value["model"]),
                          "judge": None if judge is None else JudgeChoice(**judge)})
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def run_id(self) -> str:
        """16 hex digits of the request's hash: the same settings, the same run."""
        text = json.dumps(self.to_state(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def without_model(self) -> GenerateRequest:
        return replace(self, model=("", "", ""))


# ---------------------------------------------------------------------------- problem files


def shipped_problem_files(folder: Path = SAMPLE_FOLDER) -> list[Path]:
    """The problem files shipped with the project: sample_traces/*_problems.jsonl."""
    return sorted(folder.glob("*_problems.jsonl")) if folder.is_dir() else []


@st.cache_data(show_spinner=False, max_entries=8)
def read_problem_file(data: bytes, name: str, question_field: str = "",
                      answer_field: str = "") -> list[Problem]:
    """The problems of a file's bytes (`read_problems`: JSONL, JSON, CSV or Parquet by the
    name's suffix). The bytes are read under their own name in a temporary folder, so a bad
    file is `ProblemFileError` naming the file as uploaded, the line and the field."""
    safe = Path(name).name or "problems.jsonl"
    with tempfile.TemporaryDirectory(prefix="telltale-problems-") as folder:
        path = Path(folder) / safe
        path.write_bytes(data)
        try:
            return read_problems(path, question_field or None, answer_field or None)
        except ProblemFileError as error:
            raise ProblemFileError(str(error).replace(str(path), safe)) from None


def problems_hash(data: bytes, question_field: str = "", answer_field: str = "") -> str:
    """The hash of a problem file as a run reads it (its bytes and the field names)."""
    digest = hashlib.sha256(data)
    digest.update(f"\x00{question_field}\x00{answer_field}".encode())
    return digest.hexdigest()[:16]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


__all__ = ["KEY_ENV_PATTERN", "SOURCES", "GenerateRequest", "JudgeChoice", "problems_hash",
           "read_problem_file", "shipped_problem_files", "text_hash"]
