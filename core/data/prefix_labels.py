"""Prefix labels from step labels and the final outcome, in one of two conventions.

A prefix label A^prefix_t says whether the chain up to step t is on a path to a wrong final
answer. Where only step labels (A^step_t = 1: step t is broken) and the final correctness are
known, it is derived:

- "paper" (Lu et al. 2026, the default): 1 from the first broken step on; a chain whose final
  answer is right got back on track, so it is 0 again from the step after its last broken step;
  the last label is exactly `not is_correct` (terminal consistency: a wrong or missing answer
  ends at 1, a right one at 0). So recoveries (1 -> 0) exist, which Brake_S, Ling_T and Heal_3
  measure. Per step t < T: before_t AND (after_t OR NOT is_correct), with before_t = "some step
  <= t is broken" and after_t = "some step >= t is broken".
- "any-so-far": 1 from the first broken step on and never back ("some step so far was broken");
  when the answer is wrong the last label is 1. A chain that erred and still ended right stays
  flagged: a different target from the paper's, kept as a named option.

Unknown values (a null step label, an unknown outcome) propagate as three-valued logic: a label
is null exactly when the known labels do not decide it. With no step labels at all only the
last label is known, from the outcome (outcome supervision).
"""

from __future__ import annotations

from collections.abc import Sequence

PREFIX_CONVENTIONS: tuple[str, ...] = ("paper", "any-so-far")
DEFAULT_PREFIX_CONVENTION = "paper"

Maybe = bool | None  # three-valued: True, False, unknown


def _or(a: Maybe, b: Maybe) -> Maybe:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def _and(a: Maybe, b: Maybe) -> Maybe:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _not(a: Maybe) -> Maybe:
    return None if a is None else not a


def _any_broken(labels: Sequence[int | None]) -> Maybe:
    """Some label is 1 (True), all are 0 (False), else unknown."""
    result: Maybe = False
    for label in labels:
        result = _or(result, None if label is None else label == 1)
    return result


def _as_label(value: Maybe) -> int | None:
    return None if value is None else int(value)


def check_convention(convention: str) -> str:
    """The convention, or a ValueError naming the known ones."""
    if convention not in PREFIX_CONVENTIONS:
        raise ValueError(f"Unknown prefix-label convention '{convention}'; choose from "
                         f"{', '.join(PREFIX_CONVENTIONS)}.")
    return convention


def derive_prefix_labels(step_labels: Sequence[int | None], is_correct: bool | None,
                         convention: str = DEFAULT_PREFIX_CONVENTION) -> list[int | None]:
    """The prefix label of every step (see the module docstring); [] for no steps.

    >>> derive_prefix_labels([0, 1, 0, 0], True)            # recovered after step 2
    [0, 1, 0, 0]
    >>> derive_prefix_labels([0, 1, 0, 0], True, "any-so-far")
    [0, 1, 1, 1]
    >>> derive_prefix_labels([0, 0, 0], False)               # wrong without a broken step
    [0, 0, 1]
    """
    check_convention(convention)
    n = len(step_labels)
    if n == 0:
        return []
    wrong = _not(is_correct)
    before = [_any_broken(step_labels[: t + 1]) for t in range(n)]
    if convention == "any-so-far":
        labels = [_as_label(value) for value in before]
        if is_correct is False:
            labels[-1] = 1
        elif is_correct is True and all(label is None for label in step_labels):
            labels[-1] = 0  # outcome supervision: only the last label is known
        return labels
    after = [_any_broken(step_labels[t:]) for t in range(n)]
    labels = [_as_label(_and(before[t], _or(after[t], wrong))) for t in range(n - 1)]
    return labels + [_as_label(wrong)]


def recovered_steps(prefix_labels: Sequence[int | float | None]) -> list[bool]:
    """Which steps are back on track: prefix label 0 after some earlier step with prefix label
    1 (the chain went wrong and recovered). These are the recovered steps R_Score averages over
    (`core.diagnose.metrics.dynamic_metrics`); under the "paper" convention they are the steps
    after the last broken step of a chain that ends right. An unknown label (None, NaN) is never
    recovered, and does not start a broken stretch.

    >>> recovered_steps([0, 1, 0, 0])
    [False, False, True, True]
    """
    seen_broken = False
    out = []
    for label in prefix_labels:
        seen_broken = seen_broken or label == 1
        out.append(seen_broken and label == 0)
    return out
