"""`telltale capture | signals | train | evaluate | score | make-read-chains`: the Diagnose layer
on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from core.cli import common
from core.cli.common import CliError, model_options, progress_bar, trace_options


def cmd_capture(args: argparse.Namespace) -> int:
    from core.diagnose.feature_store import CaptureConfig, capture_traces, parse_shard
    from core.runtime.layers import parse_layers
    from core.runtime.pooling import check_poolings

    traces = common.read_traces(args.traces, args.segmenter, args.pattern)
    loaded = common.load(args)
    config = CaptureConfig(
        layers=tuple(parse_layers(args.layers, loaded.n_layers)),
        poolings=check_poolings(args.poolings.split(",")), batch_size=args.batch_size,
        shard=parse_shard(args.shard), max_tokens=args.max_tokens)
    with progress_bar(f"capture {args.shard}") as update:
        summary = capture_traces(loaded, traces, args.out, config, progress=update)
    print(f"Captured {summary.n_steps} steps of {summary.n_chains} chains into {summary.out_dir} "
          f"({summary.chunks_written} chunks written, {summary.chunks_skipped} already there).")
    for reason in summary.skipped_chains[:10]:
        print(f"warning: left out: {reason}", file=sys.stderr)
    return 0


def cmd_signals(args: argparse.Namespace) -> int:
    from core.data.atomic import atomic_write_text
    from core.diagnose.feature_store import signal_table

    traces = common.read_traces(args.traces, args.segmenter, args.pattern)
    loaded = common.load(args)
    with progress_bar("signals") as update:
        table = signal_table(loaded, traces, batch_size=args.batch_size, progress=update)
    atomic_write_text(args.out, table.to_csv(index=False))
    print(f"Wrote {len(table)} step rows to {args.out}.")
    return 0


def _capture(loaded: Any, traces: list, layers: list[int], poolings: tuple[str, ...],
             args: argparse.Namespace) -> Any:
    """Pooled features for the traces: from/into --capture DIR (resumable) or in memory."""
    from core.diagnose.feature_store import (
        CaptureConfig,
        capture_in_memory,
        capture_traces,
        load_capture,
    )

    config = CaptureConfig(layers=tuple(layers), poolings=poolings, batch_size=args.batch_size,
                           max_tokens=args.max_tokens)
    with progress_bar("capture") as update:
        if args.capture:
            capture_traces(loaded, traces, args.capture, config, progress=update)
            return load_capture(args.capture)
        return capture_in_memory(loaded, traces, config, progress=update)


def cmd_train(args: argparse.Namespace) -> int:
    from core.diagnose.probe_training import TrainConfig, train_probes
    from core.diagnose.probes import TrackerConfig, save_probe
    from core.runtime.layers import parse_layers

    traces = common.read_traces(args.traces, args.segmenter, args.pattern, args.format)
    loaded = common.load(args)
    if args.layer is not None and args.sweep:
        raise CliError("Give either --layer L or --sweep, not both.")
    if args.sweep:
        layers = parse_layers(args.sweep_layers, loaded.n_layers)
    else:
        layers = parse_layers(str(args.layer if args.layer is not None else loaded.n_layers // 2),
                              loaded.n_layers)
    config = TrainConfig(step_pooling=args.step_pooling, val_share=args.val_share,
                         seed=args.seed, tracker=TrackerConfig(
                             step_input=args.step_input == "input", seed=args.seed,
                             epochs=args.epochs))
    capture = _capture(loaded, traces, layers, config.poolings, args)
    with progress_bar("train", unit="layer") as update:
        result = train_probes(capture, layers, config, progress=update)
    weights, meta = save_probe(args.out, result.bundle)
    report = result.report.probes
    if len(layers) > 1:
        print(result.sweep.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    text = result.report.baselines.get("text")
    print(f"Layer {result.bundle.meta.layer}: validation step AUROC "
          f"{common.fmt(report.step_auroc)}, "
          f"final-prefix AUROC {common.fmt(report.final_auroc)}"
          + ("" if text is None else f" (text-only classifier: {common.fmt(text.step_auroc)}, "
                                     f"{common.fmt(text.final_auroc)})")
          + f", threshold {result.bundle.meta.threshold:.3f} ({result.n_train_chains} train / "
          f"{result.n_val_chains} validation chains). Saved {weights} and {meta}.")
    for part, fit in result.bundle.meta.fits.items():
        if not fit["converged"]:
            print(f"warning: the {part} fit stopped at its iteration cap ({fit['n_iter']} "
                  f"LBFGS iterations, max |gradient| {fit['grad_max']:.2g}) before converging",
                  file=sys.stderr)
    return 0


def _fmt_ci(interval: list[float] | None) -> str:
    return "n/a" if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _lead(mine: float | None, theirs: float | None) -> str:
    return "n/a" if mine is None or theirs is None else f"{mine - theirs:+.3f}"


def _scored(args: argparse.Namespace) -> tuple[Any, list, list]:
    from core.diagnose.evaluation import score_capture
    from core.diagnose.probes import load_probe

    bundle = load_probe(args.probe)
    traces = common.read_traces(args.traces, args.segmenter, args.pattern, args.format)
    loaded = common.load(args)
    bundle.check_model(args.model, loaded.hidden_size)
    capture = _capture(loaded, traces, [bundle.meta.layer], bundle.poolings, args)
    return bundle, traces, score_capture(bundle, capture)


def print_report(report: Any, layer: int) -> None:
    """The text form of an `EvaluationReport` (what `telltale evaluate` prints without --json)."""
    from core.diagnose.evaluation import BASELINE_LABELS

    counts = report.final_counts
    intervals = report.intervals
    print(f"{report.n_chains} chains, {report.n_steps} steps, layer {layer}, alarm threshold "
          f"{report.threshold:.3f}; final step: {counts.positive} chains gone wrong, "
          f"{counts.negative} sound")
    answers = report.answers
    if answers is not None and answers.n:
        print(f"answers: {answers.n_answered}/{answers.n} stated ({answers.answered_share:.1%}); "
              f"accuracy {answers.accuracy:.1%} ({answers.n_correct} right; unanswered count as "
              f"wrong); chance {answers.chance_mean:.1%} +- {answers.chance_sd:.1%} (the same "
              f"answers against golds shuffled across {answers.n_problems} problems, "
              f"{answers.n_shuffles} shuffles)")
    header = f"{'scores':<27}{'step AUROC':>11}{'step AUPRC':>11}{'prefix AUROC':>13}" \
             f"{'final AUROC':>12}"
    unit = f"{intervals['n_problems']} problems" if intervals else ""
    print(header + (f"  95% intervals (bootstrap over {unit})" if intervals else ""))
    rows = [("probes", report.probes), *((BASELINE_LABELS.get(n, n), r)
                                         for n, r in report.baselines.items())]
    keys = ["probe", *report.baselines]
    for (label, row), key in zip(rows, keys, strict=True):
        line = (f"{label:<27}{common.fmt(row.step_auroc):>11}{common.fmt(row.step_auprc):>11}"
                f"{common.fmt(row.prefix_auroc):>13}{common.fmt(row.final_auroc):>12}")
        if intervals:
            ci = intervals["probe"] if key == "probe" else intervals["baselines"].get(key, {})
            line += (f"  step {_fmt_ci(ci.get('step_auroc'))}, "
                     f"final {_fmt_ci(ci.get('final_auroc'))}")
        print(line)
    print("lead of the probes (paired intervals over the same resamples):")
    for name, row in report.baselines.items():
        line = (f"  over {BASELINE_LABELS.get(name, name):<27} step "
                f"{_lead(report.probes.step_auroc, row.step_auroc)}, final "
                f"{_lead(report.probes.final_auroc, row.final_auroc)}")
        if intervals and name in intervals["lead"]:
            lead = intervals["lead"][name]
            line += (f"  step {_fmt_ci(lead['step_auroc'])}, "
                     f"final {_fmt_ci(lead['final_auroc'])}")
        print(line)
    for label, values in ((f"at the alarm threshold {report.threshold:.3f}",
                           report.dynamic_dict()),
                          ("at the paper's 0.5", report.dynamic_dict(at_0_5=True))):
        print(f"dynamic {label}: " + ", ".join(f"{k} {common.fmt(v)}"
                                               for k, v in values.items()))
    if report.residual_time is not None:
        summary = report.residual_time.summary()
        print(f"residual time: {summary['n']} text-level recoveries, median "
              f"{common.fmt(summary['median'])} steps with the alarm still up; "
              f"{summary['n_censored']} censored (the chain ended with the alarm up, so the "
              "value is only a lower bound)")
    rec = report.recovery
    print(f"recovery (k={rec.k}): {rec.n_correct}/{rec.n_chains} chains with {rec.k}+ broken "
          f"steps in a row still end right"
          + (f" (95% Wilson {rec.ci_low:.2f}-{rec.ci_high:.2f})" if rec.n_chains else ""))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.diagnose.evaluation import answer_accuracy, evaluation_report

    bundle, traces, chains = _scored(args)
    threshold = args.threshold if args.threshold is not None else bundle.meta.threshold
    report = evaluation_report(chains, threshold, bundle.meta.step_threshold, k=args.k,
                               n_resamples=args.bootstrap, answers=answer_accuracy(traces))
    if args.json:
        print(json.dumps(report.as_dict(), default=float))
        return 0
    print_report(report, bundle.meta.layer)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from core.data.traces import write_traces
    from core.diagnose.evaluation import scored_traces

    bundle, traces, chains = _scored(args)
    threshold = args.threshold if args.threshold is not None else bundle.meta.threshold
    out = scored_traces(traces, chains, threshold=threshold, layer=bundle.meta.layer,
                        probe_name=str(args.probe))
    write_traces(args.out, out)
    n_alarm = sum(any(t.extra["telltale_scores"]["alarm"]) for t in out)
    print(f"Scored {len(out)} chains ({n_alarm} with an alarm) into {args.out}.",
          file=sys.stdout)
    return 0


def cmd_make_read_chains(args: argparse.Namespace) -> int:
    from core.data.read_chains import make_read_chains

    print(make_read_chains(args.out, n_problems=args.problems, seed=args.seed,
                           test_share=args.test_share, min_ops=args.min_ops,
                           max_ops=args.max_ops, max_number=args.max_number))
    return 0


def _capture_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="auto", help="trace format: auto, native, chained, "
                   "prm800k, processbench, gsm8k")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--capture", default=None, help="keep the captured features in this folder "
                   "(resumable: a rerun reads what is there) instead of memory")


def register(sub: Any) -> None:
    p = sub.add_parser("capture", help="pooled per-step residual vectors and signals of traces")
    model_options(p)
    trace_options(p)
    p.add_argument("--layers", required=True, help="e.g. 8,15 or 0-29 or all; negatives count "
                                                   "from the end")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--poolings", default="exp,exp3,mean,last,causal,prefix_mean")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--shard", default="0/1", help="i/N: take every N-th chain starting at i")
    p.add_argument("--max-tokens", type=int, default=2048)
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("signals", help="per-step baseline signals (entropy, NLL) as CSV")
    model_options(p)
    trace_options(p)
    p.add_argument("--out", required=True, help="CSV file")
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(func=cmd_signals)

    p = sub.add_parser("make-read-chains", help="worked arithmetic solutions, some with one "
                       "controlled error (carried or corrected), for the model to read; labels "
                       "exact by construction (no model needed)")
    p.add_argument("--out", required=True, help="JSONL name: writes OUT_train.jsonl and "
                   "OUT_test.jsonl (split by problem) with .meta.json sidecars")
    p.add_argument("--problems", type=int, default=500, help="problems (two chains each)")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--test-share", type=float, default=0.2,
                   help="share of problems in the test file (0: one file, OUT)")
    p.add_argument("--min-ops", type=int, default=2, help="fewest operations per problem")
    p.add_argument("--max-ops", type=int, default=4, help="most operations per problem")
    p.add_argument("--max-number", type=int, default=20,
                   help="largest starting value and amount added or subtracted")
    p.set_defaults(func=cmd_make_read_chains)

    p = sub.add_parser("train", help="train the step probe and prefix tracker on labelled traces")
    model_options(p)
    trace_options(p)
    _capture_options(p)
    p.add_argument("--out", required=True, help="probe name: writes NAME.safetensors + NAME.json")
    p.add_argument("--layer", type=int, default=None, help="layer to probe (default: middle)")
    p.add_argument("--sweep", action="store_true", help="try --sweep-layers, keep the best on "
                   "validation data")
    p.add_argument("--sweep-layers", default="all")
    p.add_argument("--step-pooling", default="exp", choices=["exp", "exp3", "mean", "last"],
                   help="exp: paper's k=1; exp3: released code's k=3")
    p.add_argument("--step-input", default="loss", choices=["loss", "input"],
                   help="c_step only in the loss (released code) or also an input (paper)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--val-share", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    for name, func, text in (("evaluate", cmd_evaluate, "metrics of a probe on labelled traces"),
                             ("score", cmd_score, "add per-step scores and alarms to traces")):
        p = sub.add_parser(name, help=text)
        model_options(p)
        trace_options(p)
        _capture_options(p)
        p.add_argument("--probe", required=True, help="probe file (NAME or NAME.safetensors)")
        p.add_argument("--threshold", type=float, default=None,
                       help="alarm threshold (default: the probe's calibrated one)")
        if name == "evaluate":
            p.add_argument("--json", action="store_true")
            p.add_argument("--k", type=int, default=5, help="run length for the recovery "
                           "statistic")
            p.add_argument("--bootstrap", type=int, default=1000,
                           help="resamples of problems (each with all its chains) for the "
                                "AUROC intervals and leads (0: none)")
        else:
            p.add_argument("--out", required=True, help="scored JSONL")
        p.set_defaults(func=func)
