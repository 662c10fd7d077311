"""Read other datasets' files as Telltale traces: each record is mapped to the native trace
object (see `core.data.traces`) and built by `trace_from_dict`, so every format gets the same
checks.

Formats (`import_traces(format=...)`; "auto" looks at the first JSON object):
- native: Telltale's own JSONL, read by `read_traces` unchanged (sources kept as written).
- chained: CHAINED, the data of Lu et al. 2026 (arXiv 2601.02170). An entry: `id`, `original_id`
  (the source question; several runs share it), `subset`, `model`, `context`, `query`,
  `response`, `steps` [{`step_id`, `text`, `step_hallucination`, `cumulative_hallucination`}],
  `answer`, `ground_truth`, and `is_correct` where the judge's verdict was kept.
  step_hallucination -> label, cumulative_hallucination -> prefix_label; `original_id` ->
  problem_id; prompt = the query, after "Context:" and the context when there is one.
- prm800k: PRM800K (OpenAI). `question.problem`, `question.ground_truth_answer`, `label.steps[]`
  each with `completions[]` ({`text`, `rating` -1/0/1}), `human_completion` and
  `chosen_completion`; `label.finish_reason`. Each step follows the chosen completion; with no
  chosen one it takes the human-written step (phase 1, label 0), else the first completion
  rated -1 (where the labeler stopped) and the chain ends there. Rating -1 -> label 1; 0
  (neutral, no progress) and +1 -> label 0: only an error counts as hallucinated.
  finish_reason "solution" -> is_correct True, "found_error" -> False, others -> null.
- processbench: ProcessBench (Qwen). `id`, `generator`, `problem`, `steps` (strings), `label`
  (index of the first wrong step, -1 for none), `final_answer_correct`. Steps before the first
  wrong step get label 0, that step 1, later steps null: experts marked only the first error,
  so whether a later step is wrong is unknown.
- gsm8k: GSM8K-style solutions. `question`, `answer` (one step per line, then "#### N"),
  optional `id`, `is_correct`, `gold`. Steps = the non-blank lines before "####", with the
  calculator annotations ("<<48/2=24>>") removed; lines after it are ignored. answer = N
  (answered: the "####" line states it);
  gold = `gold` if given, else N unless is_correct is false. Step labels are null.
Every imported (non-native) trace gets `source` = the format name and prefix labels derived
from its step labels and is_correct where it has none (`core.data.prefix_labels`: the paper's
convention, or the one `prefix_labels=` names, which then replaces stored ones too). A
record's top-level keys that the mapping does not use are kept in `Trace.extra` (those whose
names are native fields are dropped).

Files may be JSONL or one JSON array, in every format. Issues name the line (JSONL) or the
record's position in the array, counted from 1 (JSON array), and the field as the dataset
names it, e.g. `label.steps[2].completions[0].rating`.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import IO, Any

from core.data.prefix_labels import check_convention
from core.data.records import FieldError, TraceFileError, TraceIssue, decode_line, read_lines
from core.data.steps import DEFAULT_SEGMENTER, Segmenter
from core.data.traces import _KNOWN_KEYS, Trace, TraceLoad, read_traces, trace_from_dict

FORMATS = ("auto", "native", "chained", "prm800k", "processbench", "gsm8k")

_EXPECTED = {
    "native": "'prompt' with 'steps' or 'response'",
    "chained": "'query' (or 'question') with 'steps' of {text, step_hallucination, "
               "cumulative_hallucination}",
    "prm800k": "'question' {problem, ...} with 'label' {steps, finish_reason}",
    "processbench": "'problem', 'steps' (strings) and 'label' (index of the first wrong step)",
    "gsm8k": "'question' with 'answer' ending in a '#### N' line",
}
_CALCULATOR = re.compile(r"<<[^<>\n]*>>")
_PRM_ANSWER = re.compile(r"^#\s*Answer\s*$", re.MULTILINE)
_PEEK_BYTES = 1 << 16
_BLANK = object()  # a blank JSONL line: counted, not a record

NativeRecord = dict[str, Any]


# --- field readers: each names the dataset's own field path in its error ----------------------


def _json(value: Any) -> str:
    return json.dumps(value, default=repr)[:60]


def _text(value: Any, path: str, *, required: bool = False, numbers: bool = False) -> str | None:
    """A string field; `numbers` also takes integers and numbers (ids, answers) as text."""
    if value is None and not required:
        return None
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    got = "missing" if value is None else type(value).__name__
    raise FieldError(path, f"must be a string, got {got}")


def _required_text(value: Any, path: str) -> str:
    text = _text(value, path, required=True)
    assert text is not None  # _text raises on None when required
    return text


def _step_text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        got = "blank" if isinstance(value, str) else type(value).__name__
        raise FieldError(path, f"must be a non-blank string, got {got}")
    return value


def _flag(value: Any, path: str) -> int | None:
    """A hallucination flag: true/false, 1/0, "true"/"false" (CHAINED's own feature code reads
    both) or null (unknown)."""
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return int(value.strip().lower() == "true")
    raise FieldError(path, f"must be true, false or null, got {_json(value)}")


def _boolean(value: Any, path: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise FieldError(path, f"must be true, false or null, got {_json(value)}")


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        got = "missing" if value is None else type(value).__name__
        raise FieldError(path, f"must be an object, got {got}")
    return value


def _steps_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        got = "missing" if value is None else type(value).__name__
        raise FieldError(path, f"must be a list, got {got}")
    if not value:
        raise FieldError(path, "has no steps")
    return value


def _leftovers(record: Mapping[str, Any], used: set[str]) -> dict[str, Any]:
    """The record's other top-level keys, for `Trace.extra` (native field names dropped)."""
    return {key: value for key, value in record.items()
            if key not in used and key not in _KNOWN_KEYS}


