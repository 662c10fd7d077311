"""Checking an automatic step labeller by hand: draw a random sample of labelled steps into an
audit file, a person fills in `human_label` for each, and the agreement is computed from it.

The audit file is JSONL, one step per line, with what a reader needs to judge the step: the
question, the steps before it, the step, the rule's label and its reason. `human_label` (0, 1)
and an optional `note` are the reader's; a line with `human_label` null is not judged yet.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.data.atomic import atomic_write_text
from core.data.records import FieldError, TraceFileError, read_records
from core.data.stats import wilson_interval
from core.data.traces import Trace


@dataclass(frozen=True)
class AuditItem:
    """One step to judge: where it comes from, its context, the rule's verdict and the reader's."""

    id: str
    trace_id: str
    step_index: int
    question: str
    previous_steps: tuple[str, ...]
    step: str
    rule_label: int
    rule_reason: str
    human_label: int | None = None
    note: str = ""


@dataclass(frozen=True)
class AuditAgreement:
    """How often the rule and the reader agree, over the judged items."""

    n_judged: int
    n_unjudged: int
    n_agree: int
    rate: float
    ci_low: float
    ci_high: float
    kappa: float | None  # Cohen's kappa; None when it is undefined (one class only)
    confusion: dict[str, int]  # "rule1_human0" etc.
    disagreements: tuple[AuditItem, ...]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["disagreements"] = [asdict(item) for item in self.disagreements]
        return out


_QUESTION = re.compile(r"Question:(.*?)(?:\n|$)")


def question_of(prompt: str) -> str:
    """The last "Question: ..." line of a prompt (the few-shot example comes first), else all."""
    found = _QUESTION.findall(prompt)
    return found[-1].strip() if found else prompt.strip()


def sample_audit(traces: Sequence[Trace], n: int, seed: int = 0) -> list[AuditItem]:
    """`n` steps drawn uniformly at random (without replacement) from the labelled steps."""
    if n < 1:
        raise ValueError(f"The audit needs at least one step, got n={n}.")
    pool = [(t, i) for t in traces for i, s in enumerate(t.steps) if s.label is not None]
    if not pool:
        raise ValueError("No step in these traces has a label to check.")
    chosen = random.Random(seed).sample(pool, min(n, len(pool)))
    items = []
    for trace, index in chosen:
        reasons = trace.extra.get("label_reasons")
        reason = reasons[index] if isinstance(reasons, list) and index < len(reasons) else ""
        label = trace.steps[index].label
        assert label is not None
        items.append(AuditItem(
            id=f"{trace.id}#{index}", trace_id=trace.id, step_index=index,
            question=question_of(trace.prompt),
            previous_steps=tuple(s.text for s in trace.steps[:index]),
            step=trace.steps[index].text, rule_label=label, rule_reason=str(reason)))
    return items


def write_audit(items: Sequence[AuditItem], path: str | Path) -> None:
    """Write the audit file atomically, one JSON object per line."""
    atomic_write_text(path, "".join(json.dumps(asdict(item)) + "\n" for item in items))


def _label(obj: dict[str, Any], key: str, allow_null: bool) -> int | None:
    value = obj.get(key)
    if value is None and allow_null:
        return None
    if isinstance(value, bool) or value not in (0, 1):
        raise FieldError(key, f"must be 0 or 1{' or null' if allow_null else ''}, got "
                              f"{json.dumps(value)}")
    return int(value)


def _item(obj: dict[str, Any], default_id: str) -> AuditItem:
    for key in ("trace_id", "question", "step"):
        if not isinstance(obj.get(key), str):
            raise FieldError(key, "missing or not a string")
    index = obj.get("step_index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise FieldError("step_index", f"must be an integer >= 0, got {json.dumps(index)}")
    previous = obj.get("previous_steps", [])
    if not isinstance(previous, list) or not all(isinstance(s, str) for s in previous):
        raise FieldError("previous_steps", "must be a list of strings")
    rule = _label(obj, "rule_label", allow_null=False)
    assert rule is not None
    return AuditItem(
        id=str(obj.get("id") or default_id), trace_id=obj["trace_id"], step_index=index,
        question=obj["question"], previous_steps=tuple(previous), step=obj["step"],
        rule_label=rule, rule_reason=str(obj.get("rule_reason") or ""),
        human_label=_label(obj, "human_label", allow_null=True),
        note=str(obj.get("note") or ""))


def read_audit(path: str | Path) -> list[AuditItem]:
    """Read an audit file; any bad line is an error naming its line and field."""
    items, issues, _ = read_records(Path(path), _item, lambda item: item.id)
    if issues:
        raise TraceFileError(issues)
    return items


def audit_agreement(items: Sequence[AuditItem]) -> AuditAgreement:
    """Agreement rate (Wilson 95% interval), Cohen's kappa and the confusion counts.

    kappa = (p_o - p_e) / (1 - p_e), with p_o the observed agreement and p_e the agreement
    expected from the two raters' label rates alone.
    """
    judged = [item for item in items if item.human_label is not None]
    if not judged:
        raise ValueError("No item has a human_label yet: fill in 0 or 1 for each step first.")
    n = len(judged)
    confusion = {f"rule{r}_human{h}": sum(1 for i in judged if (i.rule_label, i.human_label)
                                          == (r, h)) for r in (0, 1) for h in (0, 1)}
    agree = confusion["rule0_human0"] + confusion["rule1_human1"]
    rule_pos = (confusion["rule1_human0"] + confusion["rule1_human1"]) / n
    human_pos = (confusion["rule0_human1"] + confusion["rule1_human1"]) / n
    expected = rule_pos * human_pos + (1 - rule_pos) * (1 - human_pos)
    kappa = None if expected >= 1.0 else (agree / n - expected) / (1.0 - expected)
    low, high = wilson_interval(agree, n)
    return AuditAgreement(
        n_judged=n, n_unjudged=len(items) - n, n_agree=agree, rate=agree / n, ci_low=low,
        ci_high=high, kappa=kappa, confusion=confusion,
        disagreements=tuple(i for i in judged if i.human_label != i.rule_label))
