"""The one progress callback every long `core` function takes: `progress(done, total)`, called
after each unit of work (a chain, a batch, a trial), so a command-line bar (tqdm) or a page's
progress bar can follow it; and the one way such a function is asked to end early: a
`should_stop()` check between units, which ends the run by raising `Stopped` once it says so
(what was journalled stays, so the same call resumes). A leaf module: it imports nothing from
`core`."""

from collections.abc import Callable

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


class Stopped(Exception):  # noqa: N818 - a request honoured, not an error
    """The caller's `should_stop()` said to end the run; raised between units of work."""


def check_stop(should_stop: ShouldStop | None, what: str = "The run") -> None:
    """Raise `Stopped` when `should_stop` is given and returns True."""
    if should_stop is not None and should_stop():
        raise Stopped(f"{what} was stopped by the caller.")
