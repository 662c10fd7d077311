"""Read chains: every label checked against an independent reading of the chain (its arithmetic
recomputed, its answer read by the strict reader, the paper's prefix convention applied to its
step labels), the rule labeller as a second opinion, the split and the command."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from core.cli.main import main
from core.data.answers import answers_match, read_answer
from core.data.arith import generate_problems, label_steps
from core.data.prefix_labels import derive_prefix_labels
from core.data.read_chains import (
    ERROR_KINDS,
    ReadChain,
    apply_op,
    chain_record,
    chains_for_problem,
    make_read_chains,
)
from core.data.traces import read_traces, trace_from_dict

CALC = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
PROBLEMS = generate_problems(150, seed=2, min_ops=2, max_ops=4, max_number=20)
CHAINS = [chain for p in PROBLEMS for chain in chains_for_problem(p, seed=2)]


def paper_prefix_labels(step_labels: tuple[int, ...], is_correct: bool) -> list[int]:
    """The paper's convention from the step labels: 1 from the first broken step on; for a
    chain that ends right, 0 again from the step after its last broken step."""
    out, seen = [], False
    for label in step_labels:
        seen = seen or label == 1
        out.append(int(seen))
    if is_correct and 1 in step_labels:
        last = max(i for i, label in enumerate(step_labels) if label == 1)
        out = [v if i <= last else 0 for i, v in enumerate(out)]
    return out


def test_two_chains_per_problem_one_right_one_wrong() -> None:
    assert len(CHAINS) == 2 * len(PROBLEMS)
    for right, wrong in zip(CHAINS[::2], CHAINS[1::2], strict=True):
        assert right.problem is wrong.problem
        assert right.is_correct and not wrong.is_correct
        assert right.kind in ("clean", "corrected") and wrong.kind == "carried"
    kinds = Counter(c.kind for c in CHAINS)
    assert 0.35 < kinds["corrected"] / kinds["carried"] < 0.65  # recoveries exist, about half
    assert set(Counter(c.error for c in CHAINS if c.error)) == set(ERROR_KINDS)


@pytest.mark.parametrize("chain", CHAINS[:120], ids=lambda c: f"{c.problem.problem_id}-{c.kind}")
def test_labels_follow_from_the_text(chain: ReadChain) -> None:
    *lines, answer_line = chain.steps
    # the answer line is the strict reader's answer, and is_correct is its match with the gold
    answer = read_answer("\n".join(chain.steps))
    assert answer is not None and answer_line == f"Answer: {answer.text}"
    assert chain.is_correct == answers_match(answer.text, f"{chain.problem.gold:g}")
    # each line is a calculation; recomputed, only a false-result error states a false one
    values = []
    for index, line in enumerate(lines):
        found = CALC.search(line)
        assert found is not None, line
        a, op, b, result = int(found[1]), found[2], int(found[3]), int(found[4])
        true = apply_op(op, a, b) == result
        assert true == (not (index == chain.error_step and chain.error == "false_result"))
        values.append(result)
    assert int(answer.text) == values[-1]  # the answer is the last line's value
    # step labels: 1 on the error line only; prefix labels: the paper's convention
    assert chain.step_labels == tuple(int(i == chain.error_step) for i in range(len(
        chain.steps)))
    assert list(chain.prefix_labels) == paper_prefix_labels(chain.step_labels, chain.is_correct)
    assert list(chain.prefix_labels) == derive_prefix_labels(list(chain.step_labels),
                                                             chain.is_correct, "paper")
    assert chain.prefix_labels[-1] == int(not chain.is_correct)
    if chain.kind == "corrected":  # the correction follows the error and restates it rightly
        assert chain.error_step is not None
        fixed = chain.steps[chain.error_step + 1]
        assert fixed.startswith(("Wait, ", "Let me check: ", "Check: "))
        op, a, b, result = chain.problem.steps[
            sum(1 for line in lines[: chain.error_step] if not line.endswith("."))]
        assert fixed.endswith(f"{int(a)} {op} {int(b)} = {int(result)}.")


def test_the_rule_labeller_agrees_except_on_a_wrong_operation() -> None:
    """A wrong operation with known numbers and true arithmetic is invisible to the rules."""
    for chain in CHAINS:
        rules = tuple(c.label for c in label_steps(chain.problem.numbers, list(chain.steps)))
        if chain.error == "wrong_operation":
            assert rules == (0,) * len(chain.steps)
        else:
            assert rules == chain.step_labels


def test_invented_numbers_are_not_in_the_problem() -> None:
    for chain in CHAINS:
        if chain.error == "invented_number":
            assert chain.error_step is not None
            found = CALC.search(chain.steps[chain.error_step])
            assert found is not None and float(found[3]) not in chain.problem.numbers


def test_chains_are_deterministic_and_records_are_valid_traces() -> None:
    again = [c for p in PROBLEMS[:20] for c in chains_for_problem(p, seed=2)]
    assert [c.steps for c in again] == [c.steps for c in CHAINS[:40]]
    assert [c.steps for p in PROBLEMS[:20] for c in chains_for_problem(p, seed=3)] != \
        [c.steps for c in again]
    record = chain_record(CHAINS[1], 1)
    trace = trace_from_dict(record)
    assert trace.response == "\n".join(CHAINS[1].steps) and trace.is_correct is False
    assert [s.prefix_label for s in trace.steps] == list(CHAINS[1].prefix_labels)
    assert record["answered"] is True and record["construction"]["kind"] == "carried"


def test_make_read_chains_splits_by_problem(tmp_path, capsys) -> None:
    out = tmp_path / "read.jsonl"
    assert main(["make-read-chains", "--out", str(out), "--problems", "40",
                 "--test-share", "0.25"]) == 0
    assert "80 read chains of 40 problems" in capsys.readouterr().out
    train = read_traces(tmp_path / "read_train.jsonl", strict=True).traces
    test = read_traces(tmp_path / "read_test.jsonl", strict=True).traces
    assert len(test) == 20 and len(train) == 60
    assert {t.problem_id for t in train}.isdisjoint({t.problem_id for t in test})
    meta = json.loads((tmp_path / "read_test.meta.json").read_text())
    assert meta["n_chains"] == 20 and meta["n_right"] == 10
    assert meta["regenerate"].startswith(f"telltale make-read-chains --out {out} --problems 40")
    before = (tmp_path / "read_test.jsonl").read_bytes()
    make_read_chains(out, n_problems=40, test_share=0.25)
    assert (tmp_path / "read_test.jsonl").read_bytes() == before  # same arguments, same file
    with pytest.raises(ValueError, match="test share"):
        make_read_chains(out, test_share=1.0)


def test_a_check_line_and_the_length_say_nothing_about_the_outcome() -> None:
    """As many right as wrong chains hold a check line ("Wait, ...", "Check: ..."), and their
    lengths match; measured over many problems (the expected shares are equal: 3/4)."""
    problems = generate_problems(2000, seed=5, min_ops=2, max_ops=4, max_number=20)
    chains = [c for p in problems for c in chains_for_problem(p, seed=5)]
    right = [c for c in chains if c.is_correct]
    wrong = [c for c in chains if not c.is_correct]

    def share_with_check(group: list[ReadChain]) -> float:
        return sum(any(s.startswith(("Wait", "Let me", "Check")) for s in c.steps)
                   for c in group) / len(group)

    assert share_with_check(right) == pytest.approx(0.75, abs=0.03)
    assert share_with_check(wrong) == pytest.approx(0.75, abs=0.03)
    mean_length = [sum(len(c.steps) for c in g) / len(g) for g in (right, wrong)]
    assert mean_length[0] == pytest.approx(mean_length[1], abs=0.1)
