"""The `telltale` subcommands of the Sense layer: concept, inject, sweep, prefill, logit-lens.

    telltale concept --words bread,ocean --layers 10,15,20 --out concepts/
    telltale inject --concept bread --layer 15 --strength 4 --trials 10 [--json]
    telltale sweep --concepts bread,ocean --layers 5,10,15,20,25 --strengths 1,2,4,8 --trials 4
    telltale prefill --layers 10,15,20 --strength 4 --trials 2
    telltale logit-lens --concept bread --layer 15 --strength 4

Concept vectors come from --vectors DIR (a library `telltale concept` wrote, checked against the
model) or are built on the fly with the word method.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from core.cli import common
from core.cli.common import CliError, model_options, progress_bar


def _library(args: argparse.Namespace, loaded: Any, concepts: list[str], layers: list[int]) -> Any:
    """Vectors from --vectors, or built now with the word method at `layers`."""
    from core.sense.concepts import build_word_library, load_library

    if args.vectors:
        if not Path(args.vectors).is_dir():
            raise CliError(f"Concept folder {args.vectors} does not exist.")
        return load_library(args.vectors, loaded)
    with progress_bar("concept vectors", unit="prompt") as update:
        return build_word_library(loaded, concepts, layers, batch_size=args.batch_size,
                                  progress=update)


def _judge(args: argparse.Namespace) -> Any:
    if not args.judge:
        return None
    from core.runtime.models import LoadOptions, load_model

    return load_model(args.judge, LoadOptions(device=args.device, dtype=args.dtype,
                                              trust_remote_code=args.trust_remote_code))


def _trial_config(args: argparse.Namespace) -> Any:
    from core.sense.introspection import CONTROLS, TrialConfig

    controls = tuple(c for c in CONTROLS if c not in (args.skip_control or []))
    return TrialConfig(n_trials=args.trials, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, batch_size=args.batch_size, seed=args.seed,
                       controls=controls)


def _fmt(value: Any) -> str:
    value = common.plain(value)
    return "  -  " if value is None else f"{value:5.2f}"


# ------------------------------------------------------------------ commands


def cmd_concept(args: argparse.Namespace) -> int:
    from core.runtime.layers import parse_layers
    from core.sense.concepts import (
        build_contrastive_library,
        build_word_library,
        caps_pairs,
        save_library,
    )

    common.set_threads(args.threads)
    loaded = common.load(args)
    layers = parse_layers(args.layers, loaded.n_layers)
    library = None
    if args.words:
        with progress_bar("word concepts", unit="prompt") as update:
            library = build_word_library(loaded, common.split_list(args.words, "word"), layers,
                                         batch_size=args.batch_size, progress=update)
    if args.contrastive:
        name = args.contrastive
        if args.caps_file:
            positive, negative = caps_pairs(_lines(args.caps_file))
        elif args.positive_file and args.negative_file:
            positive, negative = _lines(args.positive_file), _lines(args.negative_file)
        else:
            raise CliError("--contrastive needs --positive-file and --negative-file, or "
                           "--caps-file.")
        with progress_bar(f"contrastive {name}", unit="prompt") as update:
            pair = build_contrastive_library(loaded, name, positive, negative, layers,
                                             batch_size=args.batch_size, progress=update)
        library = pair if library is None else library.merge(pair)
    if library is None:
        raise CliError("Give --words, or --contrastive NAME with its prompt files.")
    save_library(library, args.out)
    print(f"Wrote {len(library.concepts)} concepts x {len(library.layers)} layers for "
          f"{library.model} to {args.out}.")
    for name in library.concepts:
        norms = library.norms(name)
        shown = ", ".join(f"L{layer} {norm:.2f}" for layer, norm in
                          zip(library.layers, norms, strict=True))
        print(f"  {name}: norm {shown}")
    return 0


def _lines(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise CliError(f"Prompt file {path} does not exist.")
    return [line.strip() for line in file.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def cmd_inject(args: argparse.Namespace) -> int:
    from core.runtime.layers import resolve_layer
    from core.sense.introspection import InjectionSpec, run_trials

    common.set_threads(args.threads)
    spec = InjectionSpec(args.strength, args.scale, args.positions)
    config = _trial_config(args)
    loaded = common.load(args)
    layer = resolve_layer(args.layer, loaded.n_layers)
    library = _library(args, loaded, [args.concept], [layer])
    concept = library.vector(args.concept, layer)
    judge = _judge(args)
    with progress_bar("trials", unit="trial") as update:
        run = run_trials(loaded, concept, spec, config, judge=judge, progress=update)
    common.write_table(run.trials, args.out)
    summary = {k: common.plain(v) for k, v in run.summary().items()}
    if args.json:
        print(json.dumps({
            "model": loaded.name, "concept": concept.name, "layer": layer,
            "strength": spec.strength, "scale": spec.scale, "positions": spec.positions,
            "vector_norm": run.vector_norm, "mean_residual_norm": run.mean_residual_norm,
            "summary": summary, "rates": common.records(run.rates()),
            "trials": common.records(run.trials)}))
        return 0
    print(f"{loaded.name}: concept '{concept.name}' at layer {layer}, strength {spec.strength} "
          f"({spec.scale}; ||v|| {run.vector_norm:.2f}, mean residual norm "
          f"{run.mean_residual_norm:.2f}), positions {spec.positions}")
    for row in common.records(run.trials):
        marks = "".join(flag if row[key] else "." for flag, key in
                        (("C", "coherent"), ("A", "affirmative"), ("N", "names_concept"),
                         ("I", "identified")))
        reply = " ".join(str(row["reply"]).split())
        print(f"[{row['condition']:>8} #{row['trial']}] {marks}  {reply[:160]}")
    print("marks: C coherent, A affirmative, N names the concept, I identified (immediacy rule)")
    print(f"{'condition':>9}  {'n':>3}  detect  ident  coher")
    for row in common.records(run.rates()):
        print(f"{row['condition']:>9}  {row['n']:>3}  {_fmt(row['detection'])}  "
              f"{_fmt(row['identification'])}  {_fmt(row['coherence'])}")
    print(f"net = identification {_fmt(summary['identification'])} - false positives "
          f"{_fmt(summary['false_positive'])} = {_fmt(summary['net'])}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from core.runtime.layers import parse_layers
    from core.sense.introspection import SweepConfig, config_dict, run_sweep, sweep_summary

    common.set_threads(args.threads)
    trial_config = _trial_config(args)
    concepts = common.split_list(args.concepts, "concept")
    strengths = common.float_list(args.strengths, "strength")
    loaded = common.load(args)
    layers = parse_layers(args.layers, loaded.n_layers)
    config = SweepConfig(tuple(concepts), tuple(layers), tuple(strengths), args.scale,
                         args.positions, trial_config)
    library = _library(args, loaded, concepts, layers)
    judge = _judge(args)
    with progress_bar("sweep", unit="trial") as update:
        trials = run_sweep(loaded, library, config, judge=judge, progress=update)
    common.write_table(trials, args.out)
    summary = sweep_summary(trials)
    if args.json:
        print(json.dumps({"model": loaded.name, "config": config_dict(config),
                          "rows": common.records(summary)}))
        return 0
    print(f"{loaded.name}: {len(trials)} trials, {trial_config.n_trials} per condition, "
          f"scale {args.scale}, positions {args.positions}")
    print(f"{'layer':>5} {'str':>5} {'concept':<12} detect  ident    fp    net  coher"
          f"  rnd_det neg_det")
    for row in common.records(summary):
        print(f"{row['layer']:>5} {row['strength']:>5g} {row['concept']:<12} "
              f"{_fmt(row['detection'])}  {_fmt(row['identification'])} "
              f"{_fmt(row['false_positive'])} {_fmt(row['net'])}  {_fmt(row['coherence'])}"
              f"  {_fmt(row['random_detection'])}   {_fmt(row['negated_detection'])}")
    return 0


def cmd_prefill(args: argparse.Namespace) -> int:
    from core.runtime.layers import parse_layers
    from core.sense.introspection import TrialConfig
    from core.sense.prefill import PrefillConfig, prefill_summary, run_prefill

    common.set_threads(args.threads)
    trials = TrialConfig(n_trials=args.trials, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, batch_size=args.batch_size,
                         seed=args.seed, controls=())
    loaded = common.load(args)
    config = PrefillConfig(tuple(parse_layers(args.layers, loaded.n_layers)), args.strength,
                           args.scale, trials=trials)
    with progress_bar("prefill", unit="reply") as update:
        replies = run_prefill(loaded, config, progress=update)
    common.write_table(replies, args.out)
    summary = prefill_summary(replies)
    if args.json:
        print(json.dumps({"model": loaded.name, "strength": args.strength, "scale": args.scale,
                          "rows": common.records(summary)}))
        return 0
    print(f"{loaded.name}: apology rate, strength {args.strength} ({args.scale})")
    print(f"{'layer':>5} {'condition':<9} {'n':>3}  apology  [95% CI]")
    for row in common.records(summary):
        print(f"{row['layer']:>5} {row['condition']:<9} {row['n']:>3}  {_fmt(row['apology'])}"
              f"    [{_fmt(row['apology_lo'])}, {_fmt(row['apology_hi'])}]")
    return 0


def cmd_logit_lens(args: argparse.Namespace) -> int:
    from core.runtime.layers import resolve_layer
    from core.sense.introspection import InjectionSpec
    from core.sense.logit_lens import logit_lens

    common.set_threads(args.threads)
    spec = InjectionSpec(args.strength, args.scale, args.positions)
    loaded = common.load(args)
    layer = resolve_layer(args.layer, loaded.n_layers)
    library = _library(args, loaded, [args.concept], [layer])
    table = logit_lens(loaded, library.vector(args.concept, layer), spec)
    if args.json:
        print(json.dumps({"model": loaded.name, "concept": args.concept, "layer": layer,
                          "strength": spec.strength, "rows": common.records(table)}))
        return 0
    wide = table.pivot(index="layer", columns="condition", values=["prob", "rank"])
    print(f"{loaded.name}: token {table['token'].iloc[0]!r} through the unembedding, injection "
          f"at layer {layer}, strength {spec.strength} ({spec.scale})")
    print(f"{'layer':>5}  {'p(none)':>9} {'rank':>6}  {'p(injected)':>11} {'rank':>6}")
    for row_layer, row in wide.iterrows():
        print(f"{row_layer:>5}  {row[('prob', 'none')]:9.2e} {int(row[('rank', 'none')]):>6}  "
              f"{row[('prob', 'injected')]:11.2e} {int(row[('rank', 'injected')]):>6}")
    return 0


# ------------------------------------------------------------------ parser


def _common(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts or trials at once")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: leave as is); 1 is often fastest on a "
                             "busy shared CPU")
    parser.add_argument("--vectors", default=None,
                        help="concept folder from `telltale concept` (default: build now)")


def _injection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", default="raw", choices=["raw", "relative"],
                        help="raw: strength x v (the paper); relative: strength x mean "
                             "residual norm x v/|v|")
    parser.add_argument("--positions", default="window", choices=["window", "all", "generated"],
                        help="window: from the blank line before the question on (the paper)")


def _sampling_options(parser: argparse.ArgumentParser, trials: int, max_new: int) -> None:
    parser.add_argument("--trials", type=int, default=trials, help="trials per condition")
    parser.add_argument("--max-new-tokens", type=int, default=max_new)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)


def _trial_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-control", action="append", choices=["none", "random", "negated"],
                        help="leave out a control (repeatable; every control runs by default)")
    parser.add_argument("--judge", default=None,
                        help="also grade with this model's answers to the four questions")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", default=None, help="CSV file for the per-trial table")


def register(subparsers: Any) -> None:
    """Add the Sense subcommands to `telltale`'s subparsers."""
    p = subparsers.add_parser("concept", help="build and save concept vectors")
    _common(p)
    p.add_argument("--words", default=None, help="comma-separated concept words")
    p.add_argument("--layers", default="all", help="e.g. 10,15,20 or 0-29 or all")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--contrastive", default=None, metavar="NAME",
                   help="also a contrastive concept of this name")
    p.add_argument("--positive-file", default=None, help="positive prompts, one per line")
    p.add_argument("--negative-file", default=None, help="negative prompts, one per line")
    p.add_argument("--caps-file", default=None,
                   help="texts, one per line: ALL-CAPS versions against the texts as given")
    p.set_defaults(func=cmd_concept)

    p = subparsers.add_parser("inject", help="introspection trials with one concept, and controls")
    _common(p)
    p.add_argument("--concept", required=True)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--strength", type=float, required=True)
    _injection_options(p)
    _sampling_options(p, trials=10, max_new=100)
    _trial_options(p)
    p.set_defaults(func=cmd_inject)

    p = subparsers.add_parser("sweep", help="trials over layers x strengths x concepts")
    _common(p)
    p.add_argument("--concepts", required=True, help="comma-separated concept words")
    p.add_argument("--layers", required=True, help="e.g. 5,10,15,20,25")
    p.add_argument("--strengths", required=True, help="e.g. 1,2,4,8")
    _injection_options(p)
    _sampling_options(p, trials=4, max_new=100)
    _trial_options(p)
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("prefill", help="apology rate after a prefilled word, per layer")
    _common(p)
    p.add_argument("--layers", required=True, help="e.g. 10,15,20")
    p.add_argument("--strength", type=float, default=4.0)
    p.add_argument("--scale", default="raw", choices=["raw", "relative"])
    _sampling_options(p, trials=2, max_new=40)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None, help="CSV file for the per-reply table")
    p.set_defaults(func=cmd_prefill)

    p = subparsers.add_parser("logit-lens", help="the concept token's rank per layer")
    _common(p)
    p.add_argument("--concept", required=True)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--strength", type=float, required=True)
    _injection_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_logit_lens)
