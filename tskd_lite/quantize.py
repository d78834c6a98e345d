"""A GGUF's weights re-encoded in another llama.cpp type.

On a CPU the weight type sets the speed of prompt processing, which is all of scoring, more than batching does:
llama.cpp has batched matrix kernels for Q4_0 and Q8_0 but none for Q4_1 (bench/quant.py measures it). Q8_0
re-encodes 4- and 5-bit weights with little change to the model; the benchmark reports how far log-probs move.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from tskd_lite import atomic
from tskd_lite.errors import TskdError
from tskd_lite.gguf_meta import check_gguf, identity

TYPES = ("q8_0", "q4_0", "f16")


def requantize(src: Path, dst: Path, kind: str, threads: int = 0, *, overwrite: bool = False) -> Path:
    """Write src's weights as `kind` (one of TYPES) to dst; dst appears only once it is complete."""
    from tskd_lite.backends.llama_cpp import quantize

    if kind not in TYPES:
        raise TskdError(f"--type: expected one of {', '.join(TYPES)}, got {kind!r}")
    check_gguf(src, "model")
    if dst.resolve() == src.resolve():
        raise TskdError(f"{dst}: the output is the input itself; name another file")
    if os.path.lexists(dst) and not overwrite:
        raise TskdError(f"{dst}: exists; pass --overwrite to replace it, or name another file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")  # a fresh name, no link
    os.close(fd)
    tmp = Path(name)
    if not quantize(src, tmp, kind, threads):
        tmp.unlink(missing_ok=True)
        raise TskdError(f"{src}: llama.cpp could not re-encode it as {kind}")
    tmp.replace(dst)
    atomic.fsync_dir(dst.parent)
    return dst


def cached(src: Path, kind: str, folder: Path, threads: int = 0) -> Path:
    """src re-encoded as `kind` in folder, made once: the copy's name carries the hash of the source's identity,
    so a replaced source gets a new copy and an interrupted one leaves only a .part file, never a partial copy."""
    key = hashlib.sha256(identity(src).encode()).hexdigest()[:12]
    dst = folder / f"{src.stem}.{kind}.{key}.gguf"
    if not dst.is_file():
        requantize(src, dst, kind, threads)
    return dst
