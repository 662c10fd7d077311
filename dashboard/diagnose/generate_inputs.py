"""The chain maker's inputs: the problems (a shipped file, an upload, or Telltale's
arithmetic), how many problems and chains, the sampling, the step labels and the judge. They
make a `Plan`: the request a Start press keeps (its model filled in by the press), with the
problems and the judge prompt it needs. A bad file or setting is one sentence on the page."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from core.data.judge import DEFAULT_PROMPT_FILE, JudgePrompt, api_key
from core.data.problems import Problem
from dashboard.common.state import NO_MODEL
from dashboard.diagnose.generate_request import (
    GenerateRequest,
    JudgeChoice,
    problems_hash,
    read_problem_file,
    shipped_problem_files,
    text_hash,
)

SOURCE_KEY = "generate_problem_source"
SHIPPED_KEY = "generate_shipped"
UPLOAD_KEY = "generate_upload"
QUESTION_KEY = "generate_question_field"
ANSWER_KEY = "generate_answer_field"
N_PROBLEMS_KEY = "generate_n_problems"
N_KEY = "generate_n"
TOKENS_KEY = "generate_max_new_tokens"
TEMPERATURE_KEY = "generate_temperature"
SEED_KEY = "generate_seed"
BATCH_KEY = "generate_batch_size"
LABELS_KEY = "generate_step_labels"
JUDGE_KIND_KEY = "generate_judge_kind"
JUDGE_MODEL_KEY = "generate_judge_model"
JUDGE_URL_KEY = "generate_judge_url"
JUDGE_NAME_KEY = "generate_judge_name"
JUDGE_KEY_ENV_KEY = "generate_judge_key_env"
JUDGE_WORKERS_KEY = "generate_judge_workers"
JUDGE_PROMPT_KEY = "generate_judge_prompt"

SOURCE_LABELS = {"shipped": "a shipped problem file", "upload": "upload a problem file",
                 "arith": "Telltale's arithmetic"}
LABEL_HELP = {
    "rule": "rule: the arithmetic checker (for arithmetic word problems such as the shipped "
            "ones): a step is wrong when a calculation in it is false or uses a number that is "
            "neither given nor worked out before",
    "judge": "judge: a judge model reads every step (is it wrong; is the reasoning so far on a "
             "path to a wrong answer)",
    "none": "none: outcome only (the answer is read and compared with the gold; no step "
            "labels)",
}
FILE_TYPES = ["jsonl", "json", "csv", "parquet"]
MAX_ARITH = 10_000


@dataclass(frozen=True, eq=False)
class Plan:
    """What Start would run: the request (no model yet), the problems of a file (empty for
    arithmetic) and the judge's prompt (None unless a judge labels the steps)."""

    request: GenerateRequest
    problems: list[Problem]
    judge_prompt: JudgePrompt | None


def upload_limit_mb() -> int:
    return int(st.get_option("server.maxUploadSize"))


def choose_problem_file(source: str) -> tuple[str, bytes, str, str] | None:
    """(name, bytes, question field, answer field) of the chosen file, or None with a note."""
    if source == "shipped":
        files = {path.name: path for path in shipped_problem_files()}
        if not files:
            st.info("No problem file ships in sample_traces/ (`telltale make-problems --out "
                    "sample_traces/arith_problems.jsonl` writes one); upload one.")
            return None
        name = st.selectbox("Problem file", list(files), key=SHIPPED_KEY,
                            help="sample_traces/*_problems.jsonl: word problems with worked "
                                 "solutions in GSM8K's shape, made by `telltale make-problems`.")
        return str(name), files[str(name)].read_bytes(), "", ""
    upload = st.file_uploader(
        f"Problem file (JSONL, JSON, CSV or Parquet; at most {upload_limit_mb()} MB)",
        type=FILE_TYPES, key=UPLOAD_KEY,
        help="GSM8K's shape (question, answer ending in '#### N'), MATH's (problem, solution "
             "with \\boxed{}), or any other with the field names below. An 'id' field names "
             "each problem.")
    with st.expander("Field names, for a file in another shape"):
        left, right = st.columns(2)
        question = left.text_input("Question field", key=QUESTION_KEY, placeholder="auto")
        answer = right.text_input("Answer field", key=ANSWER_KEY, placeholder="auto",
                                  help="The gold is its '#### N' line, else its last "
                                       "\\boxed{}, else all of it.")
    if upload is None:
        st.caption("Upload a problem file to go on.")
        return None
    return upload.name, upload.getvalue(), question.strip(), answer.strip()


