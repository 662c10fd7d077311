"""`telltale eaft-stats | finetune-compare | make-finetune-data`: the Control layer.

Every command is a thin wrapper over `core.control` (`conflicts`, `suitability`, `export`,
`finetune`, `finetune_samples`) and raises `CliError` (or ValueError) for problems the user can
fix, which `core.cli.main.main` prints as one sentence.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core.cli import common
from core.cli.common import CliError, model_options, progress_bar

# core.control.finetune.METHODS / DEFAULT_METHODS / OPTIMIZERS and core.control.export's
# formats, written out so that building the parser does not import torch
COMPARE_METHODS = "sft,eaft,sft_kl,hard_mask,sft_lr_matched"
DEFAULT_COMPARE_METHODS = "sft,eaft,sft_kl,hard_mask"
OPTIMIZERS = ("adamw", "sgd")
EXPORT_FORMATS = ("llamafactory", "axolotl", "trl")


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


def _fragment(args: argparse.Namespace, verdict: Any = None) -> str:
    """The trainer config fragment (ValueError for a loss the trainer cannot express)."""
    from core.control.eaft import LossConfig
    from core.control.export import trainer_fragment

    config = LossConfig(kind="eaft", k=args.k, alpha=args.alpha, norm=args.norm)
    return trainer_fragment(args.export, config, verdict, data=args.data)


def _export(args: argparse.Namespace, verdict: Any) -> str:
    """Write the trainer config fragment; returns where."""
    from core.control.export import FILE_NAMES
    from core.data.atomic import atomic_write_text

    path = args.export_out or FILE_NAMES[args.export]
    atomic_write_text(path, _fragment(args, verdict))
    return str(path)


def cmd_eaft_stats(args: argparse.Namespace) -> int:
    from core.control.conflicts import (
        default_gates,
        scan_conflicts,
        summarise_conflicts,
        token_gates,
    )
    from core.control.suitability import suitability

    thresholds = _thresholds(args)
    examples = _read_examples(args.data)
    if args.export:
        _fragment(args)  # a setting the trainer cannot express fails before the model loads
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
    verdict = suitability(scan.tokens, alpha=args.alpha)
    if args.tokens_out:
        table = scan.tokens.copy()
        for name, weights in token_gates(scan.tokens, gates).items():
            table[f"weight_{name}"] = weights
        common.write_table(table, args.tokens_out)
    exported = _export(args, verdict) if args.export else None
    report = {**summary.to_dict(), "k": args.k, "norm": args.norm,
              "n_examples": scan.n_examples, "n_skipped": len(scan.skipped),
              "suitability": verdict.to_dict()}
    if exported:
        report["export"] = {"format": args.export, "path": exported}
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
    print(f"Suitability: {verdict.verdict.replace('_', ' ')} (absolute cuts p <= "
          f"{verdict.p_cut:g}, H~ <= {verdict.h_cut:g}, uncertain H~ >= "
          f"{verdict.uncertain_cut:g}). {verdict.reason}")
    if args.tokens_out:
        print(f"Wrote per-token statistics and weights to {args.tokens_out}.")
    if exported:
        print(f"Wrote the {args.export} config fragment to {exported}.")
    return 0


def _levels(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CliError(f"--match-at takes comma-separated shares such as 0.3,0.5, not "
                       f"{text!r}.") from None


def _print_matched(result: Any) -> None:
    from core.control.matching import spread_text

    if not result.levels:
        print("No target-loss reduction is reached by every run (some method never lowered the "
              "held-out target loss), so there is no matched comparison.")
        return
    for level in result.levels:
        rows = result.summary[result.summary["level"] == level]
        print(f"At {level:.1%} target-loss reduction (mean ± sd [min, max] over seeds; "
              "forgetting is the change from the base model):")
        print(f"  {'method':<15}{'seeds':>6}  {'d general loss':<34}{'d general acc':<34}"
              f"{'|dtheta|':<34}{'step':>6}")
        for _, row in rows.iterrows():
            step = common.plain(row["step_mean"])
            print(f"  {row['method']:<15}{row['n_seeds']:>6}  "
                  f"{spread_text(row, 'd_general_loss'):<34}"
                  f"{spread_text(row, 'd_general_acc'):<34}"
                  f"{spread_text(row, 'd_theta', signed=False):<34}"
                  f"{'n/a' if step is None else f'{step:.1f}':>6}")
        if result.differences.empty:
            continue
        for _, row in result.differences[result.differences["level"] == level].iterrows():
            print(f"  {row['method']} - {row['reference']}, seed by seed: d general loss "
                  f"{spread_text(row, 'diff_d_general_loss')}, d general acc "
                  f"{spread_text(row, 'diff_d_general_acc')}, |dtheta| "
                  f"{spread_text(row, 'diff_d_theta')}; its general loss rose less in "
                  f"{row['n_less_loss']} of {row['n_seeds']} seeds")


def cmd_finetune_compare(args: argparse.Namespace) -> int:
    from core.control.finetune import CompareConfig, compare_methods

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    config = CompareConfig(methods=methods, steps=args.steps, batch_size=args.batch_size,
                           lr=args.lr, seed=args.seed, repeats=args.repeats,
                           optimizer=args.optimizer, eval_every=args.eval_every,
                           curve_accuracy=not args.no_curve_accuracy,
                           match_at=_levels(args.match_at), lora=args.lora,
                           lora_rank=args.lora_rank, max_tokens=args.max_tokens,
                           holdout=args.holdout, k=args.k, alpha=args.alpha, beta=args.beta,
                           max_eval=args.max_eval, target_new_tokens=args.target_new_tokens,
                           general_new_tokens=args.general_new_tokens)
    train = _read_examples(args.train, "training")
    general = _read_examples(args.general, "general")
    target_eval = _read_examples(args.eval, "held-out") if args.eval else None
    loaded = common.load(args)
    with progress_bar("finetune-compare", unit="step") as update:
        result = compare_methods(loaded, train, general, config, target_eval=target_eval,
                                 progress=update, journal=args.journal)
    common.write_table(result.final, args.out)
    if args.json:
        print(json.dumps({
            "model": loaded.name, "train": args.train, "general": args.general,
            "config": config.as_dict(), "levels": list(result.levels),
            "rows": common.records(result.final), "curves": common.records(result.curves),
            "matched": common.records(result.matched),
            "summary": common.records(result.summary),
            "differences": common.records(result.differences)}))
        return 0
    _print_matched(result)
    print("\nAfter the last step (every seed):")
    shown = result.final.drop(columns=["steps", "optimizer"]).set_index(["seed", "method"])
    print(shown.to_string(float_format=lambda v: f"{v:.4g}"))
    return 0


def cmd_make_finetune_data(args: argparse.Namespace) -> int:
    from core.control.finetune_samples import make_finetune_samples

    loaded = common.load(args)
    with progress_bar("ask general questions", unit="question") as update:
        summary = make_finetune_samples(loaded, args.out_dir, n_target=args.target,
                                        seed=args.seed, max_new_tokens=args.max_new_tokens,
                                        n_notation=args.notation, progress=update)
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
                                          "loss and gradient shares per quadrant, and whether "
                                          "EAFT suits it")
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
    p.add_argument("--export", choices=EXPORT_FORMATS, default=None,
                   help="also write the EAFT config fragment for this trainer (with --k, "
                        "--alpha, --norm and the suitability verdict)")
    p.add_argument("--export-out", default=None,
                   help="where to write it (default eaft_llamafactory.yaml, eaft_axolotl.yaml "
                        "or eaft_trl.py here)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object: quadrant shares, thresholds and `suitability` (the "
                        "verdict, on absolute cuts)")
    p.set_defaults(func=cmd_eaft_stats)

    p = sub.add_parser("finetune-compare", help="fine-tune copies with SFT, EAFT, SFT+KL and "
                                                "the hard mask over seeds; forgetting and "
                                                "|dtheta| at matched target-loss reduction")
    model_options(p)
    p.add_argument("--train", required=True, help="target fine-tuning file (JSONL)")
    p.add_argument("--general", required=True, help="general file the model should not forget")
    p.add_argument("--eval", default=None,
                   help="held-out target file (default: hold out --holdout of --train, a "
                        "different split per seed)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                   help="adamw (default) or sgd; under AdamW a loss scale cancels, so only sgd "
                        "offers sft_lr_matched")
    p.add_argument("--lr", type=float, default=None,
                   help="constant learning rate (default: adamw 3e-5, 2e-4 with --lora; sgd "
                        "1e-2, 1e-1 with --lora)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (needs peft)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--methods", default=DEFAULT_COMPARE_METHODS,
                   help=f"comma-separated, from {COMPARE_METHODS} (sft_lr_matched: SFT at lr x "
                        "EAFT's mean gate; --optimizer sgd only, after eaft)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--repeats", type=int, default=1,
                   help="seeds seed .. seed + repeats - 1 (each: held-out split, batch order, "
                        "LoRA start)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="evaluate every N steps (default: a sixth of --steps)")
    p.add_argument("--match-at", default=None,
                   help="relative target-loss reductions to compare at, e.g. 0.3,0.5 (default: "
                        "the largest every run reaches)")
    p.add_argument("--no-curve-accuracy", action="store_true",
                   help="general accuracy (greedy replies) only after the last step (faster; "
                        "accuracy at matched reduction is then n/a)")
    p.add_argument("--journal", default=None,
                   help="JSONL journal of finished runs: an interrupted comparison resumes")
    p.add_argument("--holdout", type=float, default=0.25)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.5, help="KL weight of sft_kl")
    p.add_argument("--max-tokens", type=int, default=384)
    p.add_argument("--max-eval", type=int, default=None,
                   help="evaluate at most this many held-out target and general examples")
    p.add_argument("--target-new-tokens", type=int, default=96)
    p.add_argument("--general-new-tokens", type=int, default=40)
    p.add_argument("--json", action="store_true",
                   help="one JSON object: rows (after training), curves, matched, summary "
                        "(mean, sd, min, max over seeds) and differences (each method - SFT, "
                        "seed by seed)")
    p.add_argument("--out", default=None,
                   help="write the after-training table as CSV (or .parquet)")
    p.set_defaults(func=cmd_finetune_compare)

    p = sub.add_parser("make-finetune-data", help="write the sample target (house style and "
                                                  "little-endian notation) and general "
                                                  "fine-tuning files (the model checks the "
                                                  "general answers)")
    model_options(p)
    p.add_argument("--out-dir", default="sample_traces")
    p.add_argument("--target", type=int, default=48, help="number of house-style examples")
    p.add_argument("--notation", type=int, default=64,
                   help="number of little-endian notation examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.set_defaults(func=cmd_make_finetune_data)


__all__ = ["cmd_eaft_stats", "cmd_finetune_compare", "cmd_make_finetune_data", "register"]
