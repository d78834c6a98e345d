"""The dataset: kept (prompt, teacher answer) pairs as chat or alpaca JSONL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from tskd_lite import atomic
from tskd_lite.store import Store

FORMATS = ("chat", "alpaca")


def _record(pair: dict, fmt: str, provenance: bool) -> dict:
    if fmt == "chat":
        record: dict = {
            "messages": [
                {"role": "user", "content": pair["prompt"]},
                {"role": "assistant", "content": pair["answer"]},
            ]
        }
    else:
        record = {"instruction": pair["prompt"], "input": "", "output": pair["answer"]}
    if provenance:
        record["tskd"] = {
            "prompt_id": pair["id"],
            "round": pair["round"],
            "source": pair["source"],
            "fewshot_ids": json.loads(pair["fewshot_ids"]),
            "paraphrase_of": pair["parent_id"],  # the kept prompt this one rephrases (paraphrase augmentation)
            "gap": pair["gap"],
            "unit": pair["unit"],
            "teacher_ppl": pair["teacher_ppl"],
            "base_ppl": pair["base_ppl"],
        }
    return record


def export(store: Store, run_id: int, path: Path, fmt: str = "chat", *, provenance: bool = False) -> int:
    """Write the run's kept pairs to path (atomically: a reader never sees half a file); return how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as f:
        return write_to(store, run_id, f, fmt, provenance=provenance)


def write_to(store: Store, run_id: int, f: IO[str], fmt: str = "chat", *, provenance: bool = False) -> int:
    """The run's kept pairs as JSON Lines into an open text file (`export -o -`: stdout); how many."""
    pairs = store.kept_pairs(run_id)
    for pair in pairs:
        f.write(json.dumps(_record(pair, fmt, provenance), ensure_ascii=False) + "\n")
    return len(pairs)
