"""`telltale eaft-stats | finetune-compare | make-finetune-data`: the Control layer.

Every command is a thin wrapper over `core.control` (`conflicts`, `finetune`,
`finetune_samples`) and raises `CliError` (or ValueError) for problems the user can fix, which
`core.cli.main.main` prints as one sentence.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from core.cli import common
from core.cli.common import CliError, model_options, progress_bar

# core.control.finetune.METHODS, written out so that building the parser does not import torch
COMPARE_METHODS = "sft,eaft,sft_kl,hard_mask,sft_lr_matched"


def _read_examples(path: str, what: str = "fine-tuning") -> list[Any]:
    from core.control.finetune_data import read_finetune

    file = Path(path)
    if not file.is_file():
        raise CliError(f"The {what} file {path} does not exist.")
    load = read_finetune(file)
    common.warn_issues(load.issues)
    if not load.examples:
        raise CliError(f"{path} holds no valid {what} example ({load.n_lines} lines, "
                       f"{len(load.issues)} problems).")
    return load.examples


def _thresholds(args: argparse.Namespace) -> Any:
    from core.control.entropy import Thresholds

    mode = "absolute" if args.absolute else "percentile"
    defaults = (0.1, 0.2, 0.5) if args.absolute else (15.0, 15.0, 50.0)
    values = [d if v is None else v for v, d in zip(
        (args.p_threshold, args.h_threshold, args.uncertain_threshold), defaults, strict=True)]
    return Thresholds(p=values[0], h=values[1], uncertain=values[2], mode=mode)


def cmd_eaft_stats(args: argparse.Namespace) -> int:
    from core.control.conflicts import (
        default_gates,
        scan_conflicts,
        summarise_conflicts,
        token_gates,
    )

    thresholds = _thresholds(args)
    examples = _read_examples(args.data)
    loaded = common.load(args)
    with progress_bar("eaft-stats", unit="example") as update:
        scan = scan_conflicts(loaded, examples, k=args.k, norm=args.norm,
                              batch_size=args.batch_size, max_tokens=args.max_tokens,
                              progress=update)
    for message in scan.skipped[:5]:
        print(f"warning: left out {message}", file=sys.stderr)
    if scan.tokens.empty:
        raise CliError(f"No example of {args.data} has a response token to score.")
    gates = default_gates(args.alpha)
    summary = summarise_conflicts(scan.tokens, thresholds, gates)
    if args.tokens_out:
        table = scan.tokens.copy()
        for name, weights in token_gates(scan.tokens, gates).items():
            table[f"weight_{name}"] = weights
        common.write_table(table, args.tokens_out)
    report = {**summary.to_dict(), "k": args.k, "norm": args.norm,
              "n_examples": scan.n_examples, "n_skipped": len(scan.skipped)}
    if args.json:
        print(json.dumps(report))
        return 0
    cuts = report["thresholds"]
    print(f"{report['n_tokens']} response tokens in {scan.n_examples} examples (K={args.k}, "
          f"norm {args.norm}); confident conflicts: {summary.conflict_fraction:.2%} "
          f"(p <= {cuts['p_cut']:.4g} and H~ <= {cuts['h_cut']:.4g}; uncertain: "
          f"H~ >= {cuts['uncertain_cut']:.4g})")
    print(f"{'quadrant':<20}{'tokens':>9}{'SFT loss':>10}{'SFT grad':>10}{'EAFT grad':>10}")
    for quadrant, row in summary.quadrants.iterrows():
        print(f"{quadrant!s:<20}{row['token_share']:>9.1%}{row['loss_share']:>10.1%}"
              f"{row['sft_grad_share']:>10.1%}{row['eaft_grad_share']:>10.1%}")
    if args.tokens_out:
        print(f"Wrote per-token statistics and weights to {args.tokens_out}.")
    return 0


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def cmd_finetune_compare(args: argparse.Namespace) -> int:
    from core.control.finetune import CompareConfig, finetune_compare

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    config = CompareConfig(methods=methods, steps=args.steps, batch_size=args.batch_size,
                           lr=args.lr, seed=args.seed, lora=args.lora, lora_rank=args.lora_rank,
                           max_tokens=args.max_tokens, holdout=args.holdout, k=args.k,
                           alpha=args.alpha, beta=args.beta, max_eval=args.max_eval,
                           target_new_tokens=args.target_new_tokens,
                           general_new_tokens=args.general_new_tokens)
    train = _read_examples(args.train, "training")
    general = _read_examples(args.general, "general")
    target_eval = _read_examples(args.eval, "held-out") if args.eval else None
    loaded = common.load(args)
    with progress_bar("finetune-compare", unit="step") as update:
        table = finetune_compare(loaded, train, general, config, target_eval=target_eval,
                                 progress=update)
    if args.out:
        common.write_table(table, args.out)
    if args.json:
        rows = [{k: _json_value(v) for k, v in row.items()}
                for row in table.to_dict(orient="records")]
        print(json.dumps({"model": loaded.name, "config": {
            "methods": list(methods), "steps": config.steps, "batch_size": config.batch_size,
            "lr": config.learning_rate, "lora": config.lora, "seed": config.seed},
            "rows": rows}))
    else:
        shown = table.drop(columns=["steps"]).set_index("method")
        print(shown.to_string(float_format=lambda v: f"{v:.4g}"))
        if args.out:
            print(f"Wrote the table to {args.out}.")
    return 0


def cmd_make_finetune_data(args: argparse.Namespace) -> int:
    from core.control.finetune_samples import make_finetune_samples

    loaded = common.load(args)
    with progress_bar("ask general questions", unit="question") as update:
        summary = make_finetune_samples(loaded, args.out_dir, n_target=args.target,
                                        seed=args.seed, max_new_tokens=args.max_new_tokens,
                                        progress=update)
    print(summary)
    return 0


def _stats_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=20, help="top-K for the entropy (default 20)")
    parser.add_argument("--norm", default="lnk", choices=["lnk", "code"],
                        help="normalise the entropy by ln K (paper) or by 3.0 (released code)")
    parser.add_argument("--alpha", type=float, default=1.0, help="EAFT gate exponent")
    parser.add_argument("--max-tokens", type=int, default=1024)


def register(sub: Any) -> None:
    """Add the Control subcommands to `telltale`'s subparsers."""
    p = sub.add_parser("eaft-stats", help="confident conflicts of a fine-tuning file: token, "
                                          "loss and gradient shares per quadrant")
    model_options(p)
    p.add_argument("--data", required=True, help="fine-tuning file (JSONL)")
    _stats_options(p)
    p.add_argument("--p-threshold", type=float, default=None,
                   help="low-p cut: percentile (default 15) or, with --absolute, a probability")
    p.add_argument("--h-threshold", type=float, default=None,
                   help="low-entropy cut: percentile (default 15) or, with --absolute, H~")
    p.add_argument("--uncertain-threshold", type=float, default=None,
                   help="high-entropy cut: percentile (default 50) or, with --absolute, H~")
    p.add_argument("--absolute", action="store_true",
                   help="thresholds are values (defaults p 0.1, H~ 0.2, 0.5), not percentiles")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tokens-out", default=None,
                   help="also write every token's statistics and SFT/EAFT weights (CSV, or "
                        "Parquet for a .parquet name)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eaft_stats)

    p = sub.add_parser("finetune-compare", help="fine-tune copies with SFT, EAFT, SFT+KL, hard "
                                                "mask and matched-LR SFT; what each learned "
                                                "and forgot")
    model_options(p)
    p.add_argument("--train", required=True, help="target fine-tuning file (JSONL)")
    p.add_argument("--general", required=True, help="general file the model should not forget")
    p.add_argument("--eval", default=None,
                   help="held-out target file (default: hold out --holdout of --train)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 3e-5, or 2e-4 with --lora)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (needs peft)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--methods", default=COMPARE_METHODS,
                   help=f"comma-separated, from {COMPARE_METHODS}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=float, default=0.25)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.5, help="KL weight of sft_kl")
    p.add_argument("--max-tokens", type=int, default=384)
    p.add_argument("--max-eval", type=int, default=None,
                   help="evaluate at most this many held-out target and general examples")
    p.add_argument("--target-new-tokens", type=int, default=96)
    p.add_argument("--general-new-tokens", type=int, default=40)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None, help="write the table as CSV (or .parquet)")
    p.set_defaults(func=cmd_finetune_compare)

    p = sub.add_parser("make-finetune-data", help="write the sample target and general "
                                                  "fine-tuning files (the model checks the "
                                                  "general answers)")
    model_options(p)
    p.add_argument("--out-dir", default="sample_traces")
    p.add_argument("--target", type=int, default=48, help="number of target examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.set_defaults(func=cmd_make_finetune_data)


__all__ = ["cmd_eaft_stats", "cmd_finetune_compare", "cmd_make_finetune_data", "register"]
