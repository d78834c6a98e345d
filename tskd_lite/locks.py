"""Lock files: one writer at a time for a database, a run folder or a shared conversion."""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tskd_lite.errors import TskdError


def take(path: Path, what: str, *, wait: Callable[[], None] | None = None) -> IO:
    """Hold an exclusive lock on path + ".lock" until the returned file is closed. Another holder: TskdError naming
    `what`, or, with `wait`, call it once and block until the holder lets go. The lock file's content is never
    read or changed (opened for appending), so a stray file of that name loses nothing."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock = open(lock_path, "a+")  # noqa: SIM115 (the caller closes it, that is what releases the lock)
    except OSError as e:
        raise TskdError(
            f"{lock_path}: cannot create the lock file ({e.strerror or e}); is the folder writable?"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if wait is None:
            lock.close()
            raise TskdError(f"{path}: locked: {what}") from None
        wait()
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


@contextmanager
def held(path: Path, what: str, *, wait: Callable[[], None] | None = None) -> Iterator[None]:
    lock = take(path, what, wait=wait)
    try:
        yield
    finally:
        lock.close()
