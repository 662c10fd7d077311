"""`telltale info | validate | make-problems | make-traces | audit-sample | audit-score`: the
model's card, trace files, problem sets, labelled chains from any problem set, and hand audits
of labels."""

from __future__ import annotations

import argparse
import json
import shlex
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


def _arith_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("Telltale's arithmetic problems")
    group.add_argument("--min-ops", type=int, default=2, help="fewest operations per problem")
    group.add_argument("--max-ops", type=int, default=8, help="most operations per problem")
    group.add_argument("--max-number", type=int, default=99,
                       help="largest starting value and amount added or subtracted")


def _command(name: str, args: argparse.Namespace, options: list[str]) -> str:
    """The command line that repeats this run: the named options with their values."""
    parts = ["telltale", name]
    for option in options:
        value = getattr(args, option.lstrip("-").replace("-", "_"))
        if value is None or value is False:
            continue
        parts += [option] if value is True else [option, str(value)]
    return shlex.join(parts)


def cmd_make_problems(args: argparse.Namespace) -> int:
    from core.data.atomic import atomic_write_text
    from core.data.problems import arith_problem_set, write_problems

    problems = arith_problem_set(args.n, seed=args.seed, min_ops=args.min_ops,
                                 max_ops=args.max_ops, max_number=args.max_number)
    write_problems(args.out, problems)
    meta = {"source": "telltale-arith", "shape": "gsm8k", "n_problems": len(problems),
            "arguments": {"n": args.n, "seed": args.seed, "min_ops": args.min_ops,
                          "max_ops": args.max_ops, "max_number": args.max_number},
            "regenerate": _command("make-problems", args, [
                "--out", "--n", "--seed", "--min-ops", "--max-ops", "--max-number"])}
    atomic_write_text(Path(args.out).with_suffix(".meta.json"), json.dumps(meta, indent=2) + "\n")
    print(f"Wrote {len(problems)} problems with worked solutions (GSM8K's shape) to {args.out}.")
    return 0


def _prompt(args: argparse.Namespace) -> Any:
    from core.data.problems import read_problems
    from core.data.prompting import DEFAULT_EXAMPLE, Example, PromptSpec

    if args.examples == "default":
        examples: tuple[Example, ...] = (DEFAULT_EXAMPLE,)
    elif args.examples == "none":
        examples = ()
    else:
        spec = PromptSpec(answer_format=args.answer_format)
        examples = tuple(
            Example(p.question, _solution_lines(p.solution or "", spec), p.gold or "")
            for p in read_problems(args.examples, limit=args.n_examples))
    return PromptSpec(system=args.system, examples=examples, answer_format=args.answer_format,
                      instruction=args.instruction)


def _solution_lines(solution: str, spec: Any) -> str:
    """A worked solution without its final answer line ("#### N"), which the prompt's answer
    format states instead; calculator annotations ("<<4+3=7>>") removed."""
    import re

    lines = [re.sub(r"<<[^<>\n]*>>", "", line).rstrip() for line in solution.splitlines()]
    return "\n".join(line for line in lines if line.strip() and not line.strip()
                     .startswith("####"))


