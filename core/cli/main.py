"""The `telltale` command line: thin wrappers over `core`, one subcommand per task.

`build_parser` asks each command module (`data`, `diagnose`, `live`, `sense`, `control`) to
register its subcommands; what they share lives in `core.cli.common`, and no command module
imports this one. Errors a user can fix (a model that will not load, a bad trace file, a wrong
option) print one clear sentence to stderr and exit with status 2, never a traceback
(TELLTALE_DEBUG=1 shows it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from core import __version__
from core.cli import control, data, diagnose, live, sense
from core.cli.common import EXIT_USAGE, CliError

COMMAND_MODULES = (data, diagnose, live, sense, control)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telltale", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"telltale {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from core.data.records import TraceFileError
    from core.runtime.models import ModelLoadError

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
