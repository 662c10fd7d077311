"""`telltale monitor | backtrack-eval`: the probes watching while the model writes."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from core.cli import common
from core.cli.common import CliError, model_options, progress_bar


def _monitor_config(args: argparse.Namespace, mode: str | None = None) -> Any:
    """The monitor settings of `monitor` / `backtrack-eval`; `mode` overrides --mode."""
    from core.data.answers import DEFAULT_PATTERNS, AnswerFormat
    from core.diagnose.monitor import MonitorConfig

    try:
        answers = AnswerFormat((*DEFAULT_PATTERNS, *args.answer_pattern))
        return MonitorConfig(
            mode=mode or args.mode, trigger=args.trigger, threshold=args.threshold,
            rise_margin=args.rise_margin, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, top_p=args.top_p, seed=args.seed,
            retries=args.retries, max_backtracks=args.max_backtracks,
            retry_temperature_step=args.retry_temperature_step,
            stop_at_answer=not args.no_stop, answers=answers,
            stop_strings=tuple(args.stop_string))
    except ValueError as error:
        raise CliError(str(error)) from None


def _step_line(step: Any) -> str:
    mark = "ALARM" if step.alarm else "     "
    kept = "" if step.kept else "  (discarded)"
    c_step = "  -  " if step.step_score is None else f"{step.step_score:.2f}"
    return f"[{step.index:>2}] step {c_step} prefix {step.prefix_score:.2f} {mark} " \
           f"{step.text}{kept}"


def _rule(result: Any) -> str:
    if result.trigger == "step":
        return f"alarm: c_step > {result.threshold:.3f}"
    return f"alarm: c_prefix rises by more than {result.rise_margin:.3f}"


def cmd_monitor(args: argparse.Namespace) -> int:
    from core.diagnose.monitor import DoneEvent, StepEvent, monitor_events
    from core.diagnose.probes import load_probe

    common.set_threads(args.threads)
    config = _monitor_config(args)
    bundle = load_probe(args.probe)
    loaded = common.load(args)
    result = None
    for event in monitor_events(loaded, bundle, args.prompt, config):
        if isinstance(event, StepEvent) and not args.json:
            print(_step_line(event.step), flush=True)
        elif isinstance(event, DoneEvent):
            result = event.result
    assert result is not None
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    ending = "stopped at the alarm" if result.stopped_by_alarm else f"ended ({result.ended_by})"
    answer = f"answer {result.answer}" if result.answered else "no answer stated"
    print(f"{ending}: {len(result.steps)} steps, {result.alarms} alarms, "
          f"{len(result.discarded)} discarded, {result.tokens_generated} tokens kept, "
          f"{result.tokens_processed} processed ({_rule(result)}); {answer}.")
    return 0


def _problems(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    """The held-out problems and how the journal names them (never by their number)."""
    from core.data.problems import read_problems
    from core.diagnose.backtrack_eval import held_out_problems

    if args.problem_file:
        return (read_problems(args.problem_file, limit=args.problems),
                {"kind": "file", "path": str(Path(args.problem_file).resolve())})
    return (held_out_problems(args.problems, seed=args.problem_seed),
            {"kind": "arith", "seed": args.problem_seed, "min_ops": 2, "max_ops": 4,
             "max_number": 9})


def _print_summary(summary: dict[str, Any]) -> None:
    settings = summary["settings"]
    rule = f"c_step > {settings['threshold']:.3f}" if settings["trigger"] == "step" else \
        f"c_prefix rise > {settings['rise_margin']:.3f}"
    print(f"{summary['n_problems']} held-out problems; alarm {rule}; retries "
          f"{settings['retries']} per step, {settings['max_backtracks']} per reply")
    print(f"{'arm':<19} {'accuracy [95% Wilson]':<24} {'answered':>8} {'chance':>7} "
          f"{'tokens':>7} {'fix':>4} {'harm':>4} {'McNemar p':>9}")
    for arm, row in summary["arms"].items():
        lo, hi = row["accuracy_ci"]
        chance = row["chance_accuracy"]["mean"]
        paired = "" if "fix" not in row else \
            f"{row['fix']:>4} {row['harm']:>4} {row['mcnemar_p']:>9.3f}"
        print(f"{arm:<19} {row['n_correct']:>3} {row['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] "
              f"{row['answered']:>8.3f} {chance:>7.3f} {row['tokens_per_problem']:>7.1f} "
              f"{paired}")


def cmd_backtrack_eval(args: argparse.Namespace) -> int:
    from core.diagnose.backtrack_eval import BacktrackEvalConfig, backtrack_eval
    from core.diagnose.probes import load_probe

    common.set_threads(args.threads)
    if args.problems < 1:
        raise CliError("--problems must be at least 1.")
    journal = args.journal or (f"{Path(args.out).with_suffix('')}.journal.jsonl"
                               if args.out else None)
    config = BacktrackEvalConfig(monitor=_monitor_config(args, mode="watch"),
                                 max_candidates=args.max_candidates,
                                 candidate_batch=args.candidate_batch)
    problems, source = _problems(args)
    bundle = load_probe(args.probe)
    loaded = common.load(args)
    with progress_bar("backtrack-eval", unit="problem") as update:
        outcome = backtrack_eval(loaded, bundle, problems, config, journal=journal,
                                 problem_source=source, progress=update)
    common.write_table(outcome.table, args.out)
    summary = {**outcome.summary, "journal": journal}
    if args.json:
        print(json.dumps(_finite(summary)))
    else:
        _print_summary(summary)
    return 0


def _finite(value: Any) -> Any:
    """JSON without NaN (None instead), recursively."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probe", required=True, help="probe file (NAME or NAME.safetensors)")
    alarm = p.add_argument_group("alarm (an event of the step itself)")
    alarm.add_argument("--trigger", default="step", choices=["step", "prefix-rise"],
                       help="step: the step score c_step over --threshold; prefix-rise: the "
                            "prefix score c_prefix up by more than --rise-margin on the step "
                            "before")
    alarm.add_argument("--threshold", type=float, default=None,
                       help="trigger step: the c_step threshold (default: the probe's "
                            "calibrated step threshold)")
    alarm.add_argument("--rise-margin", type=float, default=0.2,
                       help="trigger prefix-rise: the rise of c_prefix that alarms")
    stop = p.add_argument_group("where a reply ends")
    stop.add_argument("--no-stop", action="store_true",
                      help="do not end a reply after the line of its answer statement")
    stop.add_argument("--answer-pattern", action="append", default=[],
                      help="another regex for what precedes an answer (repeatable)")
    stop.add_argument("--stop-string", action="append", default=[],
                      help="also end a reply once it contains this text (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retries", type=int, default=3, help="backtracking: retries per step")
    p.add_argument("--max-backtracks", type=int, default=8, help="backtracking: per reply")
    p.add_argument("--retry-temperature-step", type=float, default=0.0,
                   help="backtracking: temperature added on each retry")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--json", action="store_true")


