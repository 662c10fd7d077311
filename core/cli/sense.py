"""The `telltale` subcommands of the Sense layer: concept, inject, sweep, prefill, logit-lens.

    telltale concept --words bread,ocean --layers 10,15,20 --out concepts/
    telltale inject --concept bread --layer 15 --strength 4 --trials 10 [--json]
    telltale sweep --concepts bread,ocean --layers 5,10,15,20,25 --strengths 1,2,4,8 --trials 20
    telltale sweep --concepts bread --layers 15,20 --strengths 0.25,0.5,1 --scale relative
    telltale prefill --layers 10,15,20 --strength 4 --trials 2
    telltale logit-lens --concept bread --layer 15 --strength 4

Concept vectors come from --vectors DIR (a library `telltale concept` wrote, checked against the
model) or are built on the fly with the word method. `inject` and `sweep` run every control by
default (`--skip-control NAME` leaves one out); the arms without injection get
max(--min-none-trials, --trials) trials.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from core.cli import common
from core.cli.common import CliError, model_options, progress_bar

MISMATCH_DEFAULTS = ("ocean", "bread")  # the concept a one-concept run injects to mismatch


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
    """Every control but the skipped ones (and generation_only when the run itself injects on
    the generated tokens only)."""
    from core.sense.introspection import ALL_CONTROLS, TrialConfig

    skipped = set(args.skip_control or [])
    if args.positions == "generated":
        skipped.add("generation_only")
    controls = tuple(c for c in ALL_CONTROLS if c not in skipped)
    return TrialConfig(n_trials=args.trials, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, batch_size=args.batch_size, seed=args.seed,
                       controls=controls, min_none_trials=args.min_none_trials)


def _partner(args: argparse.Namespace, concepts: list[str], controls: tuple[str, ...]) -> Any:
    """The concept the mismatch arm injects in a one-concept run (None when not needed)."""
    if "mismatch" not in controls or len(concepts) > 1:
        return None
    if args.mismatch_with:
        if args.mismatch_with == concepts[0]:
            raise CliError("--mismatch-with must name another concept than the one asked about.")
        return args.mismatch_with
    return next(w for w in MISMATCH_DEFAULTS if w != concepts[0])


def _fmt(value: Any) -> str:
    value = common.plain(value)
    return "  -  " if value is None else f"{value:5.2f}"


def _interval(row: dict[str, Any], key: str) -> str:
    """'0.25 [0.10, 0.47]' for a rate with its _lo/_hi."""
    return f"{_fmt(row[key])} [{_fmt(row[key + '_lo'])}, {_fmt(row[key + '_hi'])}]"


def _magnitude(effective: Any, relative: Any) -> str:
    effective, relative = common.plain(effective), common.plain(relative)
    if effective is None or relative is None:
        return "-"
    return f"{effective:.3g} ({relative:.2f}x)"


def _shared_lines(controls: Any) -> list[str]:
    """The arms without injection in words: each rate with its interval and n."""
    lines = []
    for row in common.records(controls):
        if row["control"] == "none":
            lines.append(f"no injection: detection (false positives) {_interval(row, 'rate')} "
                         f"(n {row['n']})")
        elif row["control"] == "yes_no_none":
            lines.append(f"unrelated yes/no questions, no injection: yes "
                         f"{_interval(row, 'rate')} (n {row['n']})")
    return lines


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
    partner_name = _partner(args, [args.concept], config.controls)
    loaded = common.load(args)
    layer = resolve_layer(args.layer, loaded.n_layers)
    library = _library(args, loaded, [args.concept, *([partner_name] if partner_name else [])],
                       [layer])
    concept = library.vector(args.concept, layer)
    partner = library.vector(partner_name, layer) if partner_name else None
    judge = _judge(args)
    with progress_bar("trials", unit="trial") as update:
        run = run_trials(loaded, concept, spec, config, judge=judge, progress=update,
                         partner=partner)
    common.write_table(run.trials, args.out)
    summary = {k: common.plain(v) for k, v in run.summary().items()}
    controls = run.controls()
    if args.json:
        print(json.dumps({
            "model": loaded.name, "concept": concept.name, "layer": layer,
            "strength": spec.strength, "scale": spec.scale, "positions": spec.positions,
            "vector_norm": run.vector_norm, "mean_residual_norm": run.mean_residual_norm,
            "effective_magnitude": run.effective_magnitude,
            "relative_magnitude": run.relative_magnitude, "partner": run.partner,
            "summary": summary, "rates": common.records(run.rates()),
            "controls": common.records(controls), "trials": common.records(run.trials)}))
        return 0
    print(f"{loaded.name}: concept '{concept.name}' at layer {layer}, strength {spec.strength} "
          f"({spec.scale}), positions {spec.positions}: adds a vector of norm "
          f"{run.effective_magnitude:.2f} = {run.relative_magnitude:.2f} x the layer's mean "
          f"residual norm {run.mean_residual_norm:.2f} (||v|| {run.vector_norm:.2f})")
    for row in common.records(run.trials):
        if row["answer_yes"] is not None:
            marks = "  " + {True: "Y", False: "n"}[row["answer_yes"]] + " "
        else:
            marks = "".join(flag if row[key] else "." for flag, key in
                            (("C", "coherent"), ("A", "affirmative"), ("N", "names_concept"),
                             ("I", "identified")))
        reply = " ".join(str(row["reply"]).split())
        print(f"[{row['condition']:>15} #{row['trial']}] {marks}  {reply[:140]}")
    print("marks: C coherent, A affirmative, N names the concept, I identified (immediacy rule); "
          "Y/n: the yes/no question answered yes/no")
    _print_controls(controls)
    print(f"net = identification {_fmt(summary['identification'])} - false positives "
          f"{_fmt(summary['false_positive'])} = {_fmt(summary['net'])}")
    return 0


def _print_controls(controls: Any) -> None:
    """One line per arm: its measure's rate with interval, beside its reference arm's."""
    print(f"{'arm':>15}  {'n':>4}  {'measure':<10} {'rate [95% CI]':<19} "
          f"{'chance (arm)':<30} {'difference [95% CI]'}")
    for row in common.records(controls):
        chance = "-"
        difference = ""
        if row["reference"] is not None:
            chance = (f"{_fmt(row['reference_rate'])} [{_fmt(row['reference_lo'])}, "
                      f"{_fmt(row['reference_hi'])}] ({row['reference']})")
            difference = _interval(row, "difference")
        print(f"{row['control']:>15}  {row['n']:>4}  {row['measure']:<10} "
              f"{_interval(row, 'rate'):<19} {chance:<30} {difference}")


def cmd_sweep(args: argparse.Namespace) -> int:
    from core.runtime.layers import parse_layers
    from core.sense.introspection import (
        SweepConfig,
        config_dict,
        control_table,
        run_sweep,
        sweep_summary,
    )

    common.set_threads(args.threads)
    trial_config = _trial_config(args)
    concepts = common.split_list(args.concepts, "concept")
    strengths = common.float_list(args.strengths, "strength")
    partner = _partner(args, concepts, trial_config.controls)
    loaded = common.load(args)
    layers = parse_layers(args.layers, loaded.n_layers)
    config = SweepConfig(tuple(concepts), tuple(layers), tuple(strengths), args.scale,
                         args.positions, trial_config, partner)
    library = _library(args, loaded, config.needed_concepts(), layers)
    judge = _judge(args)
    journal = args.journal or (f"{args.out}.journal.jsonl" if args.out else None)
    with progress_bar("sweep", unit="trial") as update:
        trials = run_sweep(loaded, library, config, judge=judge, progress=update,
                           journal=journal)
    common.write_table(trials, args.out)
    if journal and args.out and not args.journal:
        Path(journal).unlink(missing_ok=True)  # the table is written: the journal has served
    summary = sweep_summary(trials)
    controls = control_table(trials)
    if args.json:
        print(json.dumps({"model": loaded.name, "config": config_dict(config),
                          "rows": common.records(controls),
                          "settings": common.records(summary)}))
        return 0
    print(f"{loaded.name}: {len(trials)} trials, {trial_config.n_trials} per injected arm, "
          f"{trial_config.n_shared} per arm without injection, scale {args.scale}, positions "
          f"{args.positions}")
    for line in _shared_lines(controls):
        print(line)
    print("push: strength x ||u|| (its ratio to the layer's mean residual norm). detect: coherent "
          "claims of a detection (95% CI),\nbeside the false positives above; ident: the concept "
          "named after the claim; net = ident - false positives;\nrnd / neg / gen: detection with "
          "a random vector, -v, injection on generated tokens only; yes: 'yes' to the\nunrelated "
          "questions with injection (beside the plain rate above); named / mism: detection when "
          "asked about\nthe concept while it / another concept is injected; coher: coherent "
          "replies.")
    print(f"{'layer':>5} {'str':>5} {'concept':<10} {'push':>14}  {'detect [95% CI]':<19} ident"
          f"   net   rnd   neg   gen   yes named  mism coher")
    for row in common.records(summary):
        print(f"{row['layer']:>5} {row['strength']:>5g} {row['concept']:<10} "
              f"{_magnitude(row['effective_magnitude'], row['relative_magnitude']):>14}  "
              f"{_interval(row, 'detection'):<19} {_fmt(row['identification'])} "
              f"{_fmt(row['net'])} {_fmt(row['random_detection'])} "
              f"{_fmt(row['negated_detection'])} {_fmt(row['generation_only_detection'])} "
              f"{_fmt(row['yes_no_yes'])} {_fmt(row['named_detection'])} "
              f"{_fmt(row['mismatch_detection'])} {_fmt(row['coherence'])}")
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
    journal = args.journal or (f"{args.out}.journal.jsonl" if args.out else None)
    with progress_bar("prefill", unit="reply") as update:
        replies = run_prefill(loaded, config, progress=update, journal=journal)
    common.write_table(replies, args.out)
    if journal and args.out and not args.journal:
        Path(journal).unlink(missing_ok=True)
    summary = prefill_summary(replies)
    if args.json:
        print(json.dumps({"model": loaded.name, "strength": args.strength, "scale": args.scale,
                          "rows": common.records(summary)}))
        return 0
    print(f"{loaded.name}: apology rate, strength {args.strength} ({args.scale}); the "
          "no-injection rate (the same replies at every layer) is each row's chance")
    print(f"{'layer':>5} {'condition':<9} {'n':>4}  {'apology [95% CI]':<19} "
          f"{'- no injection [95% CI]'}")
    for row in common.records(summary):
        versus = "" if row["condition"] == "none" else _interval(row, "difference")
        print(f"{row['layer']:>5} {row['condition']:<9} {row['n']:>4}  "
              f"{_interval(row, 'apology'):<19} {versus}")
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


def cmd_judge_audit(args: argparse.Namespace) -> int:
    """A judged introspection audit with the judge model's verdicts in place of the rule's."""
    from core.data.label_audit import read_audit, write_audit
    from core.sense.grader_audit import judge_items

    if not Path(args.audit).is_file():
        raise CliError(f"Audit file {args.audit} does not exist.")
    items = [i for i in read_audit(args.audit) if i.kind == "introspection"]
    if not items:
        raise CliError(f"{args.audit} holds no introspection item.")
    common.set_threads(args.threads)
    judge = common.load(args)
    write_audit(judge_items(items, judge), args.out)
    print(f"Wrote {len(items)} items with the verdicts of {judge.name} to {args.out}; score "
          f"them with 'telltale audit-score {args.out}'.")
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
                             "residual norm x v/|v|, so the strength is the push as a share of "
                             "the layer's mean residual norm (e.g. --strengths 0.25,0.5,1)")
    parser.add_argument("--positions", default="window", choices=["window", "all", "generated"],
                        help="window: from the blank line before the question on (the paper)")


def _sampling_options(parser: argparse.ArgumentParser, trials: int, max_new: int) -> None:
    parser.add_argument("--trials", type=int, default=trials, help="trials per condition")
    parser.add_argument("--max-new-tokens", type=int, default=max_new)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)


def _trial_options(parser: argparse.ArgumentParser) -> None:
    from core.sense.arms import ALL_CONTROLS, MIN_NONE_TRIALS

    parser.add_argument("--skip-control", action="append", choices=list(ALL_CONTROLS),
                        help="leave out a control (repeatable; every control runs by default): "
                             "none, random, negated (the paper's); generation_only (inject on "
                             "the generated tokens only), yes_no (unrelated yes/no questions "
                             "with and without injection), mismatch (asked about the concept "
                             "while it or another concept is injected)")
    parser.add_argument("--min-none-trials", type=int, default=MIN_NONE_TRIALS,
                        help="trials of each arm without injection: max(this, --trials)")
    parser.add_argument("--mismatch-with", default=None, metavar="WORD",
                        help="the concept the mismatch arm injects when one concept is asked "
                             f"about (default {MISMATCH_DEFAULTS[0]}, or "
                             f"{MISMATCH_DEFAULTS[1]} for {MISMATCH_DEFAULTS[0]}); with several "
                             "concepts each one's partner is the next")
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
    _sampling_options(p, trials=20, max_new=100)
    _trial_options(p)
    p.add_argument("--journal", default=None,
                   help="JSONL journal of replies to resume from (default: OUT.journal.jsonl "
                        "with --out, removed once the table is written)")
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("prefill", help="apology rate after a prefilled word, per layer")
    _common(p)
    p.add_argument("--layers", required=True, help="e.g. 10,15,20")
    p.add_argument("--strength", type=float, default=4.0)
    p.add_argument("--scale", default="raw", choices=["raw", "relative"])
    _sampling_options(p, trials=2, max_new=40)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None, help="CSV file for the per-reply table")
    p.add_argument("--journal", default=None,
                   help="JSONL journal of replies to resume from (default: OUT.journal.jsonl "
                        "with --out, removed once the table is written)")
    p.set_defaults(func=cmd_prefill)

    p = subparsers.add_parser("judge-audit", help="a judge model's verdicts on a judged "
                              "introspection audit, to score it like the rule grader")
    model_options(p)  # --model: the judge
    p.add_argument("audit", help="audit JSONL (kind introspection) with human verdicts")
    p.add_argument("--out", required=True, help="audit JSONL to write")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=cmd_judge_audit)

    p = subparsers.add_parser("logit-lens", help="the concept token's rank per layer")
    _common(p)
    p.add_argument("--concept", required=True)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--strength", type=float, required=True)
    _injection_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_logit_lens)
