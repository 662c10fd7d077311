"""`backtrack_eval` and its arithmetic: the exact McNemar test against hand values and scipy,
fix and harm counting, budgets matched in expectation (randomised rounding), best-of-N
choices, the summary; and runs on the tiny character model of tests/test_monitor.py: the arms
are paired (identical replies until a method intervenes), best-of-N and the random control
spend backtracking's tokens, and an interrupted run resumes from its journal to the same
table."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from core.data.answers import AnswerFormat
from core.data.journal import JournalMismatch
from core.diagnose.backtrack_eval import (
    ARMS,
    BacktrackEvalConfig,
    backtrack_eval,
    held_out_problems,
)
from core.diagnose.backtrack_stats import (
    choose_by_majority,
    choose_by_prefix,
    mcnemar_exact,
    paired_counts,
    plan_resamples,
    summarise,
    take_within_budget,
)
from core.diagnose.monitor import MonitorConfig
from tests.test_monitor import bundle
from tests.test_monitor import loaded as loaded  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---------------------------------------------------------------------------- pure functions


def test_mcnemar_exact_matches_hand_values_and_scipy() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 0.0386
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(0, 5) == mcnemar_exact(5, 0)
    assert mcnemar_exact(3, 3) == 1.0  # capped
    assert mcnemar_exact(1, 0) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)
    stats = pytest.importorskip("scipy.stats")
    for fix, harm in [(10, 2), (7, 3), (0, 9), (40, 25), (150, 170), (1, 30)]:
        expected = stats.binomtest(fix, fix + harm, 0.5).pvalue
        assert mcnemar_exact(fix, harm) == pytest.approx(expected, rel=1e-9)


def test_fixes_and_harms_are_counted_per_problem() -> None:
    plain = [True, True, False, False, True, False]
    method = [True, False, True, False, False, True]
    assert paired_counts(plain, method) == (2, 2)  # fixes: problems 2, 5; harms: 1, 4
    assert paired_counts(plain, plain) == (0, 0)
    with pytest.raises(ValueError):
        paired_counts(plain, method[:3])


def test_budgets_are_matched_in_expectation() -> None:
    # 80 + 70 fit a budget of 200; 90 more would overshoot: taken with probability 50 / 90
    assert take_within_budget([80, 70, 90], 200, 0.5) == 3
    assert take_within_budget([80, 70, 90], 200, 0.6) == 2
    assert take_within_budget([80, 70], 500, 0.9) == 2  # all fit
    assert take_within_budget([120, 70], 100, 0.0) == 1  # the first reply always
    assert take_within_budget([], 100, 0.0) == 0
    draws = np.linspace(0, 1, 10_000, endpoint=False)
    spent = [sum([80, 70, 90][:take_within_budget([80, 70, 90], 200, d)]) for d in draws]
    assert np.mean(spent) == pytest.approx(200, abs=0.1)

    costs = [5, 12, 7, 20, 9]
    assert plan_resamples(costs, 0, 3, seed=1) == ()
    totals = []
    for seed in range(3000):
        slots = plan_resamples(costs, 31, 2, seed)
        assert list(slots) == sorted(slots) and all(slots.count(s) <= 2 for s in slots)
        totals.append(sum(costs[s] for s in slots))
    assert np.mean(totals) == pytest.approx(31, rel=0.03)  # the budget, in expectation
    assert plan_resamples(costs, 31, 2, 7) == plan_resamples(costs, 31, 2, 7)
    assert len(plan_resamples(costs, 10_000, 2, 0)) == 10  # every slot: 5 steps x 2 retries


def test_best_of_n_choices() -> None:
    assert choose_by_prefix([0.8, 0.3, 0.3, None]) == 1  # lowest, the earliest of equals
    assert choose_by_prefix([None, 0.9]) == 1 and choose_by_prefix([None, None]) == 0
    assert choose_by_majority([None, "7", "9", "9", "7"]) == 1  # a tie: the answer stated first
    assert choose_by_majority(["3", "9", "9"]) == 1
    assert choose_by_majority([None, None]) == 0


def table_of(outcomes: dict[str, list[bool]], tokens: dict[str, list[int]]) -> pd.DataFrame:
    rows = []
    for arm, correct in outcomes.items():
        for problem, right in enumerate(correct):
            gold = str(problem + 10)
            rows.append({"problem": problem, "problem_id": f"p{problem}", "arm": arm,
                         "gold": gold, "answer": gold if right else None, "correct": right,
                         "tokens": tokens[arm][problem]})
    return pd.DataFrame(rows)


def test_summary_reports_accuracy_chance_tokens_and_the_paired_test() -> None:
    plain = [True, False, False, True, False, False, True, False]
    method = [True, True, True, False, True, True, True, False]
    table = table_of({"plain": plain, "m": method}, {"plain": [10] * 8, "m": [20, 30] * 4})
    summary = summarise(table, ["plain", "m"], n_shuffles=10)
    assert summary["n_problems"] == 8
    m = summary["arms"]["m"]
    assert m["n_correct"] == 6 and m["accuracy"] == 0.75
    assert (m["fix"], m["harm"]) == (4, 1) and m["fix_rate"] == 0.5 and m["harm_rate"] == 0.125
    assert m["mcnemar_p"] == pytest.approx(mcnemar_exact(4, 1))
    lo, hi = m["accuracy_ci"]
    assert 0 < lo < 0.75 < hi < 1
    assert m["answered"] == 0.75 and m["tokens_per_problem"] == 25
    assert m["chance_accuracy"]["mean"] < 0.2  # every gold differs: a shuffle rarely matches
    assert "fix" not in summary["arms"]["plain"]
    # a problem some arm has not answered yet is left out of every arm
    partial = table[~((table["arm"] == "m") & (table["problem"] == 7))]
    assert summarise(partial, ["plain", "m"])["n_problems"] == 7


# ---------------------------------------------------------------------------- runs


def config(**monitor: object) -> BacktrackEvalConfig:
    settings = {"max_new_tokens": 30, "temperature": 1.0, "threshold": 0.5, "retries": 2,
                "max_backtracks": 3, "answers": AnswerFormat(patterns=("=",)), **monitor}
    return BacktrackEvalConfig(monitor=MonitorConfig(**settings), max_candidates=6)  # type: ignore[arg-type]


def test_without_alarms_every_arm_writes_the_plain_reply(loaded) -> None:
    outcome = backtrack_eval(loaded, bundle(step_bias=-50.0), held_out_problems(2), config())
    table = outcome.table
    assert len(table) == 2 * len(ARMS) and set(table["arm"]) == set(ARMS)
    for _, rows in table.groupby("problem"):
        assert rows["reply"].nunique() == 1 and rows["tokens"].nunique() == 1
        assert (rows["resampled"] == 0).all() and (rows["candidates"] == 1).all()
    for arm in ARMS[1:]:
        entry = outcome.summary["arms"][arm]
        assert entry["fix"] == entry["harm"] == 0 and entry["mcnemar_p"] == 1.0


@pytest.fixture(scope="module")
def run(loaded, tmp_path_factory):
    path = tmp_path_factory.mktemp("bt") / "run.journal.jsonl"
    outcome = backtrack_eval(loaded, bundle(seed=1), held_out_problems(3), config(),
                             journal=path, problem_source={"kind": "arith", "seed": 1000})
    return outcome, path


def test_controls_spend_backtrackings_tokens(run) -> None:
    outcome, path = run
    entries = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    by = {(e["problem"], e["arm"]): e for e in entries}
    assert sorted(by) == [(p, a) for p in range(3)
                          for a in ("backtrack", "best_of_n", "plain", "random")]
    assert any(by[(p, "backtrack")]["resampled"] for p in range(3)), "some alarm fired"
    for problem in range(3):
        plain, backtrack = by[(problem, "plain")], by[(problem, "backtrack")]
        budget = backtrack["tokens"]
        # the random control: the planned slots spend backtracking's extra tokens (as costed
        # by the plain reply), the last slot being the one rounded in
        planned = by[(problem, "random")]["planned"]
        extra = max(0, budget - plain["tokens"])
        cost = [plain["step_costs"][s] for s in planned]
        assert sum(cost) <= extra or sum(cost) - max(cost) <= extra
        assert by[(problem, "random")]["resampled"] == len(planned)
        # best-of-N: the plain reply first, then replies while they fit the budget, the last
        # possibly rounded in; it sampled at least as many as it used
        best = by[(problem, "best_of_n")]
        used = [plain["tokens"], *(c["tokens"] for c in best["candidates"])]
        assert best["budget"] == budget and best["sampled"] >= len(best["candidates"])
        assert sum(used[:-1]) <= budget or len(used) == 1
        rows = outcome.table[outcome.table["problem"] == problem].set_index("arm")
        assert rows.loc["best_of_n_prefix", "tokens"] == rows.loc["best_of_n_majority",
                                                                  "tokens"] == sum(used)
        assert rows.loc["backtrack", "tokens"] == budget


def test_the_table_and_summary_agree(run) -> None:
    outcome, _ = run
    table, summary = outcome.table, outcome.summary
    plain = table[table["arm"] == "plain"].set_index("problem")["correct"]
    for arm in ARMS[1:]:
        method = table[table["arm"] == arm].set_index("problem")["correct"]
        fix, harm = paired_counts(plain.tolist(), method.tolist())
        entry = summary["arms"][arm]
        assert (entry["fix"], entry["harm"]) == (fix, harm)
        assert entry["tokens_per_problem"] == pytest.approx(
            table[table["arm"] == arm]["tokens"].mean())
    answered = table[table["answered"]]
    assert (answered["answer"].notna()).all() and summary["settings"]["trigger"] == "step"
    assert not table["correct"][~table["answered"]].any()  # unanswered is never right


def test_an_interrupted_run_resumes_from_its_journal(loaded, run, tmp_path) -> None:
    full, _ = run
    path = tmp_path / "resume.journal.jsonl"

    class Interrupted(Exception):
        pass

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Interrupted

    args = (loaded, bundle(seed=1), held_out_problems(3), config())
    with pytest.raises(Interrupted):
        backtrack_eval(*args, journal=path, problem_source={"kind": "arith", "seed": 1000},
                       progress=stop_after_two)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 2 * 4  # the header and four entries for each finished problem
    with path.open("a") as handle:
        handle.write('{"problem": 2, "arm": "pla')  # a line cut off by the interruption
    resumed = backtrack_eval(*args, journal=path, problem_source={"kind": "arith",
                                                                  "seed": 1000})
    pd.testing.assert_frame_equal(resumed.table, full.table)
    assert len(path.read_text().splitlines()) == 1 + 3 * 4
    with pytest.raises(JournalMismatch):  # other settings never mix into this journal
        backtrack_eval(loaded, bundle(seed=1), held_out_problems(3), config(retries=1),
                       journal=path, problem_source={"kind": "arith", "seed": 1000})


def test_backtrack_eval_command_writes_the_table_json_and_journal(loaded, tmp_path, monkeypatch,
                                                                  capsys) -> None:
    from core.cli import main as cli
    from core.diagnose.probes import save_probe

    save_probe(tmp_path / "p", bundle(seed=1))
    monkeypatch.setattr("core.cli.common.load", lambda args: loaded)
    command = ["backtrack-eval", "--probe", str(tmp_path / "p"), "--problems", "2",
               "--max-new-tokens", "24", "--temperature", "1", "--answer-pattern", "=",
               "--out", str(tmp_path / "rows.csv")]
    assert cli.main([*command, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_problems"] == 2 and list(summary["arms"]) == list(ARMS)
    for arm, entry in summary["arms"].items():
        keys = {"accuracy", "accuracy_ci", "answered", "chance_accuracy", "tokens_per_problem",
                "tokens_ci"}
        if arm != "plain":
            keys |= {"fix", "harm", "fix_rate", "harm_rate", "mcnemar_p"}
        assert keys <= set(entry)
        assert not any(isinstance(v, float) and math.isnan(v) for v in entry.values())
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert len(rows) == 2 * len(ARMS) and list(rows["arm"][:5]) == list(ARMS)
    assert summary["journal"] == str(tmp_path / "rows.journal.jsonl")
    assert (tmp_path / "rows.journal.jsonl").exists()
    assert cli.main(command) == 0  # again, from the journal: the same numbers, as a table
    out = capsys.readouterr().out
    assert "2 held-out problems; alarm c_step > 0.500" in out and "best_of_n_majority" in out