def choose_judge() -> tuple[JudgeChoice, JudgePrompt] | None:
    """The judge and its prompt, or None with the sentence that says what is wrong."""
    kind = st.radio("Judge", ["local", "endpoint"], key=JUDGE_KIND_KEY, horizontal=True,
                    format_func=lambda k: {"local": "a model this server loads",
                                           "endpoint": "an OpenAI-compatible endpoint"}[k])
    left, mid, right = st.columns([3, 2, 2])
    if kind == "local":
        model = left.text_input("Judge model", key=JUDGE_MODEL_KEY,
                                placeholder="the model in the sidebar",
                                help="A model spec as in the sidebar ('default', a hub id, a "
                                     "local folder under the allowed folders); empty: the "
                                     "model that writes the chains judges them.")
        url = key_env = ""
        workers = 1
    else:
        url = left.text_input("Endpoint URL", key=JUDGE_URL_KEY,
                              placeholder="http://127.0.0.1:8000/v1",
                              help="vLLM, llama.cpp's server, Ollama (...:11434/v1) and hosted "
                                   "APIs all speak it.")
        model = mid.text_input("Model name", key=JUDGE_NAME_KEY,
                               help="As the endpoint names it (its /v1/models).")
        key_env = right.text_input("Key from the variable", key=JUDGE_KEY_ENV_KEY,
                                   placeholder="TELLTALE_JUDGE_API_KEY",
                                   help="The name of an environment variable of the server "
                                        "that holds the key (never the key itself); it must "
                                        "end in _KEY or _TOKEN. Empty: TELLTALE_JUDGE_API_KEY, "
                                        "else OPENAI_API_KEY.")
        workers = int(mid.number_input("Parallel requests", 1, 32, 4, key=JUDGE_WORKERS_KEY))
    upload = st.file_uploader(
        "Judge prompt (optional, .md or .txt)", type=["md", "txt"], key=JUDGE_PROMPT_KEY,
        help=f"Replaces the default prompt ({DEFAULT_PROMPT_FILE.name}, beside core/data/"
             "judge.py: copy and edit it). Placeholders: {question} {gold} {steps} (required) "
             "{n_steps} {answer}.")
    try:
        prompt = JudgePrompt.load() if upload is None else \
            JudgePrompt(upload.getvalue().decode("utf-8"), upload.name)
        choice = JudgeChoice(model.strip(), url.strip(), key_env.strip(), workers,
                             "default" if upload is None else upload.name,
                             "" if upload is None else text_hash(prompt.template))
    except (ValueError, UnicodeDecodeError) as error:
        st.error(f"Judge: {error}")
        return None
    if choice.url:
        found = [name for name in choice.key_variables if api_key(name)]
        st.caption(f"Key: from **{found[0]}** on the server." if found else
                   f"No key: {' and '.join(choice.key_variables)} are not set on the server, "
                   "so requests go without one (vLLM, llama.cpp's server and Ollama need none).")
    return choice, prompt


def read_problems(data: bytes, name: str, fields: tuple[str, str]) -> list[Problem] | None:
    """The file's problems with a line saying how many, or None with the sentence that names
    the file, line and field of what is wrong."""
    try:
        problems = read_problem_file(data, name, *fields)
    except ValueError as error:  # ProblemFileError
        st.error(str(error))
        return None
    first = problems[0].question
    example = first if len(first) <= 160 else first[:160].rsplit(" ", 1)[0] + " ..."
    st.caption(f"{name}: {len(problems)} problem(s), e.g. \"{example}\" (gold "
               f"{problems[0].gold}).")
    return problems


def plan() -> Plan | None:
    """The run the inputs describe, or None with a note or one sentence saying why not."""
    source = str(st.radio("Problem set", list(SOURCE_LABELS), key=SOURCE_KEY, horizontal=True,
                          format_func=SOURCE_LABELS.__getitem__))
    problems: list[Problem] | None = []  # None: no usable file (yet)
    name, digest, fields = "arith", "", ("", "")
    if source != "arith":
        chosen = choose_problem_file(source)
        problems = None
        if chosen is not None:
            name, data, *field_names = chosen
            fields = (field_names[0], field_names[1])
            problems = read_problems(data, name, fields)
            digest = problems_hash(data, *fields)
    cols = st.columns(6)
    most = len(problems) if problems else MAX_ARITH
    n_problems = cols[0].number_input("Problems", 1, most, min(20, most), key=N_PROBLEMS_KEY,
                                      help="A file's first N; arithmetic: N generated with "
                                           "the seed.")
    n = cols[1].number_input("Chains per problem", 1, 64, 2, key=N_KEY)
    tokens = cols[2].number_input("Max new tokens", 8, 4096, 200, 8, key=TOKENS_KEY)
    temperature = cols[3].number_input("Temperature", 0.0, 2.0, 0.7, 0.05, key=TEMPERATURE_KEY,
                                       help="0 = greedy (then chains of a problem are alike).")
    seed = cols[4].number_input("Seed", 0, 2**31 - 1, 0, key=SEED_KEY,
                                help="Sampling seed (and the arithmetic problems').")
    batch = cols[5].number_input("Batch size", 1, 256, 8, key=BATCH_KEY,
                                 help="Replies sampled together; Stop takes effect after the "
                                      "batch being sampled.")
    labels = str(st.radio("Step labels", list(LABEL_HELP), key=LABELS_KEY, horizontal=True,
                          help="\n\n".join(LABEL_HELP.values())))
    st.caption(LABEL_HELP[labels])
    judge = choose_judge() if labels == "judge" else None
    if problems is None or (labels == "judge" and judge is None):
        return None
    try:
        request = GenerateRequest(
            NO_MODEL, source, name, digest, int(n_problems), int(n), labels, int(tokens),
            float(temperature), int(seed), int(batch), *fields,
            judge=judge[0] if judge else None)
    except ValueError as error:
        st.error(str(error))
        return None
    return Plan(request, problems, judge[1] if judge else None)


__all__ = ["Plan", "plan", "upload_limit_mb"]
