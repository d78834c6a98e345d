"""A GGUF's weights re-encoded in another llama.cpp type.

On a CPU the weight type sets the speed of prompt processing, which is all of scoring, more than batching does:
llama.cpp has batched matrix kernels for Q4_0 and Q8_0 but none for Q4_1 (bench/quant.py measures it). Q8_0
re-encodes 4- and 5-bit weights with little change to the model; the benchmark reports how far log-probs move.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path

from tskd_lite import atomic
from tskd_lite.errors import TskdError
from tskd_lite.gguf_meta import check_gguf

TYPES = ("q8_0", "q4_0", "f16")


def requantize(src: Path, dst: Path, kind: str, threads: int = 0, *, overwrite: bool = False) -> Path:
    """Write src's weights as `kind` (one of TYPES) to dst; dst appears only once it is complete."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    if kind not in TYPES:
        raise TskdError(f"--type: expected one of {', '.join(TYPES)}, got {kind!r}")
    check_gguf(src, "model")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    params.allow_requantize = True  # the source is usually quantized already
    params.nthread = threads or os.cpu_count() or 1
    if dst.resolve() == src.resolve():
        raise TskdError(f"{dst}: the output is the input itself; name another file")
    if os.path.lexists(dst) and not overwrite:
        raise TskdError(f"{dst}: exists; pass --overwrite to replace it, or name another file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")  # a fresh name, no link
    os.close(fd)
    tmp = Path(name)
    with suppress_stdout_stderr(disable=False):  # llama.cpp logs every tensor
        failed = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if failed:
        tmp.unlink(missing_ok=True)
        raise TskdError(f"{src}: llama.cpp could not re-encode it as {kind}")
    tmp.replace(dst)
    atomic.fsync_dir(dst.parent)
    return dst
