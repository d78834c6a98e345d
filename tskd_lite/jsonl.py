"""Reading the user's JSONL files (seeds, datasets, evaluation items) with one-line errors naming file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tskd_lite.errors import TskdError


def read_lines(path: Path, where: str) -> list[str]:
    """The file's lines, split at line ends only (text mode folds \\r\\n and \\r into \\n): str.splitlines() also
    splits at U+2028, U+2029, U+0085 and others, which JSON strings may hold raw (the export writes them so), and
    would cut such a record in two. A UTF-8 byte-order mark at the start is dropped."""
    try:
        return path.read_text(encoding="utf-8-sig").split("\n")
    except FileNotFoundError:
        raise TskdError(f"{where}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TskdError(f"{where}: cannot read {path}: {e}") from None


def read_jsonl(path: Path, where: str) -> Iterator[tuple[str, Any]]:
    """("path:line", parsed value) for each non-empty line; the prefix is what a caller's own error names."""
    for number, line in enumerate(read_lines(path, where), 1):
        if not line.strip():
            continue
        at = f"{where}: {path}:{number}"
        try:
            yield at, json.loads(line)
        except json.JSONDecodeError as e:
            raise TskdError(f"{at}: not valid JSON: {e.msg}") from None


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
