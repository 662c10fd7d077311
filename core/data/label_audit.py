"""Checking machine labels by hand: draw a random sample of labelled items into an audit file,
a person fills in their own verdicts, and the agreement is computed field by field.

An audit file is JSONL, one item per line, in one generic shape that every kind shares:

    {"id": "arith-s1-00003-c0#2", "kind": "steps", "source": "arith-s1-00003-c0",
     "context": "Question: ...\\nSteps before:\\n1. 4 + 3 = 7", "text": "7 * 2 = 15",
     "machine": {"label": 1}, "human": {"label": null},
     "info": {"step_index": 1, "reason": "false calculation: ..."}, "note": ""}

- `kind` says what is judged; `context` is what a reader needs to judge `text`;
- `machine` holds the verdicts being checked, by field name; `human` the reader's, with the
  same names (null until judged); `info` anything else (the rule's reason, the gold);
- an item counts as judged once any human verdict is filled in (so a field may be judged
  null, e.g. no answer stated); `note` is the reader's comment.

Kinds made here: "steps" (a step label: 1 = the step is wrong), "judge" (a judge's step label
and prefix label), "answers" (does the reply state a final answer, which one, and is it right).
Another kind is one more sampler that builds `AuditItem`s (e.g. grader verdicts on the replies
of an introspection sweep); reading, writing and scoring work on any kind. Audit files of the
first format (`rule_label`/`human_label` per step) are still read, as kind "steps".
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.data.answers import answers_match, format_number, normalise_answer, parse_number
from core.data.atomic import atomic_write_text
from core.data.records import FieldError, TraceFileError, read_records
from core.data.stats import wilson_interval
from core.data.traces import Trace

AUDIT_KINDS = ("steps", "judge", "answers")
INSTRUCTIONS = {
    "steps": "set human.label to 1 when the step is wrong (a false calculation, or a number "
             "that is neither in the question nor an earlier step's result), else 0",
    "judge": "set human.label to 1 when the step is wrong, and human.prefix_label to 1 when the "
             "reasoning up to this step is on a path to a wrong answer (an uncorrected mistake "
             "so far; at the last step: the final answer is wrong or missing), else 0",
    "answers": "set human.answered (does the reply state a final answer explicitly: true or "
               "false), human.answer (the answer it states, or null) and human.is_correct (is "
               "that answer right: work the problem; info.gold is the file's gold)",
}


@dataclass(frozen=True)
class AuditItem:
    """One item to judge (see the module docstring for the fields)."""

    id: str
    kind: str
    source: str
    context: str
    text: str
    machine: Mapping[str, Any]
    human: Mapping[str, Any]
    info: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def judged(self) -> bool:
        return any(value is not None for value in self.human.values())

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "source": self.source,
                "context": self.context, "text": self.text, "machine": dict(self.machine),
                "human": dict(self.human), "info": dict(self.info), "note": self.note}


_QUESTION = re.compile(r"Question:(.*?)(?:\n|$)")


def question_of(prompt: str) -> str:
    """The last "Question: ..." line of a prompt (the few-shot example comes first), else all."""
    found = _QUESTION.findall(prompt)
    return found[-1].strip() if found else prompt.strip()


def _step_context(question: str, previous: Sequence[str]) -> str:
    before = "\n".join(f"{k}. {text}" for k, text in enumerate(previous, start=1))
    return f"Question: {question}\nSteps before:\n{before or '(none: this is the first step)'}"


def _draw(pool: list[Any], n: int, seed: int, what: str) -> list[Any]:
    if n < 1:
        raise ValueError(f"The audit needs at least one item, got n={n}.")
    if not pool:
        raise ValueError(f"No {what} in these traces to check.")
    return random.Random(seed).sample(pool, min(n, len(pool)))


def sample_steps(traces: Sequence[Trace], n: int, seed: int = 0,
                 kind: str = "steps") -> list[AuditItem]:
    """`n` labelled steps drawn uniformly without replacement. kind "steps": the step label;
    kind "judge": the step and the prefix label (steps whose judge gave both)."""
    fields = ("label",) if kind == "steps" else ("label", "prefix_label")
    if kind not in ("steps", "judge"):
        raise ValueError(f"sample_steps makes kinds 'steps' and 'judge', not {kind!r}.")
    pool = [(t, i) for t in traces for i, s in enumerate(t.steps)
            if all(getattr(s, name) is not None for name in fields)
            and (kind == "steps" or str(t.extra.get("step_labeller", "")).startswith("judge"))]
    items = []
    for trace, index in _draw(pool, n, seed, "labelled step" if kind == "steps"
                              else "judge-labelled step"):
        reasons = trace.extra.get("label_reasons")
        reason = reasons[index] if isinstance(reasons, list) and index < len(reasons) else ""
        step = trace.steps[index]
        items.append(AuditItem(
            id=f"{trace.id}#{index}", kind=kind, source=trace.id,
            context=_step_context(question_of(trace.prompt),
                                  [s.text for s in trace.steps[:index]]),
            text=step.text, machine={name: getattr(step, name) for name in fields},
            human=dict.fromkeys(fields), info={
                "step_index": index, "n_steps": trace.n_steps, "reason": str(reason),
                "labeller": trace.extra.get("step_labeller"), "is_correct": trace.is_correct}))
    return items


def sample_answers(traces: Sequence[Trace], n: int, seed: int = 0) -> list[AuditItem]:
    """`n` replies (traces with a gold) drawn uniformly without replacement, with the answer
    the strict reader found, whether it found one, and whether it matched the gold."""
    pool = [t for t in traces if t.gold is not None]
    return [AuditItem(
        id=trace.id, kind="answers", source=trace.id,
        context=f"Question: {question_of(trace.prompt)}", text=trace.response,
        machine={"answered": trace.answered if trace.answered is not None
                 else trace.answer is not None,
                 "answer": None if trace.answered is False else trace.answer,
                 "is_correct": trace.is_correct},
        human={"answered": None, "answer": None, "is_correct": None},
        info={"gold": trace.gold}) for trace in _draw(pool, n, seed, "reply with a gold")]


SAMPLERS: dict[str, Callable[[Sequence[Trace], int, int], list[AuditItem]]] = {
    "steps": lambda traces, n, seed: sample_steps(traces, n, seed, "steps"),
    "judge": lambda traces, n, seed: sample_steps(traces, n, seed, "judge"),
    "answers": sample_answers,
}


def sample_audit(traces: Sequence[Trace], n: int, seed: int = 0,
                 kind: str = "steps") -> list[AuditItem]:
    """`n` items of `kind` (AUDIT_KINDS) drawn at random from the traces."""
    if kind not in SAMPLERS:
        raise ValueError(f"Unknown audit kind '{kind}'; choose from {', '.join(SAMPLERS)}.")
    return SAMPLERS[kind](traces, n, seed)


def write_audit(items: Sequence[AuditItem], path: str | Path) -> None:
    """Write the audit file atomically, one JSON object per line."""
    atomic_write_text(path, "".join(json.dumps(item.as_dict(), ensure_ascii=False) + "\n"
                                    for item in items))


# ---------------------------------------------------------------------------- reading


def _mapping(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise FieldError(key, "must be an object of verdicts by field name")
    return dict(value)


def _legacy_item(obj: Mapping[str, Any], default_id: str) -> AuditItem:
    """An item of the first format: one step with rule_label and human_label."""
    for key in ("trace_id", "question", "step"):
        if not isinstance(obj.get(key), str):
            raise FieldError(key, "missing or not a string")
    index = obj.get("step_index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise FieldError("step_index", f"must be an integer >= 0, got {json.dumps(index)}")
    previous = obj.get("previous_steps", [])
    if not isinstance(previous, list) or not all(isinstance(s, str) for s in previous):
        raise FieldError("previous_steps", "must be a list of strings")
    for key in ("rule_label", "human_label"):
        value = obj.get(key)
        if (value is not None or key == "rule_label") and (isinstance(value, bool)
                                                           or value not in (0, 1)):
            raise FieldError(key, f"must be 0 or 1, got {json.dumps(value)}")
    return AuditItem(
        id=str(obj.get("id") or default_id), kind="steps", source=obj["trace_id"],
        context=_step_context(obj["question"], previous), text=obj["step"],
        machine={"label": obj["rule_label"]}, human={"label": obj.get("human_label")},
        info={"step_index": index, "reason": str(obj.get("rule_reason") or "")},
        note=str(obj.get("note") or ""))


def _item(obj: Mapping[str, Any], default_id: str) -> AuditItem:
    if "rule_label" in obj and "kind" not in obj:
        return _legacy_item(obj, default_id)
    for key in ("kind", "source", "context", "text"):
        if not isinstance(obj.get(key), str):
            raise FieldError(key, "missing or not a string")
    machine, human = _mapping(obj, "machine"), _mapping(obj, "human")
    if not machine:
        raise FieldError("machine", "has no verdict to check")
    unknown = sorted(set(human) - set(machine))
    if unknown:
        raise FieldError("human", f"has fields the machine gave no verdict on: {unknown}")
    return AuditItem(
        id=str(obj.get("id") or default_id), kind=obj["kind"], source=obj["source"],
        context=obj["context"], text=obj["text"], machine=machine,
        human={name: human.get(name) for name in machine}, info=_mapping(obj, "info"),
        note=str(obj.get("note") or ""))


def read_audit(path: str | Path) -> list[AuditItem]:
    """Read an audit file (either format); any bad line is an error naming its line and
    field."""
    items, issues, _ = read_records(Path(path), _item, lambda item: item.id)
    if issues:
        raise TraceFileError(issues)
    return items


# ---------------------------------------------------------------------------- scoring


def _category(name: str, value: Any) -> Any:
    """The value two verdicts are compared by: booleans as 0/1, answers in a canonical form."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if name == "answer":
        number = parse_number(str(value))
        return format_number(number) if number is not None else normalise_answer(str(value))
    return value