def _problems(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    from core.data.problems import arith_problem_set, read_problems

    if args.problems == "arith":
        n = args.n_problems if args.n_problems is not None else 40
        info = {"kind": "arith", "n": n, "seed": args.seed, "min_ops": args.min_ops,
                "max_ops": args.max_ops, "max_number": args.max_number}
        return arith_problem_set(n, seed=args.seed, min_ops=args.min_ops, max_ops=args.max_ops,
                                 max_number=args.max_number), info
    if args.problems.isdigit() and not Path(args.problems).exists():
        raise CliError(f"--problems takes 'arith' or a problem file, not a count; for "
                       f"{args.problems} arithmetic problems use --problems arith --n-problems "
                       f"{args.problems}.")
    problems = read_problems(args.problems, args.question_field, args.answer_field,
                             args.id_field, limit=args.n_problems)
    return problems, {"kind": "file", "path": args.problems, "n": len(problems),
                      "question_field": args.question_field,
                      "answer_field": args.answer_field}


def _check_judge(args: argparse.Namespace) -> None:
    if args.step_labels != "judge":
        if args.judge_model or args.judge_url:
            raise CliError("--judge-model/--judge-url are for --step-labels judge.")
    elif not args.judge_model:
        raise CliError("--step-labels judge needs --judge-model (a model spec, or with "
                       "--judge-url the endpoint's model name).")


def _judge(args: argparse.Namespace, loaded: Any) -> Any:
    from core.data.judge import EndpointJudge, LocalJudge, api_key

    if args.step_labels != "judge":
        return None
    if args.judge_url:
        return EndpointJudge(args.judge_url, args.judge_model, api_key(args.judge_key_env))
    if args.judge_model == args.model:
        return LocalJudge(loaded)
    return LocalJudge(common.load(argparse.Namespace(**{**vars(args),
                                                         "model": args.judge_model})))


_MAKE_TRACES_OPTIONS = [
    "--model", "--out", "--problems", "--n-problems", "--question-field", "--answer-field",
    "--n", "--seed", "--max-new-tokens", "--temperature", "--top-p", "--batch-size",
    "--min-ops", "--max-ops", "--max-number", "--test-share", "--step-labels",
    "--prefix-labels", "--system", "--examples", "--n-examples", "--answer-format",
    "--instruction", "--no-stop", "--judge-model", "--judge-url", "--judge-prompt"]


def cmd_make_traces(args: argparse.Namespace) -> int:
    from core.data.answers import DEFAULT_PATTERNS, AnswerFormat, parse_number
    from core.data.judge import JudgePrompt
    from core.data.sample_data import MakeTracesConfig, make_traces
    from core.data.steps import Segmenter
    from core.runtime.generate import SamplingConfig

    common.set_threads(args.threads)
    problems, info = _problems(args)
    step_labels = args.step_labels or ("rule" if args.problems == "arith" else "none")
    args.step_labels = step_labels
    _check_judge(args)
    prompt = _prompt(args)
    patterns = AnswerFormat((*DEFAULT_PATTERNS, *args.answer_pattern),
                            numeric=all(parse_number(p.gold or "") is not None
                                        for p in problems))
    config = MakeTracesConfig(
        n=args.n, sampling=SamplingConfig(args.max_new_tokens, args.temperature, args.top_p,
                                          args.seed), batch_size=args.batch_size,
        test_share=args.test_share, step_labels=step_labels, prefix_labels=args.prefix_labels,
        prompt=prompt, answers=prompt.reader(patterns) if args.answer_pattern else None,
        stop_at_answer=not args.no_stop, segmenter=Segmenter(args.segmenter, args.pattern),
        source="telltale-arith" if args.problems == "arith" else "telltale-make-traces",
        judge_attempts=args.judge_attempts,
        judge_workers=args.judge_workers if args.judge_url else 1)
    judge_prompt = JudgePrompt.load(args.judge_prompt) if step_labels == "judge" else None
    loaded = common.load(args)
    judge = _judge(args, loaded)
    with progress_bar("generate", unit="reply") as update, \
            progress_bar("judge", unit="chain") as judged:
        summary = make_traces(loaded, problems, args.out, config, judge=judge,
                              judge_prompt=judge_prompt, progress=update,
                              judge_progress=judged, problems_info=info,
                              command=_command("make-traces", args, _MAKE_TRACES_OPTIONS))
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(summary)
    return 0


SENSE_KINDS = ("introspection", "prefill")


def cmd_audit_sample(args: argparse.Namespace) -> int:
    from core.data.label_audit import INSTRUCTIONS, sample_audit, write_audit

    if args.kind in SENSE_KINDS:  # the replies of a Sense run: --traces is its --out table
        from core.sense.grader_audit import INSTRUCTIONS as SENSE_INSTRUCTIONS
        from core.sense.grader_audit import sample_grader_audit

        items = sample_grader_audit(args.traces, args.kind, args.n, args.seed, args.balanced)
        instructions = SENSE_INSTRUCTIONS[args.kind]
    else:
        traces = common.read_traces(args.traces, args.segmenter, args.pattern, args.format)
        items = sample_audit(traces, args.n, seed=args.seed, kind=args.kind)
        instructions = INSTRUCTIONS[args.kind]
    write_audit(items, args.out)
    print(f"Wrote {len(items)} items ({args.kind}) to judge to {args.out}: on each line, "
          f"{instructions}; then run 'telltale audit-score {args.out}'.")
    return 0


def cmd_audit_score(args: argparse.Namespace) -> int:
    from core.data.label_audit import read_audit, score_audit

    score = score_audit(read_audit(args.audit))
    if args.json:
        print(json.dumps(score.as_dict()))
        return 0
    print(f"{score.n_judged} of {score.n_items} items judged ({', '.join(score.kinds)}); "
          f"{score.n_unjudged} not judged yet.")
    for agreement in score.fields:
        kappa = "n/a" if agreement.kappa is None else f"{agreement.kappa:.2f}"
        print(f"{agreement.field}: {agreement.n_agree}/{agreement.n_judged} agree "
              f"({agreement.rate:.1%}, 95% CI {agreement.ci_low:.1%}-{agreement.ci_high:.1%}), "
              f"Cohen's kappa {kappa}")
        if agreement.confusion:
            print("  confusion: " + ", ".join(f"{k} {v}" for k, v in
                                              agreement.confusion.items()))
        for item in agreement.disagreements:
            print(f"  - {item.id}: machine {json.dumps(item.machine[agreement.field])}, human "
                  f"{json.dumps(item.human.get(agreement.field))}: {item.text[:120]!r}"
                  + (f" ({item.note})" if item.note else ""))
    return 0


def register(sub: Any) -> None:
    from core.data.judge import DEFAULT_PROMPT_FILE, KEY_ENV_VARS

    p = sub.add_parser("info", help="load a model and print its card")
    model_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("validate", help="check a trace file and list every problem")
    trace_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("make-problems", help="write arithmetic word problems with worked "
                                             "solutions in GSM8K's shape")
    p.add_argument("--out", required=True, help="JSONL file; a .meta.json sidecar goes beside it")
    p.add_argument("--n", type=int, default=200, help="number of problems")
    p.add_argument("--seed", type=int, default=0)
    _arith_options(p)
    p.set_defaults(func=cmd_make_problems)

    p = sub.add_parser(
        "make-traces", help="the model answers a problem set; its chains are labelled",
        description="The model writes chains of thought for a problem set; answers are read "
                    "strictly (an explicit 'Answer: N', '#### N', '\\boxed{N}' or 'The answer "
                    "is N'; none: unanswered) and steps labelled by the arithmetic rule, a "
                    "judge model or not at all. Replies and verdicts are journalled beside OUT "
                    "(OUT.replies.jsonl, OUT.judge.jsonl): an interrupted run resumes and a "
                    "rerun samples and judges nothing again.")
    model_options(p)
    p.add_argument("--out", required=True, help="JSONL file; a .meta.json sidecar goes beside it")
    p.add_argument("--problems", default="arith",
                   help="'arith' (Telltale's arithmetic word problems) or a problem file: JSONL, "
                        "JSON, CSV or Parquet in GSM8K's shape (question, answer ending in "
                        "'#### N'), MATH's (problem, solution with \\boxed{}) or any other with "
                        "--question-field/--answer-field")
    p.add_argument("--n-problems", type=int, default=None,
                   help="arith: how many to generate (default 40); a file: its first N (default "
                        "all)")
    p.add_argument("--question-field", default=None)
    p.add_argument("--answer-field", default=None,
                   help="the gold is its '#### N' line, else its last \\boxed{}, else all of it")
    p.add_argument("--id-field", default="id")
    p.add_argument("--n", "--samples", dest="n", type=int, default=2, help="chains per problem")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (and arith problems')")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    _arith_options(p)
    p.add_argument("--test-share", type=float, default=0.0,
                   help="if > 0, write OUT_train/OUT_test split by problem instead of OUT")
    labels = p.add_argument_group("labels")
    labels.add_argument("--step-labels", choices=["rule", "judge", "none"], default=None,
                        help="rule: the arithmetic checker (default for arith); judge: a judge "
                             "model; none: outcome only (default for a file)")
    labels.add_argument("--prefix-labels", choices=["paper", "any-so-far"], default="paper",
                        help="paper: 1 while on a path to a wrong answer, back to 0 after a "
                             "recovery, last = wrong or missing answer; any-so-far: 1 from the "
                             "first wrong step on")
    labels.add_argument("--segmenter", default="lines",
                        choices=["lines", "sentences", "numbered", "regex"])
    labels.add_argument("--pattern", default=None, help="step-start regex for --segmenter regex")
    prompting = p.add_argument_group("prompt")
    prompting.add_argument("--system", default=None, help="system message (default: none)")
    prompting.add_argument("--examples", default="default",
                           help="'default' (one worked arithmetic example), 'none', or a "
                                "problem file whose worked solutions are the examples")
    prompting.add_argument("--n-examples", type=int, default=2,
                           help="examples taken from an --examples file")
    prompting.add_argument("--answer-format", default="Answer: <number>",
                           help="how the answer line looks; <...> marks the answer")
    prompting.add_argument("--instruction", default=None,
                           help="text after the question ({answer_format} is replaced)")
    prompting.add_argument("--answer-pattern", action="append", default=[],
                           help="another regex for what precedes an answer (repeatable)")
    prompting.add_argument("--no-stop", action="store_true",
                           help="do not end a reply after its answer line")
    judging = p.add_argument_group("judge (--step-labels judge)")
    judging.add_argument("--judge-model", default=None,
                         help="a model spec to load (as --model), or with --judge-url the "
                              "endpoint's model name")
    judging.add_argument("--judge-url", default=None,
                         help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    judging.add_argument("--judge-key-env", default=None,
                         help=f"environment variable holding the endpoint's key (default: "
                              f"{' or '.join(KEY_ENV_VARS)})")
    judging.add_argument("--judge-prompt", default=None,
                         help=f"the judge's prompt file (default: {DEFAULT_PROMPT_FILE}; copy "
                              "and edit it; placeholders {question} {gold} {steps} {n_steps} "
                              "{answer})")
    judging.add_argument("--judge-attempts", type=int, default=3,
                         help="tries per chain when a reply cannot be parsed")
    judging.add_argument("--judge-workers", type=int, default=4,
                         help="parallel requests to an endpoint")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_make_traces)

    p = sub.add_parser("audit-sample", help="draw random labelled items for a hand check")
    trace_options(p)
    p.add_argument("--format", default="auto", help="trace format (as for train)")
    p.add_argument("--kind", default="steps", choices=["steps", "answers", "judge",
                                                        *SENSE_KINDS],
                   help="steps: step labels; answers: the strict answer reader; judge: a "
                        "judge's step and prefix labels; introspection / prefill: the Sense "
                        "graders' verdicts on the replies of a sweep/inject or prefill run "
                        "(--traces: the run's --out table)")
    p.add_argument("--balanced", action="store_true",
                   help="introspection / prefill: half the items from replies the grader "
                        "marked positive")
    p.add_argument("--n", type=int, default=100, help="number of items")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="audit JSONL to fill in (the 'human' fields)")
    p.set_defaults(func=cmd_audit_sample)

    p = sub.add_parser("audit-score", help="agreement of machine labels with a hand check")
    p.add_argument("audit", help="audit JSONL with the human verdicts filled in")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit_score)

