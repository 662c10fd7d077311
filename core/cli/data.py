"""`telltale info | validate | make-traces | audit-sample | audit-score`: the model's card, trace
files, the project's own labelled chains and hand audits of labels."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from core.cli import common
from core.cli.common import CliError, model_options, progress_bar, trace_options


def cmd_info(args: argparse.Namespace) -> int:
    info = common.load(args).info()
    if args.json:
        print(json.dumps(info))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            shown = f"{value:,}" if key == "n_params" else value
            print(f"{key:<{width}}  {shown}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from core.data.steps import Segmenter
    from core.data.traces import read_traces

    if not Path(args.traces).is_file():
        raise CliError(f"Trace file {args.traces} does not exist.")
    load = read_traces(Path(args.traces), segmenter=Segmenter(args.segmenter, args.pattern))
    report = {"n_lines": load.n_lines, "n_traces": len(load.traces),
              "n_skipped": load.n_skipped, "issues": [str(i) for i in load.issues]}
    if args.json:
        print(json.dumps(report))
    else:
        for issue in load.issues:
            print(issue)
        print(f"{len(load.traces)} valid traces, {load.n_skipped} skipped, "
              f"{load.n_lines} lines.")
    return 0 if not load.issues else 1


def cmd_make_traces(args: argparse.Namespace) -> int:
    from core.data.sample_data import make_arith_traces

    loaded = common.load(args)
    with progress_bar("generate", unit="reply") as update:
        summary = make_arith_traces(
            loaded, out=args.out, n_problems=args.problems, samples=args.samples,
            seed=args.seed, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            batch_size=args.batch_size, progress=update, split_test=args.test_share,
            min_ops=args.min_ops, max_ops=args.max_ops, max_number=args.max_number)
    print(summary)
    return 0


def cmd_audit_sample(args: argparse.Namespace) -> int:
    from core.data.label_audit import sample_audit, write_audit

    traces = common.read_traces(args.traces, args.segmenter, args.pattern, args.format)
    items = sample_audit(traces, args.n, seed=args.seed)
    write_audit(items, args.out)
    print(f"Wrote {len(items)} steps to judge to {args.out}: set each line's human_label to 0 "
          f"(fine) or 1 (false calculation or unsupported number), then run "
          f"'telltale audit-score {args.out}'.")
    return 0


def cmd_audit_score(args: argparse.Namespace) -> int:
    from core.data.label_audit import audit_agreement, read_audit

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


def register(sub: Any) -> None:
    p = sub.add_parser("info", help="load a model and print its card")
    model_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("validate", help="check a trace file and list every problem")
    trace_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("make-traces", help="the model writes and labels arithmetic chains")
    model_options(p)
    p.add_argument("--out", required=True, help="JSONL file; a .meta.json sidecar goes beside it")
    p.add_argument("--problems", type=int, default=40)
    p.add_argument("--samples", type=int, default=2, help="chains per problem")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--min-ops", type=int, default=2, help="fewest operations per problem")
    p.add_argument("--max-ops", type=int, default=8, help="most operations per problem")
    p.add_argument("--max-number", type=int, default=99,
                   help="largest starting value and amount added or subtracted")
    p.add_argument("--test-share", type=float, default=0.0,
                   help="if > 0, also write OUT_train/OUT_test split by problem")
    p.set_defaults(func=cmd_make_traces)

    p = sub.add_parser("audit-sample", help="draw random labelled steps for a hand check")
    trace_options(p)
    p.add_argument("--format", default="auto", help="trace format (as for train)")
    p.add_argument("--n", type=int, default=100, help="number of steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="audit JSONL to fill in (human_label 0/1)")
    p.set_defaults(func=cmd_audit_sample)

    p = sub.add_parser("audit-score", help="agreement of the labeller with a hand check")
    p.add_argument("audit", help="audit JSONL with human_label filled in")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit_score)
