"""`telltale monitor | backtrack-eval`: the probes watching while the model writes."""

from __future__ import annotations

import argparse
import json
from typing import Any

from core.cli import common
from core.cli.common import model_options, progress_bar


def _monitor_config(args: argparse.Namespace, mode: str | None = None) -> Any:
    """The sampling settings of `monitor` / `backtrack-eval`; `mode` overrides --mode."""
    from core.diagnose.monitor import MonitorConfig

    return MonitorConfig(mode=mode or args.mode, threshold=args.threshold,
                         max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_p=args.top_p, seed=args.seed, retries=args.retries,
                         max_backtracks=args.max_backtracks,
                         retry_temperature_step=args.retry_temperature_step)


def _step_line(step: Any) -> str:
    mark = "ALARM" if step.alarm else "     "
    kept = "" if step.kept else "  (discarded)"
    c_step = "  -  " if step.step_score is None else f"{step.step_score:.2f}"
    return f"[{step.index:>2}] step {c_step} prefix {step.prefix_score:.2f} {mark} " \
           f"{step.text}{kept}"


def cmd_monitor(args: argparse.Namespace) -> int:
    from core.diagnose.monitor import DoneEvent, StepEvent, monitor_events
    from core.diagnose.probes import load_probe

    bundle = load_probe(args.probe)
    loaded = common.load(args)
    config = _monitor_config(args)
    result = None
    for event in monitor_events(loaded, bundle, args.prompt, config):
        if isinstance(event, StepEvent) and not args.json:
            print(_step_line(event.step), flush=True)
        elif isinstance(event, DoneEvent):
            result = event.result
    assert result is not None
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        ending = "stopped at the alarm" if result.stopped_by_alarm else "finished"
        print(f"{ending}: {len(result.steps)} steps, {result.alarms} alarms, "
              f"{len(result.discarded)} discarded, {result.tokens_generated} tokens kept, "
              f"{result.tokens_processed} processed (threshold {result.threshold:.3f}).")
    return 0


def cmd_backtrack_eval(args: argparse.Namespace) -> int:
    from core.data.atomic import atomic_write_text
    from core.diagnose.backtrack_eval import BacktrackEvalConfig, backtrack_eval
    from core.diagnose.probes import load_probe

    bundle = load_probe(args.probe)
    loaded = common.load(args)
    config = BacktrackEvalConfig(n_problems=args.problems, problem_seed=args.problem_seed,
                                 monitor=_monitor_config(args, mode="watch"))
    with progress_bar("backtrack-eval", unit="problem") as update:
        table, summary = backtrack_eval(loaded, bundle, config, progress=update)
    if args.out:
        atomic_write_text(args.out, table.to_csv(index=False))
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{summary['n_problems']} held-out problems (seed {args.problem_seed})")
    for arm, row in summary["arms"].items():
        lo, hi = row["accuracy_ci"]
        tlo, thi = row["tokens_ci"]
        print(f"{arm:<10} accuracy {row['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]  tokens "
              f"{row['tokens_mean']:.1f} [{tlo:.1f}, {thi:.1f}]  resampled steps "
              f"{row['resampled_steps']}")
    return 0


def _sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probe", required=True, help="probe file (NAME or NAME.safetensors)")
    p.add_argument("--threshold", type=float, default=None,
                   help="alarm threshold (default: the probe's calibrated one)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retries", type=int, default=3, help="backtracking: retries per step")
    p.add_argument("--max-backtracks", type=int, default=8, help="backtracking: per chain")
    p.add_argument("--retry-temperature-step", type=float, default=0.0,
                   help="backtracking: temperature added on each retry")
    p.add_argument("--json", action="store_true")


def register(sub: Any) -> None:
    p = sub.add_parser("monitor", help="generate with the probes watching, step by step")
    model_options(p)
    p.add_argument("--prompt", required=True, help="the user's question")
    p.add_argument("--mode", default="watch", choices=["watch", "stop", "backtrack"])
    _sampling(p)
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("backtrack-eval", help="accuracy and tokens: plain vs backtracking vs "
                       "random resampling, on held-out arithmetic problems")
    model_options(p)
    p.add_argument("--problems", type=int, default=30)
    p.add_argument("--problem-seed", type=int, default=1000)
    p.add_argument("--out", default=None, help="per-problem CSV")
    _sampling(p)
    p.set_defaults(func=cmd_backtrack_eval)