def _same(name: str, machine: Any, human: Any) -> bool:
    if name == "answer" and machine is not None and human is not None:
        return answers_match(str(machine), str(human))
    return _category(name, machine) == _category(name, human)


@dataclass(frozen=True)
class FieldAgreement:
    """How often machine and reader agree on one field, over the judged items."""

    field: str
    n_judged: int
    n_agree: int
    rate: float
    ci_low: float
    ci_high: float
    kappa: float | None  # Cohen's kappa; None when undefined (one category only)
    confusion: dict[str, int]  # "machine1_human0" etc., for 0/1 fields
    disagreements: tuple[AuditItem, ...]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["disagreements"] = [item.as_dict() for item in self.disagreements]
        return out


@dataclass(frozen=True)
class AuditScore:
    kinds: tuple[str, ...]
    n_items: int
    n_judged: int
    fields: tuple[FieldAgreement, ...]

    @property
    def n_unjudged(self) -> int:
        return self.n_items - self.n_judged

    def field(self, name: str) -> FieldAgreement:
        return next(f for f in self.fields if f.field == name)

    def as_dict(self) -> dict[str, Any]:
        return {"kinds": list(self.kinds), "n_items": self.n_items, "n_judged": self.n_judged,
                "n_unjudged": self.n_unjudged,
                "fields": {f.field: f.as_dict() for f in self.fields}}