def register(sub: Any) -> None:
    p = sub.add_parser("monitor", help="generate with the probes watching, step by step")
    model_options(p)
    p.add_argument("--prompt", required=True, help="the user's question")
    p.add_argument("--mode", default="watch", choices=["watch", "stop", "backtrack"])
    _sampling(p)
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("backtrack-eval", help="plain sampling, backtracking, random-step "
                       "resampling and best-of-N at the same token budget, on held-out "
                       "problems: accuracy, harm and fix rates, McNemar p-values")
    model_options(p)
    p.add_argument("--problems", type=int, default=200, help="number of held-out problems")
    p.add_argument("--problem-seed", type=int, default=1000,
                   help="seed of Telltale's arithmetic problems (the shipped chains use 1)")
    p.add_argument("--problem-file", default=None,
                   help="a problem file (GSM8K's shape and others, see make-traces) instead")
    p.add_argument("--max-candidates", type=int, default=16,
                   help="best-of-N: at most this many replies per problem")
    p.add_argument("--candidate-batch", type=int, default=4,
                   help="best-of-N: replies sampled in one batch")
    p.add_argument("--out", default=None, help="per-problem CSV (one row per problem and arm)")
    p.add_argument("--journal", default=None,
                   help="the run's journal (default: OUT.journal.jsonl beside --out); a rerun "
                        "with the same settings resumes from it")
    _sampling(p)
    p.set_defaults(func=cmd_backtrack_eval, max_new_tokens=96)
