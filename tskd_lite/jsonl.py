"""Reading the user's JSONL files (seeds, datasets, evaluation items) with one-line errors naming file and line."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tskd_lite.errors import TskdError


def read_lines(path: Path, where: str) -> list[str]:
    """The file's lines, split at line ends only (text mode folds \\r\\n and \\r into \\n): str.splitlines() also
    splits at U+2028, U+2029, U+0085 and others, which JSON strings may hold raw (the export writes them so), and
    would cut such a record in two. A UTF-8 byte-order mark at the start is dropped."""
    check_input_file(path, where)
    try:
        return path.read_text(encoding="utf-8-sig").split("\n")
    except FileNotFoundError:
        raise TskdError(f"{where}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TskdError(f"{where}: cannot read {path}: {e}") from None


MAX_TEXT_BYTES = 256 << 20  # seeds, names, datasets and evaluation items: far more than any of them needs


def check_input_file(path: Path, where: str, max_bytes: int = MAX_TEXT_BYTES) -> None:
    """A regular file of at most max_bytes, or TskdError: a folder, a device (/dev/urandom never ends), a FIFO
    (a read would wait for a writer) or a huge file is refused before anything reads it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise TskdError(f"{where}: file not found: {path}") from None
    except OSError as e:
        raise TskdError(f"{where}: cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise TskdError(f"{where}: {path} is {kind} (expected a text file)")
    if st.st_size > max_bytes:
        raise TskdError(f"{where}: {path} is {st.st_size >> 20} MiB, more than the {max_bytes >> 20} MiB allowed")


def read_jsonl(path: Path, where: str) -> Iterator[tuple[str, Any]]:
    """("path:line", parsed value) for each non-empty line; the prefix is what a caller's own error names."""
    for number, line in enumerate(read_lines(path, where), 1):
        if not line.strip():
            continue
        at = f"{where}: {path}:{number}"
        try:
            value = json.loads(line)
            json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone "\ud800" escape parses but is no text
        except json.JSONDecodeError as e:
            raise TskdError(f"{at}: not valid JSON: {e.msg}") from None
        except UnicodeEncodeError:
            raise TskdError(f"{at}: a string holds a lone surrogate escape (\\ud800-\\udfff), not text") from None
        yield at, value


@dataclass(frozen=True)
class EvalItem:
    prompt: str
    answer: str
    aliases: tuple[str, ...] = ()


def read_eval_file(path: Path, where: str) -> list[EvalItem]:
    items = []
    for at, row in read_jsonl(path, where):
        ok = isinstance(row, dict) and all(isinstance(row.get(k), str) and row[k].strip() for k in ("prompt", "answer"))
        aliases = row.get("aliases", []) if isinstance(row, dict) else None
        if not ok or not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise TskdError(f'{at}: expected {{"prompt": str, "answer": str, "aliases"?: [str]}}')
        items.append(EvalItem(row["prompt"], row["answer"], tuple(aliases)))
    if not items:
        raise TskdError(f"{where}: {path} holds no items")
    return items
