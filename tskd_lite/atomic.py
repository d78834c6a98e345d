"""Files written whole or not at all: a reader, or a run resumed after a kill, never sees half of one.

The temporary file gets a fresh name made with O_EXCL (mkstemp) beside the target: it never follows a symlink left
under a guessable name, never truncates someone else's file, and two processes writing the same path at once do
not share it. The data is flushed to disk before the rename, and the rename itself before returning.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def replacing(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file open for writing ("w" text, "wb" bytes) that replaces path once the block ends without an error."""
    with _temporary(Path(path)) as (fd, _):
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextmanager
def replacing_path(path: Path, *, replace: bool = True) -> Iterator[Path]:
    """For a writer that takes a path rather than a file: the path of a fresh empty file beside `path` (made as
    replacing() makes its file), flushed to disk and renamed over path once the block ends without an error.
    replace=False: linked in under path only if nothing is there by then (FileExistsError otherwise)."""
    with _temporary(Path(path), replace=replace) as (fd, tmp):
        os.close(fd)
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)  # the writer may have replaced it: never follow a link
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def _temporary(path: Path, *, replace: bool = True) -> Iterator[tuple[int, str]]:
    """(fd, name) of a fresh file beside path; renamed over path (replace=False: linked in, never over a file that
    appeared meanwhile) when the block ends without an error (the block flushes it), removed when it raises."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a result file gets the permissions open() would give
        yield fd, tmp
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    with replacing(path) as f:
        f.write(text)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside folder durable (a crash right after it cannot bring the old name back)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
