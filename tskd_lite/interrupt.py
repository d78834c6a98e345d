"""Ctrl-C for a whole command: never lost, and never raised where it would do harm.

Python's own handler raises KeyboardInterrupt at whatever line is running. Two places make that go wrong:
- a finaliser (`__del__`, run when a model is freed): Python drops an exception raised there, printing "Exception
  ignored", so the Ctrl-C was lost and the command went on to its end (bench/chaos.py, in evaluation);
- an import (torch's, transformers'): a module left half-initialised can abort the interpreter on its way out
  (exit status -6 or -2 instead of 130, seen by bench/chaos.py between the pool and training).
There the press is remembered and SIGINT sent again a moment later, until it lands on ordinary code; and the
command's caller asks `pressed()` at the end, so that a press swallowed anyway still ends the command as one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

RETRY_SECONDS = 0.05  # when SIGINT is sent again after landing in a finaliser or an import


def _unsafe(frame) -> bool:
    """Whether the interrupted code is inside a finaliser or an import, looking up the whole stack."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def kept() -> Iterator[Callable[[], bool]]:
    """SIGINT raises KeyboardInterrupt (later where raising now would be lost or harmful) and is remembered.
    Yields a callable: whether Ctrl-C was pressed (never off the main thread: no signals there)."""
    pressed = [False]
    retries: list[threading.Timer] = []

    def on_sigint(signum, frame) -> None:
        pressed[0] = True
        if _unsafe(frame):
            timer = threading.Timer(RETRY_SECONDS, os.kill, (os.getpid(), signal.SIGINT))
            timer.daemon = True
            retries.append(timer)
            timer.start()
            return
        raise KeyboardInterrupt

    # SIGINT ignored from the start (a background job of a script) stays ignored, as Python leaves it
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: pressed[0]
    finally:
        for timer in retries:  # a retry still pending must not reach the code after the command
            timer.cancel()
        signal.signal(signal.SIGINT, previous)
