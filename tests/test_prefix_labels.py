"""Prefix labels in the paper's convention and in "any-so-far": hand cases and the properties
each convention promises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.data.prefix_labels import derive_prefix_labels


@pytest.mark.parametrize(("steps", "correct", "paper", "any_so_far"), [
    ([0, 1, 0, 0], True, [0, 1, 0, 0], [0, 1, 1, 1]),  # recovered: back to 0 after step 2
    ([0, 1, 0, 1, 0], True, [0, 1, 1, 1, 0], [0, 1, 1, 1, 1]),  # on track after the last error
    ([0, 1, 0, 0], False, [0, 1, 1, 1], [0, 1, 1, 1]),
    ([0, 0, 0], False, [0, 0, 1], [0, 0, 1]),  # wrong without a broken step: onset at the end
    ([0, 0, 0], True, [0, 0, 0], [0, 0, 0]),
    ([0, 0, 1], True, [0, 0, 0], [0, 0, 1]),  # terminal consistency beats the last step label
    ([0, 0, 0], None, [0, 0, None], [0, 0, 0]),
    ([1, None, 0], True, [1, None, 0], [1, 1, 1]),  # a later error may exist: unknown
    ([], False, [], []),
])
def test_by_hand(steps: list[int | None], correct: bool | None, paper: list[int | None],
                 any_so_far: list[int | None]) -> None:
    assert derive_prefix_labels(steps, correct) == paper
    assert derive_prefix_labels(steps, correct, "paper") == paper
    assert derive_prefix_labels(steps, correct, "any-so-far") == any_so_far


def test_unknown_convention() -> None:
    with pytest.raises(ValueError, match="any-so-far"):
        derive_prefix_labels([0], True, "latest")


known = st.lists(st.integers(0, 1), min_size=1, max_size=12)


@given(known, st.booleans())
def test_paper_terminal_consistency_and_recovery(steps: list[int], correct: bool) -> None:
    labels = derive_prefix_labels(steps, correct)
    assert labels[-1] == int(not correct)
    broken = [t for t, label in enumerate(steps) if label == 1]
    for t, label in enumerate(labels[:-1]):
        if correct:  # 1 exactly between the first and the last broken step
            assert label == int(bool(broken) and broken[0] <= t <= broken[-1])
        else:  # 1 from the first broken step on
            assert label == int(bool(broken) and t >= broken[0])


@given(known, st.booleans())
def test_any_so_far_never_returns_to_zero(steps: list[int], correct: bool) -> None:
    labels = derive_prefix_labels(steps, correct, "any-so-far")
    assert all(a <= b for a, b in zip(labels, labels[1:], strict=False))  # type: ignore[operator]
    paper = derive_prefix_labels(steps, correct)
    assert all(p <= a for p, a in zip(paper, labels, strict=True))  # type: ignore[operator]
    if not correct:
        assert paper == labels  # the two agree on every chain that ends wrong


@given(st.lists(st.sampled_from([0, 1, None]), min_size=1, max_size=8),
       st.sampled_from([True, False, None]))
def test_unknowns_are_filled_only_where_every_completion_agrees(
        steps: list[int | None], correct: bool | None) -> None:
    """A derived label is known exactly when every way of filling the unknowns gives it
    (any-so-far is checked with a known outcome and some step label: without one it keeps
    today's rule, which sets the last label from what is known by definition)."""
    import itertools

    holes = [t for t, label in enumerate(steps) if label is None]
    outcomes = [correct] if correct is not None else [True, False]
    conventions = ["paper"] + (["any-so-far"] if len(holes) < len(steps) and correct is not None
                               else [])
    for convention in conventions:
        derived = derive_prefix_labels(steps, correct, convention)
        completions = []
        for fill in itertools.product([0, 1], repeat=len(holes)):
            full = list(steps)
            for t, value in zip(holes, fill, strict=True):
                full[t] = value
            completions += [derive_prefix_labels(full, outcome, convention)
                            for outcome in outcomes]
        for t, label in enumerate(derived):
            values = {c[t] for c in completions}
            if label is not None:
                assert values == {label}
            else:
                assert len(values) == 2