# --- one mapper per format: dataset record -> native trace object -----------------------------


def _from_chained(record: Mapping[str, Any]) -> NativeRecord:
    question_key = "query" if "query" in record else "question"
    question = _required_text(record.get(question_key), question_key)
    context = (_text(record.get("context"), "context") or "").strip()
    prompt = f"Context:\n{context}\n\nQuestion:\n{question}" if context else question
    steps = []
    for index, step in enumerate(_steps_list(record.get("steps"), "steps")):
        path = f"steps[{index}]"
        step = _mapping(step, path)
        steps.append({
            "text": _step_text(step.get("text"), f"{path}.text"),
            "label": _flag(step.get("step_hallucination"), f"{path}.step_hallucination"),
            "prefix_label": _flag(step.get("cumulative_hallucination"),
                                  f"{path}.cumulative_hallucination")})
    used = {"id", "original_id", question_key, "context", "response", "steps", "answer",
            "ground_truth", "is_correct"}
    return {**_leftovers(record, used),
            "id": _text(record.get("id"), "id", numbers=True),
            "problem_id": _text(record.get("original_id"), "original_id", numbers=True),
            "prompt": prompt, "response": _text(record.get("response"), "response"),
            "steps": steps, "answer": _text(record.get("answer"), "answer", numbers=True),
            "gold": _text(record.get("ground_truth"), "ground_truth", numbers=True),
            "is_correct": _boolean(record.get("is_correct"), "is_correct")}