def cohen_kappa(pairs: Sequence[tuple[Any, Any]]) -> float | None:
    """kappa = (p_o - p_e) / (1 - p_e): p_o the observed agreement, p_e the agreement expected
    from the two raters' category rates alone; None when p_e = 1."""
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    return None if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def _field_agreement(name: str, items: Sequence[AuditItem]) -> FieldAgreement:
    judged = [item for item in items if item.judged and name in item.machine]
    n = len(judged)
    agree = [_same(name, i.machine[name], i.human.get(name)) for i in judged]
    # kappa over categories; two answers that match count as one category
    pairs = [(_category(name, i.machine[name]),
              _category(name, i.machine[name]) if same else _category(name, i.human.get(name)))
             for i, same in zip(judged, agree, strict=True)]
    values = {value for pair in pairs for value in pair}
    confusion = {f"machine{m}_human{h}": sum(pair == (m, h) for pair in pairs)
                 for m in (0, 1) for h in (0, 1)} if values <= {0, 1} else {}
    low, high = wilson_interval(sum(agree), n)
    return FieldAgreement(
        field=name, n_judged=n, n_agree=sum(agree), rate=sum(agree) / n, ci_low=low,
        ci_high=high, kappa=cohen_kappa(pairs), confusion=confusion,
        disagreements=tuple(i for i, same in zip(judged, agree, strict=True) if not same))


def score_audit(items: Sequence[AuditItem]) -> AuditScore:
    """Agreement (Wilson 95% interval), Cohen's kappa, the confusion counts of 0/1 fields, and
    every disagreement, for each field the machine gave verdicts on."""
    judged = [item for item in items if item.judged]
    if not judged:
        raise ValueError("No item is judged yet: fill in the human verdicts first.")
    names = list(dict.fromkeys(name for item in judged for name in item.machine))
    return AuditScore(kinds=tuple(dict.fromkeys(item.kind for item in items)),
                      n_items=len(items), n_judged=len(judged),
                      fields=tuple(_field_agreement(name, judged) for name in names))
