"""The SQLite store: every prompt, answer, score and selection of every run, committed step by step.

Progress is never kept in memory only: what a step has done is what the tables hold, so a run killed at any
moment resumes by asking the tables what is missing. One process at a time writes (a lock file next to the
database); readers (status, export) need no lock thanks to WAL.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from tskd_lite.errors import TskdError

SCHEMA_VERSION = 1
STAGE_TABLES = {"candidates": "rounds", "paraphrases": "paraphrase_rounds"}


@dataclass(frozen=True)
class RunInfo:
    id: int
    status: str
    recipe: dict[str, Any]
    message: str | None
    unit: str | None  # "token" or "byte": how the run's gaps are measured


class Store:
    def __init__(self, path: Path, *, write: bool) -> None:
        self.path = Path(path)
        self._lock = None
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _take_lock(self.path)
        elif not self.path.is_file():
            raise TskdError(f"{self.path}: database not found")
        try:
            self.db = sqlite_utils.Database(self.path)
            if write:
                tables = set(self.db.table_names())
                if tables and "runs" not in tables:  # a recipe must not add tables to someone else's database
                    self.close()
                    raise TskdError(
                        f"{self.path}: an existing SQLite database that is not a tskd-lite store "
                        f"(tables: {', '.join(sorted(tables)[:5])}); choose another output.db"
                    )
                self.db.enable_wal()
                self._create()
            elif "runs" not in self.db.table_names():
                raise TskdError(f"{self.path}: not a tskd-lite database (no runs table)")
        except sqlite3.DatabaseError as e:
            raise TskdError(f"{self.path}: not a readable SQLite database ({e})") from None

    @classmethod
    def open(cls, path: Path) -> Store:
        return cls(path, write=True)

    @classmethod
    def read(cls, path: Path) -> Store:
        return cls(path, write=False)

    def close(self) -> None:
        self.db.close()
        if self._lock is not None:
            self._lock.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One real transaction (nested: a savepoint). Not `with db.conn:`: sqlite-utils commits each of its own
        calls (and inserts in chunks of 100) unless they run inside `atomic()`, so a failure or a kill half-way
        through a step would leave half of it committed."""
        with self.db.atomic():
            yield

    def _create(self) -> None:
        db = self.db
        with self.transaction():
            db["meta"].insert({"key": "schema_version", "value": SCHEMA_VERSION}, pk="key", ignore=True)
            db["runs"].create(
                {
                    "id": int,
                    "created": float,
                    "recipe_path": str,
                    "recipe_text": str,
                    "recipe_json": str,
                    "recipe_hash": str,
                    "unit": str,
                    "status": str,
                    "message": str,
                    "elapsed_s": float,
                },
                pk="id",
                if_not_exists=True,
            )
            if "models" not in db["runs"].columns_dict:  # stores from before model identities were recorded
                db["runs"].add_column("models", str)
            db["prompts"].create(
                {
                    "id": int,
                    "run_id": int,
                    "round": int,
                    "idx": int,
                    "text": str,
                    "norm": str,
                    "source": str,
                    "fewshot_ids": str,
                    "status": str,
                    "dup_of": int,
                    "gen_tokens": int,
                    "gen_seconds": float,
                },
                pk="id",
                foreign_keys=[("run_id", "runs", "id")],
                if_not_exists=True,
            )
            db["prompts"].create_index(["run_id", "round", "idx"], unique=True, if_not_exists=True)
            # columns added since the first schema (older stores gain them empty)
            for column, kind in (("parent_id", int), ("strategy", str), ("inputs", str)):
                if column not in db["prompts"].columns_dict:
                    db["prompts"].add_column(column, kind)
            db["answers"].create(
                {"prompt_id": int, "text": str, "n_tokens": int, "finish_reason": str, "seconds": float},
                pk="prompt_id",
                foreign_keys=[("prompt_id", "prompts", "id")],
                if_not_exists=True,
            )
            db["scores"].create(
                {
                    "prompt_id": int,
                    "unit": str,
                    "n_units": int,
                    "n_tokens": int,
                    "teacher_nll": float,
                    "base_nll": float,
                    "gap": float,
                    "teacher_ppl": float,
                    "base_ppl": float,
                    "teacher_logprobs": str,
                    "teacher_byte_ends": str,
                    "base_logprobs": str,
                    "decoded_tokens": int,
                    "seconds": float,
                },
                pk="prompt_id",
                foreign_keys=[("prompt_id", "prompts", "id")],
                if_not_exists=True,
            )
            db["contrasts"].create(
                {"prompt_id": int, "contrast": float, "swapped": str, "seconds": float},
                pk="prompt_id",
                foreign_keys=[("prompt_id", "prompts", "id")],
                if_not_exists=True,
            )
            db["selections"].create(
                {"prompt_id": int, "run_id": int, "round": int, "kept": int, "reason": str},
                pk="prompt_id",
                foreign_keys=[("prompt_id", "prompts", "id")],
                if_not_exists=True,
            )
            # One completion mark per round and stage: "candidates" (the round's new prompts) and "paraphrases"
            # (the rephrasings of the prompts the first stage kept), each selected once.
            for table in STAGE_TABLES.values():
                db[table].create(
                    {"run_id": int, "round": int, "n_kept": int, "selected_at": float},
                    pk=("run_id", "round"),
                    if_not_exists=True,
                )

    # runs -----------------------------------------------------------------------------------------------

    def latest_run(self) -> RunInfo | None:
        rows = list(self.db.query("select * from runs order by id desc limit 1"))
        return _run_info(rows[0]) if rows else None

    def get_run(self, run_id: int | None) -> RunInfo:
        if run_id is None:
            run = self.latest_run()
            if run is None:
                raise TskdError(f"{self.path}: the database holds no run yet")
            return run
        rows = list(self.db.query("select * from runs where id = ?", [run_id]))
        if not rows:
            raise TskdError(f"{self.path}: no run with id {run_id}")
        return _run_info(rows[0])

    def new_run(self, recipe_path: str, recipe_text: str, recipe_flat: dict, recipe_hash: str) -> int:
        with self.transaction():
            return (
                self.db["runs"]
                .insert(
                    {
                        "created": time.time(),
                        "recipe_path": recipe_path,
                        "recipe_text": recipe_text,
                        "recipe_json": json.dumps(recipe_flat, sort_keys=True),
                        "recipe_hash": recipe_hash,
                        "unit": None,
                        "status": "running",
                        "message": None,
                        "elapsed_s": 0.0,
                    }
                )
                .last_pk
            )

    def resume_run(self, run_id: int, recipe_path: str, recipe_flat: dict) -> None:
        """Mark a run running again, recording the recipe as now given (only resumable keys can differ)."""
        self.update_run(
            run_id,
            recipe_path=recipe_path,
            recipe_json=json.dumps(recipe_flat, sort_keys=True),
            status="running",
            message=None,
        )

    def may_write_export(self, path: Path) -> bool:
        """Whether the pipeline may write its dataset to path: a new file, one this store wrote before, or, in a
        store made before exports were recorded, any file (its runs wrote it)."""
        written = {r["value"] for r in self.db.query("select value from meta where key = 'export'")}
        legacy = not written and self.db.execute("select count(*) from runs").fetchone()[0] > 0
        return not path.exists() or str(path.resolve()) in written or legacy

    def record_export(self, path: Path) -> None:
        with self.transaction():
            self.db["meta"].insert({"key": "export", "value": str(path.resolve())}, pk="key", replace=True)

    def run_models(self, run_id: int) -> dict | None:
        """{recipe key: gguf_meta.identity} of the model files the run was made with (None: not recorded)."""
        row = self.db.execute("select models from runs where id = ?", [run_id]).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def update_run(self, run_id: int, **values: Any) -> None:
        with self.transaction():
            self.db["runs"].update(run_id, values)

    def add_elapsed(self, run_id: int, seconds: float) -> None:
        with self.transaction():
            self.db.execute("update runs set elapsed_s = elapsed_s + ? where id = ?", [seconds, run_id])

    # prompts --------------------------------------------------------------------------------------------

    def insert_prompts(self, rows: Iterable[dict]) -> None:
        """Insert prompts in one transaction; (run, round, idx) is unique, so a step can never add the same
        prompt twice."""
        with self.transaction():
            self.db["prompts"].insert_all(rows)

    def prompts(self, run_id: int, *, where: str = "1", params: Iterable = ()) -> list[dict]:
        sql = f"select * from prompts where run_id = ? and ({where}) order by round, idx"
        return list(self.db.query(sql, [run_id, *params]))

    def next_prompt_id(self) -> int:
        return self.db.execute("select coalesce(max(id), 0) + 1 from prompts").fetchone()[0]

    def next_idx(self, run_id: int, round_: int) -> int:
        row = self.db.execute(
            "select coalesce(max(idx) + 1, 0) from prompts where run_id = ? and round = ?", [run_id, round_]
        ).fetchone()
        return row[0]

    def kept_in_round(self, run_id: int, round_: int) -> list[dict]:
        """The round's kept prompts other than paraphrases: the prompts paraphrase augmentation rephrases."""
        return self.prompts(
            run_id,
            where="round = ? and source != 'paraphrase' and id in (select prompt_id from selections where kept = 1)",
            params=[round_],
        )

    def count_paraphrases(self, run_id: int, round_: int) -> int:
        return self.db.execute(
            "select count(*) from prompts where run_id = ? and round = ? and source = 'paraphrase'", [run_id, round_]
        ).fetchone()[0]

    def kept_prompts_before(self, run_id: int, round_: int) -> list[dict]:
        """Few-shot pool for a round: seeds and every prompt kept by an earlier round, in a stable order."""
        return list(
            self.db.query(
                """select p.* from prompts p left join selections s on s.prompt_id = p.id
               where p.run_id = ? and p.round < ? and (p.source = 'seed' or s.kept = 1)
               order by p.round, p.idx""",
                [run_id, round_],
            )
        )

    # answers and scores ---------------------------------------------------------------------------------

    def unanswered(self, run_id: int, round_: int) -> list[dict]:
        return list(
            self.db.query(
                """select p.* from prompts p left join answers a on a.prompt_id = p.id
               where p.run_id = ? and p.round = ? and p.status = 'new' and a.prompt_id is null
               order by p.idx""",
                [run_id, round_],
            )
        )

    def answered_pairs(self, run_id: int, round_: int) -> list[tuple[str, str]]:
        """(prompt, answer) of a round's answered prompts, kept or not, empty answers left out."""
        return self.db.execute(
            """select p.text, a.text from prompts p join answers a on a.prompt_id = p.id
               where p.run_id = ? and p.round = ? and a.text != '' order by p.idx""",
            [run_id, round_],
        ).fetchall()

    def add_answers(self, rows: list[dict]) -> None:
        with self.transaction():
            self.db["answers"].insert_all(rows)

    def unscored(self, run_id: int, round_: int) -> list[dict]:
        return list(
            self.db.query(
                """select p.id, p.text as prompt, a.text as answer from prompts p
               join answers a on a.prompt_id = p.id left join scores s on s.prompt_id = p.id
               where p.run_id = ? and p.round = ? and s.prompt_id is null order by p.idx""",
                [run_id, round_],
            )
        )

    def add_scores(self, rows: list[dict]) -> None:
        with self.transaction():
            self.db["scores"].insert_all(rows, alter=True)  # databases from before a new column gain it

    def scored(self, run_id: int, round_: int) -> list[dict]:
        # a store from before contrasts, opened read-only, has no such table to join
        contrasts = "contrasts" in self.db.table_names()
        return list(
            self.db.query(
                f"""select p.id, p.idx, p.source, s.*, {"c.contrast" if contrasts else "null as contrast"}
               from prompts p join scores s on s.prompt_id = p.id
               {"left join contrasts c on c.prompt_id = p.id" if contrasts else ""}
               where p.run_id = ? and p.round = ? order by p.idx""",
                [run_id, round_],
            )
        )

    def uncontrasted(self, run_id: int, round_: int) -> list[dict]:
        """The round's scored pairs that have no contrast yet, with the teacher's per-token scores."""
        return list(
            self.db.query(
                """select p.id, p.idx, p.text as prompt, a.text as answer, s.teacher_logprobs, s.teacher_byte_ends
               from prompts p join answers a on a.prompt_id = p.id join scores s on s.prompt_id = p.id
               left join contrasts c on c.prompt_id = p.id
               where p.run_id = ? and p.round = ? and c.prompt_id is null order by p.idx""",
                [run_id, round_],
            )
        )

    def add_contrasts(self, rows: list[dict]) -> None:
        with self.transaction():
            self.db["contrasts"].insert_all(rows)

    # selection ------------------------------------------------------------------------------------------

    def round_selected(self, run_id: int, round_: int, stage: str = "candidates") -> dict | None:
        table = STAGE_TABLES[stage]
        rows = list(self.db.query(f"select * from {table} where run_id = ? and round = ?", [run_id, round_]))
        return rows[0] if rows else None

    def record_selection(self, run_id: int, round_: int, decisions: list[dict], stage: str = "candidates") -> None:
        """A stage's keep/drop decisions and its completion mark, together or not at all."""
        with self.transaction():
            self.db["selections"].insert_all(decisions)
            n_kept = sum(d["kept"] for d in decisions)
            self.db[STAGE_TABLES[stage]].insert(
                {"run_id": run_id, "round": round_, "n_kept": n_kept, "selected_at": time.time()}
            )

    def kept_pairs(self, run_id: int) -> list[dict]:
        return list(
            self.db.query(
                """select p.id, p.round, p.source, p.fewshot_ids, p.parent_id, p.text as prompt, a.text as answer,
                      s.gap, s.teacher_ppl, s.base_ppl, s.unit, s.teacher_logprobs, s.base_logprobs,
                      s.teacher_byte_ends
               from prompts p join selections sel on sel.prompt_id = p.id and sel.kept = 1
               join answers a on a.prompt_id = p.id join scores s on s.prompt_id = p.id
               where p.run_id = ? order by p.round, p.idx""",
                [run_id],
            )
        )


def _run_info(row: dict) -> RunInfo:
    return RunInfo(row["id"], row["status"], json.loads(row["recipe_json"]), row["message"], row["unit"])


def _take_lock(db_path: Path, what: str = "another tskd-lite run is writing to this database"):
    lock = open(db_path.with_name(db_path.name + ".lock"), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise TskdError(f"{db_path}: locked: {what}") from None
    return lock


@contextmanager
def folder_lock(run_dir: Path) -> Iterator[None]:
    """The run folder to one writer at a time: training, evaluation and the report share its files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _take_lock(run_dir / "outputs", "another tskd-lite command is training, evaluating or reporting here")
    try:
        yield
    finally:
        lock.close()
