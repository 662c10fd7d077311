"""The `telltale` command line: thin wrappers over `core`, one subcommand per task.

Errors a user can fix (a model that will not load, a bad trace file, a wrong option) print one
clear sentence to stderr and exit with status 2, never a traceback (TELLTALE_DEBUG=1 shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core import __version__

EXIT_USAGE = 2


class CliError(Exception):
    """An error the user can fix; its message is printed as it is."""


@contextmanager
def progress_bar(desc: str, unit: str = "chain") -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar on stderr driven by core's (done, total) progress callbacks."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _load(args: argparse.Namespace) -> Any:
    from core.models import LoadOptions, load_model

    options = LoadOptions(device=args.device, dtype=args.dtype, device_map=args.device_map,
                          trust_remote_code=args.trust_remote_code, layer_path=args.layer_path)
    return load_model(args.model, options)


def _read_traces(path: str, segmenter_mode: str = "lines", pattern: str | None = None,
                 fmt: str = "auto") -> Any:
    from core.importers import import_traces
    from core.steps import Segmenter

    file = Path(path)
    if not file.is_file():
        raise CliError(f"Trace file {path} does not exist.")
    load = import_traces(file, fmt, segmenter=Segmenter(segmenter_mode, pattern))
    for issue in load.issues[:20]:
        print(f"warning: skipped {issue}", file=sys.stderr)
    if len(load.issues) > 20:
        print(f"warning: ... and {len(load.issues) - 20} more problems", file=sys.stderr)
    if not load.traces:
        raise CliError(f"{path} holds no valid trace ({load.n_lines} lines, "
                       f"{len(load.issues)} problems).")
    if load.issues:
        print(f"Loaded {len(load.traces)} traces from {path}, skipped {load.n_skipped}.",
              file=sys.stderr)
    return load.traces


def cmd_info(args: argparse.Namespace) -> int:
    info = _load(args).info()
    if args.json:
        print(json.dumps(info))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            shown = f"{value:,}" if key == "n_params" else value
            print(f"{key:<{width}}  {shown}")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from core.feature_store import CaptureConfig, capture_traces, parse_shard
    from core.layers import parse_layers
    from core.pooling import check_poolings

    traces = _read_traces(args.traces, args.segmenter, args.pattern)
    loaded = _load(args)
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
    from core.atomic import atomic_write_text
    from core.feature_store import signal_table

    traces = _read_traces(args.traces, args.segmenter, args.pattern)
    loaded = _load(args)
    with progress_bar("signals") as update:
        table = signal_table(loaded, traces, batch_size=args.batch_size, progress=update)
    atomic_write_text(args.out, table.to_csv(index=False))
    print(f"Wrote {len(table)} step rows to {args.out}.")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from core.steps import Segmenter
    from core.traces import read_traces

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
    from core.sample_data import make_arith_traces

    loaded = _load(args)
    with progress_bar("generate", unit="reply") as update:
        summary = make_arith_traces(
            loaded, out=args.out, n_problems=args.problems, samples=args.samples,
            seed=args.seed, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            batch_size=args.batch_size, progress=update, split_test=args.test_share,
            min_ops=args.min_ops, max_ops=args.max_ops, max_number=args.max_number)
    print(summary)
    return 0


def _model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="default",
                       help="'default' (embedded SmolLM2-135M-Instruct), a hub id, a local "
                            "folder or a .gguf file")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16",
                                                           "float16"])
    group.add_argument("--device-map", default=None, choices=["auto"],
                       help="'auto' spreads a large model over every visible GPU")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="allow a model repository's own code to run")
    group.add_argument("--layer-path", default=None,
                       help="attribute path of the decoder blocks for unknown architectures")


def _trace_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--traces", required=True, help="trace file (JSONL)")
    parser.add_argument("--segmenter", default="lines",
                        choices=["lines", "sentences", "numbered", "regex"],
                        help="how a plain 'response' text is split into steps")
    parser.add_argument("--pattern", default=None, help="step-start regex for --segmenter regex")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telltale", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"telltale {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="load a model and print its card")
    _model_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("capture", help="pooled per-step residual vectors and signals of traces")
    _model_options(p)
    _trace_options(p)
    p.add_argument("--layers", required=True, help="e.g. 8,15 or 0-29 or all; negatives count "
                                                   "from the end")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--poolings", default="exp,exp3,mean,last,causal,prefix_mean")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--shard", default="0/1", help="i/N: take every N-th chain starting at i")
    p.add_argument("--max-tokens", type=int, default=2048)
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("signals", help="per-step baseline signals (entropy, NLL) as CSV")
    _model_options(p)
    _trace_options(p)
    p.add_argument("--out", required=True, help="CSV file")
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(func=cmd_signals)

    p = sub.add_parser("validate", help="check a trace file and list every problem")
    _trace_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("make-traces", help="the model writes and labels arithmetic chains")
    _model_options(p)
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

    from core import cli_control, cli_diagnose, cli_live, cli_sense

    cli_diagnose.register(sub)
    cli_live.register(sub)
    cli_sense.register(sub)
    cli_control.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from core.models import ModelLoadError
    from core.traces import TraceFileError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, ModelLoadError, TraceFileError, ValueError, KeyError,
            FileNotFoundError) as err:
        if os.environ.get("TELLTALE_DEBUG"):  # the full traceback, for a bug report
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"telltale {args.command}: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