def _rating_label(value: Any, path: str) -> int | None:
    """PRM800K rating -> step label: -1 (an error) -> 1; 0 (neutral) and +1 -> 0; null -> null."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value in (-1, 0, 1):
        return int(value == -1)
    raise FieldError(path, f"must be -1, 0, 1 or null, got {_json(value)}")


def _prm_step(step: Mapping[str, Any], path: str) -> tuple[dict[str, Any] | None, bool]:
    """The followed step of one PRM800K label step and whether the chain goes on after it."""
    completions = step.get("completions") or []
    if not isinstance(completions, list):
        raise FieldError(f"{path}.completions", f"must be a list, got "
                                                f"{type(completions).__name__}")
    chosen = step.get("chosen_completion")
    if chosen is not None:
        if isinstance(chosen, bool) or not isinstance(chosen, int) or \
                not 0 <= chosen < len(completions):
            raise FieldError(f"{path}.chosen_completion", f"must index 'completions' (0.."
                                                          f"{len(completions) - 1}), got "
                                                          f"{_json(chosen)}")
        where = f"{path}.completions[{chosen}]"
        completion = _mapping(completions[chosen], where)
        return {"text": _step_text(completion.get("text"), f"{where}.text"),
                "label": _rating_label(completion.get("rating"), f"{where}.rating")}, True
    human = step.get("human_completion")
    if human is not None:
        human = _mapping(human, f"{path}.human_completion")
        text = _step_text(human.get("text"), f"{path}.human_completion.text")
        return {"text": text, "label": 0}, True  # labelers wrote their own correct step
    for index, completion in enumerate(completions):
        where = f"{path}.completions[{index}]"
        completion = _mapping(completion, where)
        if _rating_label(completion.get("rating"), f"{where}.rating") == 1:
            return {"text": _step_text(completion.get("text"), f"{where}.text"), "label": 1}, \
                False
    return None, False


def _from_prm800k(record: Mapping[str, Any]) -> NativeRecord:
    question = _mapping(record.get("question"), "question")
    label = _mapping(record.get("label"), "label")
    steps: list[dict[str, Any]] = []
    for index, raw in enumerate(_steps_list(label.get("steps"), "label.steps")):
        path = f"label.steps[{index}]"
        step, goes_on = _prm_step(_mapping(raw, path), path)
        if step is not None:
            steps.append(step)
        if not goes_on:
            break
    if not steps:
        raise FieldError("label.steps[0]", "has no chosen, human or -1-rated completion to follow")
    finish = _text(label.get("finish_reason"), "label.finish_reason")
    found = _PRM_ANSWER.search(steps[-1]["text"])  # the final step ends "# Answer\n\nN"
    answer = steps[-1]["text"][found.end():].strip() if found else ""
    return {**_leftovers(record, {"question", "label"}),
            "prompt": _required_text(question.get("problem"), "question.problem"),
            "steps": steps, "answer": answer or None,
            "gold": _text(question.get("ground_truth_answer"), "question.ground_truth_answer",
                          numbers=True),
            "is_correct": {"solution": True, "found_error": False}.get(finish or ""),
            "finish_reason": finish}


def _from_processbench(record: Mapping[str, Any]) -> NativeRecord:
    texts = [_step_text(text, f"steps[{index}]")
             for index, text in enumerate(_steps_list(record.get("steps"), "steps"))]
    first_wrong = record.get("label")
    if isinstance(first_wrong, bool) or not isinstance(first_wrong, int) or \
            not -1 <= first_wrong < len(texts):
        raise FieldError("label", f"must be -1 (no wrong step) or a step index 0.."
                                  f"{len(texts) - 1}, got {_json(first_wrong)}")
    last_known = len(texts) - 1 if first_wrong == -1 else first_wrong
    steps = [{"text": text, "label": None if index > last_known else int(index == first_wrong)}
             for index, text in enumerate(texts)]
    used = {"id", "problem", "steps", "label", "final_answer_correct"}
    return {**_leftovers(record, used),
            "id": _text(record.get("id"), "id", numbers=True),
            "prompt": _required_text(record.get("problem"), "problem"), "steps": steps,
            "is_correct": _boolean(record.get("final_answer_correct"), "final_answer_correct")}


def _from_gsm8k(record: Mapping[str, Any]) -> NativeRecord:
    solution = _required_text(record.get("answer"), "answer")
    lines = solution.split("\n")
    final = next((index for index, line in enumerate(lines)
                  if line.strip().startswith("####")), None)
    if final is None:
        raise FieldError("answer", "has no final '#### N' line")
    answer = lines[final].strip()[4:].strip()
    if not answer:
        raise FieldError("answer", "the '####' line has no answer after it")
    steps = [text for line in lines[:final] if (text := _CALCULATOR.sub("", line).strip())]
    if not steps:
        raise FieldError("answer", "has no solution lines before '#### N'")
    is_correct = _boolean(record.get("is_correct"), "is_correct")
    gold = _text(record.get("gold"), "gold", numbers=True) if "gold" in record else \
        (None if is_correct is False else answer)
    return {**_leftovers(record, {"id", "question", "answer", "is_correct", "gold"}),
            "id": _text(record.get("id"), "id", numbers=True),
            "prompt": _required_text(record.get("question"), "question"),
            "steps": steps, "answer": answer, "answered": True, "gold": gold,
            "is_correct": is_correct}


_MAPPERS: dict[str, Callable[[Mapping[str, Any]], NativeRecord]] = {
    "native": dict, "chained": _from_chained, "prm800k": _from_prm800k,
    "processbench": _from_processbench, "gsm8k": _from_gsm8k}


def detect_format(first_record: Mapping[str, Any]) -> str:
    """The format of a file, from its first record; ValueError naming the keys seen and the
    formats known when the record fits none."""
    keys = set(first_record)
    steps = first_record.get("steps")
    if isinstance(first_record.get("question"), Mapping) and \
            isinstance(first_record.get("label"), Mapping):
        return "prm800k"
    step_objects = [step for step in steps if isinstance(step, Mapping)] \
        if isinstance(steps, list) else []
    if any({"step_hallucination", "cumulative_hallucination"} & set(step)
           for step in step_objects) or ("query" in keys and isinstance(steps, list)):
        return "chained"
    label = first_record.get("label")
    if "problem" in keys and isinstance(steps, list) and isinstance(label, int) and \
            not isinstance(label, bool):
        return "processbench"
    if "prompt" in keys and ("steps" in keys or "response" in keys):
        return "native"
    answer = first_record.get("answer")
    if isinstance(first_record.get("question"), str) and isinstance(answer, str) and \
            "####" in answer:
        return "gsm8k"
    seen = ", ".join(sorted(map(str, keys))[:20]) or "none"
    known = "; ".join(f"{name}: {shape}" for name, shape in _EXPECTED.items())
    raise ValueError(f"Cannot tell the trace format from the first record (its keys: {seen}). "
                     f"Known formats and what they need: {known}. "
                     "Name the format explicitly (the command line's --format).")


# --- reading records: JSONL lines or the items of one JSON array ------------------------------


def _open(source: str | Path | bytes) -> IO[bytes]:
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")


def _is_json_array(source: str | Path | bytes) -> bool:
    """True when the first character that is not a byte order mark or whitespace is '['."""
    with _open(source) as stream:
        while chunk := stream.read(_PEEK_BYTES):
            text = chunk.removeprefix(b"\xef\xbb\xbf").lstrip()
            if text:
                return text.startswith(b"[")
    return False


Records = Generator[tuple[int, Any], None, None]


def _jsonl_records(source: str | Path | bytes, max_line_bytes: int) -> Records:
    """(line number, decoded JSON, a FieldError, or _BLANK) for each line."""
    with _open(source) as stream:
        for number, raw in enumerate(read_lines(stream, max_line_bytes), start=1):
            if raw is not None and not raw.strip():
                yield number, _BLANK
                continue
            try:
                yield number, decode_line(raw, number, max_line_bytes)
            except FieldError as error:
                yield number, error


def _array_records(source: str | Path | bytes) -> Records:
    """(position from 1, item) for each item of a JSON array; one FieldError (at the line of
    the fault) when the file is not valid JSON."""
    with _open(source) as stream:
        data = stream.read()
    try:
        items = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        yield line, FieldError("", f"not valid UTF-8 (0x{data[error.start]:02x}); the JSON array "
                                   "was not read")
        return
    except json.JSONDecodeError as error:
        yield error.lineno, FieldError("", f"invalid JSON at line {error.lineno}, column "
                                           f"{error.colno}: {error.msg}; the JSON array was not "
                                           "read")
        return
    except (ValueError, RecursionError) as error:
        yield 1, FieldError("", f"invalid JSON: {error}; the JSON array was not read")
        return
    yield from enumerate(items, start=1)


def _to_trace(record: Mapping[str, Any], format: str, segmenter: Segmenter,
              default_id: str, prefix_labels: str | None) -> Trace:
    native = _MAPPERS[format](record)
    if format != "native":
        native["source"] = format
    return trace_from_dict(native, segmenter, default_id=default_id,  # derives prefix labels
                           prefix_labels=prefix_labels)


def import_traces(source: str | Path | bytes, format: str = "auto", *, name: str | None = None,
                  segmenter: Segmenter = DEFAULT_SEGMENTER, strict: bool = False,
                  max_line_bytes: int = 16_000_000, prefix_labels: str | None = None
                  ) -> TraceLoad:
    """Read a trace file of any format in FORMATS (a path, or its bytes, e.g. an upload).

    Like `read_traces`, a bad record never stops the reading: it becomes a TraceIssue naming its
    line (or array position) and field, and strict=True raises TraceFileError instead. With
    format="auto" the first JSON object decides; a shape that fits no format raises ValueError
    (see `detect_format`). Native JSONL goes to `read_traces` as it is. `prefix_labels`: None
    keeps stored prefix labels (missing ones derived the paper's way); "paper" or "any-so-far"
    derives every trace's from its step labels and outcome in that convention.
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown trace format '{format}'; choose from {', '.join(FORMATS)}.")
    if prefix_labels is not None:
        check_convention(prefix_labels)
    if name is None:
        name = "<bytes>" if isinstance(source, bytes) else Path(source).name
    stem = Path(name).stem if name != "<bytes>" else "line"
    is_array = _is_json_array(source)
    records = _array_records(source) if is_array else _jsonl_records(source, max_line_bytes)
    seen: list[tuple[int, Any]] = []  # records read while looking for the first object
    try:
        if format == "auto":
            for number, value in records:
                seen.append((number, value))
                if isinstance(value, dict):
                    format = detect_format(value)
                    break
        if format == "native" and not is_array:
            records.close()
            return read_traces(source, name=name, segmenter=segmenter, strict=strict,
                               max_line_bytes=max_line_bytes, prefix_labels=prefix_labels)
        traces: list[Trace] = []
        issues: list[TraceIssue] = []
        first_number_of: dict[str, int] = {}
        n_lines = 0
        for number, value in itertools.chain(seen, records):
            n_lines = number
            if value is _BLANK:
                continue
            try:
                if isinstance(value, FieldError):
                    raise value
                if not isinstance(value, dict):
                    raise FieldError("", f"expected a JSON object, got {type(value).__name__}")
                trace = _to_trace(value, format, segmenter, f"{stem}-{number}", prefix_labels)
                if trace.id in first_number_of:
                    raise FieldError("id", f"duplicate id '{trace.id}' (first on line "
                                           f"{first_number_of[trace.id]})")
            except FieldError as error:
                issues.append(TraceIssue(name, number, error.field, error.message))
                continue
            first_number_of[trace.id] = number
            traces.append(trace)
    finally:
        records.close()
    if strict and issues:
        raise TraceFileError(issues)
    return TraceLoad(traces, issues, n_lines)
