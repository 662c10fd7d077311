"""`telltale train | evaluate | score`: the Diagnose layer on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from core.cli import CliError, _load, _model_options, _read_traces, _trace_options, progress_bar


def _capture(loaded: Any, traces: list, layers: list[int], poolings: tuple[str, ...],
             args: argparse.Namespace) -> Any:
    """Pooled features for the traces: from/into --capture DIR (resumable) or in memory."""
    from core.feature_store import CaptureConfig, capture_in_memory, capture_traces, load_capture

    config = CaptureConfig(layers=tuple(layers), poolings=poolings, batch_size=args.batch_size,
                           max_tokens=args.max_tokens)
    with progress_bar("capture") as update:
        if getattr(args, "capture", None):
            capture_traces(loaded, traces, args.capture, config, progress=update)
            return load_capture(args.capture)
        return capture_in_memory(loaded, traces, config, progress=update)


def cmd_train(args: argparse.Namespace) -> int:
    from core.layers import parse_layers
    from core.probe_training import TrainConfig, train_probes
    from core.probes import TrackerConfig, save_probe

    traces = _read_traces(args.traces, args.segmenter, args.pattern, args.format)
    loaded = _load(args)
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
    report = result.bundle.meta.metrics["validation"]
    if len(layers) > 1:
        print(result.sweep.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"Layer {result.bundle.meta.layer}: validation step AUROC "
          f"{_fmt(report['step_auroc'])}, final-prefix AUROC {_fmt(report['final_auroc'])}, "
          f"threshold {result.bundle.meta.threshold:.3f} ({result.n_train_chains} train / "
          f"{result.n_val_chains} validation chains). Saved {weights} and {meta}.")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _fmt_ci(interval: list[float] | None) -> str:
    return "n/a" if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _scored(args: argparse.Namespace) -> tuple[Any, list, list]:
    from core.evaluation import score_capture
    from core.probes import load_probe

    bundle = load_probe(args.probe)
    traces = _read_traces(args.traces, args.segmenter, args.pattern, args.format)
    loaded = _load(args)
    bundle.check_model(args.model, loaded.hidden_size)
    capture = _capture(loaded, traces, [bundle.meta.layer], bundle.poolings, args)
    return bundle, traces, score_capture(bundle, capture)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.evaluation import evaluation_report

    bundle, _, chains = _scored(args)
    threshold = args.threshold if args.threshold is not None else bundle.meta.threshold
    report = evaluation_report(chains, threshold, bundle.meta.step_threshold, k=args.k,
                               n_resamples=args.bootstrap)
    if args.json:
        print(json.dumps(report, default=float))
        return 0
    counts = report["final_counts"]
    print(f"{report['n_chains']} chains, {report['n_steps']} steps, layer {bundle.meta.layer}, "
          f"threshold {threshold:.3f}; final step: {counts['positive']} chains gone wrong, "
          f"{counts['negative']} sound")
    intervals = report.get("intervals")
    header = f"{'scores':<20}{'step AUROC':>12}{'step AUPRC':>12}{'prefix AUROC':>14}" \
             f"{'final AUROC':>13}"
    print(header + ("  (95% bootstrap intervals over chains)" if intervals else ""))
    for name, row in [("probes", report), *report["baselines"].items()]:
        line = (f"{name:<20}{_fmt(row['step_auroc']):>12}{_fmt(row['step_auprc']):>12}"
                f"{_fmt(row['prefix_auroc']):>14}{_fmt(row['final_auroc']):>13}")
        if intervals:
            ci = intervals["probe"] if name == "probes" else intervals["baselines"][name]
            line += f"  step {_fmt_ci(ci['step_auroc'])}, final {_fmt_ci(ci['final_auroc'])}"
        print(line)
    print("dynamic: " + ", ".join(f"{k} {_fmt(v)}" for k, v in report["dynamic"].items()))
    rec = report["recovery"]
    print(f"recovery (k={rec['k']}): {rec['n_correct']}/{rec['n_chains']} still correct")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from core.evaluation import scored_traces
    from core.traces import write_traces

    bundle, traces, chains = _scored(args)
    threshold = args.threshold if args.threshold is not None else bundle.meta.threshold
    out = scored_traces(traces, chains, threshold=threshold, layer=bundle.meta.layer,
                        probe_name=str(args.probe))
    write_traces(args.out, out)
    n_alarm = sum(any(t.extra["telltale_scores"]["alarm"]) for t in out)
    print(f"Scored {len(out)} chains ({n_alarm} with an alarm) into {args.out}.",
          file=sys.stdout)
    return 0


def cmd_audit_sample(args: argparse.Namespace) -> int:
    from core.label_audit import sample_audit, write_audit

    traces = _read_traces(args.traces, args.segmenter, args.pattern, args.format)
    items = sample_audit(traces, args.n, seed=args.seed)
    write_audit(items, args.out)
    print(f"Wrote {len(items)} steps to judge to {args.out}: set each line's human_label to 0 "
          f"(fine) or 1 (false calculation or unsupported number), then run "
          f"'telltale audit-score {args.out}'.")
    return 0


def cmd_audit_score(args: argparse.Namespace) -> int:
    from core.label_audit import audit_agreement, read_audit

    agreement = audit_agreement(read_audit(args.audit))
    if args.json:
        print(json.dumps(agreement.as_dict()))
        return 0
    kappa = "n/a" if agreement.kappa is None else f"{agreement.kappa:.2f}"
    print(f"{agreement.n_agree}/{agreement.n_judged} agree ({agreement.rate:.1%}, 95% CI "
          f"{agreement.ci_low:.1%}-{agreement.ci_high:.1%}), Cohen's kappa {kappa}; "
          f"{agreement.n_unjudged} not judged yet.")
    print("confusion: " + ", ".join(f"{k} {v}" for k, v in agreement.confusion.items()))
    for item in agreement.disagreements:
        print(f"- {item.id}: rule {item.rule_label}, human {item.human_label}: {item.step!r}"
              + (f" ({item.note})" if item.note else ""))
    return 0


def _capture_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="auto", help="trace format: auto, native, chained, "
                   "prm800k, processbench, gsm8k")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=2048)


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train the step probe and prefix tracker on labelled traces")
    _model_options(p)
    _trace_options(p)
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
    p.add_argument("--capture", default=None, help="keep the captured features in this folder "
                   "(resumable) instead of memory")
    p.set_defaults(func=cmd_train)

    for name, func, text in (("evaluate", cmd_evaluate, "metrics of a probe on labelled traces"),
                             ("score", cmd_score, "add per-step scores and alarms to traces")):
        p = sub.add_parser(name, help=text)
        _model_options(p)
        _trace_options(p)
        _capture_options(p)
        p.add_argument("--probe", required=True, help="probe file (NAME or NAME.safetensors)")
        p.add_argument("--threshold", type=float, default=None,
                       help="alarm threshold (default: the probe's calibrated one)")
        if name == "evaluate":
            p.add_argument("--json", action="store_true")
            p.add_argument("--k", type=int, default=5, help="run length for the recovery "
                           "statistic")
            p.add_argument("--bootstrap", type=int, default=1000,
                           help="resamples of whole chains for the AUROC intervals (0: none)")
        else:
            p.add_argument("--out", required=True, help="scored JSONL")
        p.set_defaults(func=func)

    p = sub.add_parser("audit-sample", help="draw random labelled steps for a hand check")
    _trace_options(p)
    p.add_argument("--format", default="auto", help="trace format (as for train)")
    p.add_argument("--n", type=int, default=100, help="number of steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="audit JSONL to fill in (human_label 0/1)")
    p.set_defaults(func=cmd_audit_sample)

    p = sub.add_parser("audit-score", help="agreement of the labeller with a hand check")
    p.add_argument("audit", help="audit JSONL with human_label filled in")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit_score)
