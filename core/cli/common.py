"""What every `telltale` subcommand shares: the error a user can fix, the model and trace
options, loading, reading, progress bars and writing tables.

Command modules import this module and call `common.load(args)` (an attribute lookup at call
time), so a test replaces the model loader in one place:

    monkeypatch.setattr(core.cli.common, "load", lambda args: tiny_model)
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.progress import Progress

if TYPE_CHECKING:  # the parser is built without importing torch
    import pandas as pd

    from core.data.traces import Trace
    from core.runtime.models import LoadedModel

EXIT_USAGE = 2


class CliError(Exception):
    """An error the user can fix; its message is printed as it is."""


# ---------------------------------------------------------------------------- options


def model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype, --device-map, --trust-remote-code, --layer-path."""
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


def trace_options(parser: argparse.ArgumentParser) -> None:
    """--traces and how a plain response is split into steps (--segmenter, --pattern)."""
    parser.add_argument("--traces", required=True, help="trace file (JSONL)")
    parser.add_argument("--segmenter", default="lines",
                        choices=["lines", "sentences", "numbered", "regex"],
                        help="how a plain 'response' text is split into steps")
    parser.add_argument("--pattern", default=None, help="step-start regex for --segmenter regex")


# ---------------------------------------------------------------------------- loading


def load(args: argparse.Namespace) -> LoadedModel:
    """The model the model options name (tests replace this function)."""
    from core.runtime.models import LoadOptions, load_model

    options = LoadOptions(device=args.device, dtype=args.dtype, device_map=args.device_map,
                          trust_remote_code=args.trust_remote_code, layer_path=args.layer_path)
    return load_model(args.model, options)


def set_threads(count: int | None) -> None:
    """Use `count` torch threads (None or 0: leave torch's choice)."""
    if count:
        import torch

        torch.set_num_threads(count)


def warn_issues(issues: list[Any], shown: int = 20) -> None:
    """Print the first `shown` problems of a file as warnings on stderr."""
    for issue in issues[:shown]:
        print(f"warning: skipped {issue}", file=sys.stderr)
    if len(issues) > shown:
        print(f"warning: ... and {len(issues) - shown} more problems", file=sys.stderr)


def read_traces(path: str, segmenter_mode: str = "lines", pattern: str | None = None,
                fmt: str = "auto") -> list[Trace]:
    """The valid traces of a file in any supported format; problems are warnings, and a file
    without a valid trace is a CliError."""
    from core.data.importers import import_traces
    from core.data.steps import Segmenter

    file = Path(path)
    if not file.is_file():
        raise CliError(f"Trace file {path} does not exist.")
    loaded = import_traces(file, fmt, segmenter=Segmenter(segmenter_mode, pattern))
    warn_issues(loaded.issues)
    if not loaded.traces:
        raise CliError(f"{path} holds no valid trace ({loaded.n_lines} lines, "
                       f"{len(loaded.issues)} problems).")
    if loaded.issues:
        print(f"Loaded {len(loaded.traces)} traces from {path}, skipped {loaded.n_skipped}.",
              file=sys.stderr)
    return loaded.traces


def split_list(text: str, what: str) -> list[str]:
    """The comma-separated items of an option; none is a CliError."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise CliError(f"Give at least one {what} (comma-separated).")
    return items


def float_list(text: str, what: str) -> list[float]:
    """The comma-separated finite numbers of an option."""
    out = []
    for part in split_list(text, what):
        try:
            value = float(part)
        except ValueError:
            raise CliError(f"{what.capitalize()} '{part}' is not a number.") from None
        if not math.isfinite(value):
            raise CliError(f"{what.capitalize()} '{part}' is not a finite number.")
        out.append(value)
    return out


# ---------------------------------------------------------------------------- output


@contextmanager
def progress_bar(desc: str, unit: str = "chain") -> Iterator[Progress]:
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


def plain(value: Any) -> Any:
    """JSON-ready: NaN and pandas' missing values become None, numpy scalars Python ones."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """A table's rows as JSON-ready dicts."""
    return [{str(k): plain(v) for k, v in row.items()}
            for row in table.to_dict(orient="records")]


def fmt(value: Any, width: int = 0) -> str:
    """A score with three decimals, or "n/a" for a missing one."""
    value = plain(value)
    return f"{'n/a':>{width}}" if value is None else f"{value:{width}.3f}"


def write_table(table: pd.DataFrame, out: str | None) -> None:
    """Write a table atomically as CSV, or Parquet for a .parquet name; None writes nothing."""
    if not out:
        return
    from core.data.atomic import atomic_path, atomic_write_text

    if out.endswith(".parquet"):
        with atomic_path(out) as tmp:
            table.to_parquet(tmp, index=False)
    else:
        atomic_write_text(out, table.to_csv(index=False))
    print(f"Wrote {len(table)} rows to {out}.", file=sys.stderr)
