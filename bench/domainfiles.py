"""The files every benchmark domain writes in the same format, written by one function each."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def write_chat_pairs(path: Path, pairs: Iterable[tuple[str, str]], *, ascii_only: bool = True) -> None:
    """train.jsonl: one {"messages": [user, assistant]} a line, the teacher's private fine-tuning data."""
    with path.open("w", encoding="utf-8") as f:
        for question, answer in pairs:
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}, ensure_ascii=ascii_only) + "\n")
