"""The one progress callback every long `core` function takes: `progress(done, total)`, called
after each unit of work (a chain, a batch, a trial), so a command-line bar (tqdm) or a page's
progress bar can follow it. A leaf module: it imports nothing from `core`."""

from collections.abc import Callable

Progress = Callable[[int, int], None]
