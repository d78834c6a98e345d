"""Reading the user's JSONL files (seeds, datasets, evaluation items) with one-line errors naming file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tskd_lite.errors import TskdError


def read_lines(path: Path, where: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
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
