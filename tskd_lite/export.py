"""The dataset: kept (prompt, teacher answer) pairs as chat or alpaca records, in JSON Lines or one JSON array."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from tskd_lite import atomic
from tskd_lite.errors import TskdError
from tskd_lite.store import Store

FORMATS = ("chat", "alpaca")  # the shape of each record
# The file formats, chosen by the output's extension; no extension is JSON Lines, what the pipeline writes and
# training reads. A nested chat record has no flat CSV form, and Parquet would need a dependency: both are refused.
FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", "": "jsonl", ".json": "json"}
ACCEPTED = ".jsonl or .ndjson (JSON Lines), .json (one JSON array), or - (JSON Lines to stdout)"


def file_format(path: Path, where: str = "-o/--output") -> str:
    """The file format path's extension names ("jsonl" or "json"); TskdError naming the path for any other, so
    out.parquet is refused rather than given JSON Lines under a name that says otherwise."""
    found = FILE_FORMATS.get(Path(path).suffix.lower())
    if found is None:
        raise TskdError(f"{where}: {path}: export cannot write {Path(path).suffix} files; it writes {ACCEPTED}")
    return found


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


def export(
    store: Store, run_id: int, path: Path, fmt: str = "chat", *, provenance: bool = False, layout: str = "jsonl"
) -> int:
    """Write the run's kept pairs to path (atomically: a reader never sees half a file); return how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as f:
        return write_to(store, run_id, f, fmt, provenance=provenance, layout=layout)


def write_to(
    store: Store, run_id: int, f: IO[str], fmt: str = "chat", *, provenance: bool = False, layout: str = "jsonl"
) -> int:
    """The run's kept pairs into an open text file (`export -o -`: stdout), as JSON Lines (layout "jsonl") or one
    JSON array with a record a line ("json"); how many."""
    pairs = store.kept_pairs(run_id)
    lines = (json.dumps(_record(pair, fmt, provenance), ensure_ascii=False) for pair in pairs)
    if layout == "jsonl":
        for line in lines:
            f.write(line + "\n")
    else:
        f.write("[\n" + ",\n".join(lines) + ("\n]\n" if pairs else "]\n"))
    return len(pairs)
