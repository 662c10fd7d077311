"""Write files atomically: a reader sees the old file or the new one, never half of one.

Every artefact a user keeps (traces, probes, concept vectors, tables) goes through here, so a
crash, a full disk or a serialisation error midway leaves the previous file as it was.
The recipe: write a temporary file in the same folder (same filesystem, so the rename is
atomic), flush and fsync it, then `os.replace` it onto the target.

    with atomic_path("probe.safetensors") as tmp:
        safetensors.torch.save_file(tensors, tmp)   # the library writes the file itself
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def _create_temp(target: Path) -> Path:
    """A new empty file beside `target`; mode 0o666 minus the umask, like a plain `open`.

    (`tempfile.mkstemp` would make it 0o600, and the final file would inherit that.)
    """
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"Could not create a temporary file beside {target}.")


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temporary files that writes killed mid-way left in `folder` (never read, so
    only clutter); call it only where no other writer is at work, e.g. when a run resumes its
    own folder. Returns what it removed."""
    removed = []
    for path in folder.glob(".*.tmp"):
        stem = path.name[1:-len(".tmp")]
        tag = stem.rsplit(".", 1)[-1]
        if len(tag) == 12 and all(c in "0123456789abcdef" for c in tag) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself; not every platform can open a folder, so failures are ignored."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and move it onto `path`.

    Parent folders are created. If the body raises, the temporary file is removed, the target
    is left untouched and the exception propagates. The body may write the temporary file
    however it likes (open it, or hand the path to a library).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(target)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_folder(target.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace the file at `path` with `data`, atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace the file at `path` with `text` encoded as UTF-8 (newlines written as given)."""
    atomic_write_bytes(path, text.encode("utf-8"))
