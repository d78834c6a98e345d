"""Read what we need from a GGUF file's header without loading weights: validity, chat template, vocabulary.

A small parser of our own: gguf.GGUFReader builds a numpy view per vocabulary entry and takes ~10 s on a
49k-token vocabulary here, while walking the header with struct takes a fraction of a second.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from tskd_lite.errors import TskdError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# The GGUF spec's key form (lower_snake_case, dot-separated); tensor names are printable ASCII without spaces.
_KEY = re.compile(r"[a-z0-9_\-]+(\.[a-z0-9_\-]+)*")
_TENSOR_NAME = re.compile(r"[\x21-\x7e]{1,64}")


@dataclass(frozen=True)
class GGUFHeader:
    fields: dict[str, object]  # scalars and strings decoded; arrays kept as their raw bytes
    tensors: dict[str, tuple[tuple[int, ...], int, int]]  # name -> (dims, ggml type, offset in data)
    data_start: int


class _Cursor:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        raw = self.buf[self.pos : self.pos + n]
        if len(raw) != n:
            raise ValueError("string runs past the end of the file")
        self.pos += n
        return raw.decode("utf-8")  # strict, as the gguf package reads it: a damaged byte is refused, not replaced

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.take("<I"), self.take("<Q")
            start = self.pos
            if item == _STRING:
                for _ in range(count):
                    self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]
            elif item in _SCALARS:
                self.pos += count * struct.calcsize(_SCALARS[item])
            else:
                for _ in range(count):
                    self.value(item)
            if self.pos > len(self.buf):
                raise ValueError("array runs past the end of the file")
            return bytes(self.buf[start : self.pos])
        raise ValueError(f"unknown value type {kind}")


def read_header(path: Path, where: str) -> GGUFHeader:
    """Parse the header of a GGUF file; one-line TskdError if it is missing or not GGUF."""
    if not path.is_file():
        if path.exists():
            raise TskdError(f"{where}: {path} is {'a folder' if path.is_dir() else 'not a regular file'}")
        raise TskdError(f"{where}: file not found: {path}")
    buf = path.read_bytes() if path.stat().st_size < (64 << 20) else _read_prefix(path)
    if buf[:4] != b"GGUF":
        raise TskdError(f"{where}: {path} is not a GGUF file (bad magic bytes)")
    try:
        cur = _Cursor(buf)
        cur.pos = 4
        version = cur.take("<I")
        if version not in (2, 3):
            raise ValueError(f"version {version}, expected 2 or 3")
        n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
        # every key-value pair and tensor entry takes at least 12 bytes: counts beyond that are damage
        if n_kv * 12 > len(buf) or n_tensors * 12 > len(buf):
            raise ValueError(f"{n_kv} keys and {n_tensors} tensors cannot fit in {len(buf)} bytes")
        fields = {}
        for _ in range(n_kv):
            key = cur.string()
            if not _KEY.fullmatch(key):
                raise ValueError(f"key {key!r} is not of the form lower_snake_case.dotted")
            fields[key] = cur.value(cur.take("<I"))
        tensors = {}
        for _ in range(n_tensors):
            name = cur.string()
            if not _TENSOR_NAME.fullmatch(name):
                raise ValueError(f"tensor name {name!r} has characters no tensor name has")
            n_dims = cur.take("<I")
            if not 1 <= n_dims <= 4:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            dims = tuple(cur.take("<Q") for _ in range(n_dims))
            tensors[name] = (dims, cur.take("<I"), cur.take("<Q"))
        align = fields.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise ValueError(f"general.alignment {align!r} is not a power of two")
    except (struct.error, ValueError, UnicodeDecodeError, OverflowError) as e:
        # OverflowError: a damaged length or count sends the cursor past what struct can address
        raise TskdError(f"{where}: {path} is not a readable GGUF file (header: {e})") from None
    return GGUFHeader(fields, tensors, -(-cur.pos // align) * align)


def _read_prefix(path: Path) -> bytes:
    # Headers of real models hold the vocabulary (a few MB for 262k tokens); weights follow and are not needed.
    with path.open("rb") as f:
        return f.read(64 << 20)


def check_gguf(path: Path, where: str) -> GGUFHeader:
    """Fail with one line if the file is missing, not GGUF, or truncated (tensor data past the end of the file)."""
    from gguf import GGML_QUANT_SIZES  # deferred: only this check needs the type table

    header = read_header(path, where)
    size = path.stat().st_size
    align = header.fields.get("general.alignment", 32)
    if not header.tensors:
        raise TskdError(f"{where}: {path} is damaged (no tensors)")
    unknown = _unknown_tensor(header)
    if unknown:
        raise TskdError(f"{where}: {path} is damaged (tensor {unknown} is not one its architecture has)")
    spans = []
    for name, (dims, kind, offset) in header.tensors.items():
        if kind not in GGML_QUANT_SIZES:
            raise TskdError(f"{where}: {path} is damaged (tensor {name} has unknown type {kind})")
        block, type_size = GGML_QUANT_SIZES[kind]
        n = 1
        for d in dims:
            n *= d
        if n == 0 or offset % align or n % block:
            raise TskdError(f"{where}: {path} is damaged (tensor {name}: shape {dims}, offset {offset})")
        end = header.data_start + offset + n // block * type_size
        if end > size:
            raise TskdError(f"{where}: {path} is truncated (tensor {name} ends past the end of the file)")
        spans.append((offset, end - header.data_start, name))
    spans.sort()
    for (_, end, name), (start, _, after) in zip(spans, spans[1:], strict=False):
        if end > start:
            raise TskdError(f"{where}: {path} is damaged (tensor {name} overlaps {after})")
    return header


def _unknown_tensor(header: GGUFHeader) -> str | None:
    """The first tensor whose name the architecture (as the gguf package knows it) has no place for; None when all
    fit or the architecture is one the package does not know. LoRA adapters name the tensor they adapt + .lora_a/b."""
    from gguf.constants import MODEL_ARCH_NAMES, MODEL_TENSORS, TENSOR_NAMES

    arch = next((a for a, n in MODEL_ARCH_NAMES.items() if n == header.fields.get("general.architecture")), None)
    if arch is None:
        return None
    stems = "|".join(re.escape(TENSOR_NAMES[t]).replace(r"\{bid\}", r"\d+") for t in MODEL_TENSORS[arch])
    known = re.compile(rf"({stems})(\.[a-z_0-9]+)?(\.lora_[ab])?")
    return next((name for name in header.tensors if not known.fullmatch(name)), None)


def chat_template(path: Path) -> str | None:
    value = read_header(path, str(path)).fields.get("tokenizer.chat_template")
    return value if isinstance(value, str) else None


def vocab_fingerprint(path: Path) -> str:
    """Hash of the tokenizer model, token list and merges: equal fingerprints mean token-level scores compare."""
    fields = read_header(path, str(path)).fields
    digest = hashlib.sha256()
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        digest.update(repr(fields.get(key)).encode())
    return digest.hexdigest()[:16]


def identity(path: Path) -> str:
    """Size and content hash of a model file: what a resumed run checks, so that a file replaced in place is not
    taken for the one the run began with. Files up to 64 MiB (adapters, small models) are hashed whole; larger
    ones by their first and last 16 MiB, which hold the header and a slice of every layout's weights. A Hugging
    Face folder is identified by its safetensors files."""
    if path.is_dir():
        return ",".join(identity(f) for f in sorted(path.glob("*.safetensors")))
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= 64 << 20:
            digest.update(f.read())
        else:
            digest.update(f.read(16 << 20))
            f.seek(size - (16 << 20))
            digest.update(f.read())
    return f"{size}:{digest.hexdigest()[:16]}"


def model_name(path: Path) -> str | None:
    """The name and architecture a GGUF's header gives ("SmolLM2 135M Instruct, llama"); None where it gives
    neither or the file is no GGUF (what `check` shows beside a path, so a wrong file is seen before a run)."""
    try:
        fields = read_header(path, str(path)).fields
    except TskdError:
        return None
    parts = [v for v in (fields.get("general.name"), fields.get("general.architecture")) if isinstance(v, str)]
    return ", ".join(parts) or None
