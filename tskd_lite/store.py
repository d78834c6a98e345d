"""The SQLite store: every prompt, answer, score and selection of every run, committed step by step.

Progress is never kept in memory only: what a step has done is what the tables hold, so a run killed at any
moment resumes by asking the tables what is missing. One process at a time writes (a lock file next to the
database); readers (status, export) need no lock thanks to WAL.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from tskd_lite import atomic, locks
from tskd_lite.errors import TskdError
from tskd_lite.migrations import SCHEMA_VERSION, migrate

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
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TskdError(f"{self.path}: cannot make its folder ({e.strerror or e})") from None
            self._lock = locks.take(self.path, "another tskd-lite run is writing to this database")
        elif not self.path.is_file():
            raise TskdError(f"{self.path}: database not found")
        try:
            if write and not os.path.lexists(self.path):
                _create_whole(self.path)
            self.db = sqlite_utils.Database(self.path)
            try:
                tables = set(self.db.table_names())
                if tables or not write:  # checked before anything is written: a foreign database stays as it was
                    _check_ours(self.db, tables, self.path)
                if write:
                    self.db.enable_wal()
                    self._create()
            except BaseException:
                self.db.close()
                raise
        except sqlite3.DatabaseError as e:
            self._release()
            raise TskdError(f"{self.path}: not a readable SQLite database ({e})") from None
        except BaseException:
            self._release()
            raise

    @classmethod
    def open(cls, path: Path) -> Store:
        return cls(path, write=True)

    @classmethod
    def read(cls, path: Path) -> Store:
        return cls(path, write=False)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One real transaction (nested: a savepoint). Not `with db.conn:`: sqlite-utils commits each of its own
        calls (and inserts in chunks of 100) unless they run inside `atomic()`, so a failure or a kill half-way
        through a step would leave half of it committed."""
        with self.db.atomic():
            yield

    def _create(self) -> None:
        with self.transaction():
            migrate(self.db)

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
        """Whether a dataset may be written to path: nothing is there yet (not even a dangling link), or the file
        there is the export this store recorded. The database and its own files never are."""
        path = Path(path)
        if path.resolve() in self.own_files():
            return False
        if not os.path.lexists(path):
            return True
        written = {r["value"] for r in self.db.query("select value from meta where key = 'export'")}
        return path.is_file() and not path.is_symlink() and str(path.resolve()) in written

    def own_files(self) -> set[Path]:
        """The database file and the files SQLite and the lock keep beside it."""
        db = self.path.resolve()
        return {db} | {db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal", ".lock")}

    def record_export(self, path: Path) -> None:
        with self.transaction():
            self.db["meta"].insert({"key": "export", "value": str(path.resolve())}, pk="key", replace=True)

    def run_models(self, run_id: int) -> dict | None:
        """{recipe key: gguf_meta.identity} of the model files the run was made with (None: not recorded)."""
        if "models" not in self.db["runs"].columns_dict:  # a store from before m005, opened read-only (check)
            return None
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
            self.db["scores"].insert_all(rows)

    def scored(self, run_id: int, round_: int) -> list[dict]:
        # a store from before contrasts or agreements, opened read-only, has no such table to join
        tables = set(self.db.table_names())
        contrasts, agreements = "contrasts" in tables, "agreements" in tables
        return list(
            self.db.query(
                f"""select p.id, p.idx, p.source, s.*, {"c.contrast" if contrasts else "null as contrast"},
               {"g.agreement" if agreements else "null as agreement"}
               from prompts p join scores s on s.prompt_id = p.id
               {"left join contrasts c on c.prompt_id = p.id" if contrasts else ""}
               {"left join agreements g on g.prompt_id = p.id" if agreements else ""}
               where p.run_id = ? and p.round = ? order by p.idx""",
                [run_id, round_],
            )
        )

    def unmeasured(self, run_id: int, round_: int, table: str, teacher_scores: bool = False) -> list[dict]:
        """The round's scored pairs that `table` (contrasts, agreements) has no row for yet; with teacher_scores,
        with the teacher's per-token scores."""
        extra = ", s.teacher_logprobs, s.teacher_byte_ends" if teacher_scores else ""
        return list(
            self.db.query(
                f"""select p.id, p.idx, p.text as prompt, a.text as answer{extra}
               from prompts p join answers a on a.prompt_id = p.id join scores s on s.prompt_id = p.id
               left join [{table}] m on m.prompt_id = p.id
               where p.run_id = ? and p.round = ? and m.prompt_id is null order by p.idx""",
                [run_id, round_],
            )
        )

    def add_measured(self, table: str, rows: list[dict]) -> None:
        """Rows of `table` (contrasts, agreements) for pairs `unmeasured` gave."""
        with self.transaction():
            self.db[table].insert_all(rows)

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

    # what status and the report read ----------------------------------------------------------------------

    def run_row(self, run_id: int) -> dict:
        return self.db["runs"].get(run_id)

    def rounds_of(self, run_id: int) -> list[int]:
        return [
            r[0]
            for r in self.db.execute("select distinct round from prompts where run_id = ? order by round", [run_id])
        ]

    def status_counts(self, run_id: int, round_: int) -> dict[str, int]:
        """How many of the round's prompts are new, duplicate, empty or drifted."""
        sql = "select status, count(*) from prompts where run_id = ? and round = ? group by status"
        return dict(self.db.execute(sql, [run_id, round_]).fetchall())

    def gaps_by_round(self, run_id: int) -> dict[int, list[float]]:
        out: dict[int, list[float]] = {}
        sql = (
            "select p.round, s.gap from scores s join prompts p on p.id = s.prompt_id where p.run_id = ? "
            "order by p.round"
        )
        for round_, gap in self.db.execute(sql, [run_id]):
            out.setdefault(round_, []).append(gap)
        return out

    def scored_pairs(self, run_id: int) -> list[dict]:
        """Every scored pair of the run with its keep decision (kept None: its round is not selected yet)."""
        return list(
            self.db.query(
                """select p.round, p.idx, p.source, p.text as prompt, a.text as answer, s.gap, s.unit, s.n_tokens,
                      s.teacher_ppl, s.base_ppl, sel.kept, sel.reason
               from prompts p join answers a on a.prompt_id = p.id join scores s on s.prompt_id = p.id
               left join selections sel on sel.prompt_id = p.id
               where p.run_id = ? order by p.round, p.idx""",
                [run_id],
            )
        )

    def pool_size(self, run_id: int) -> int:
        return self.db.execute("select count(*) from prompts where run_id = ? and status = 'new'", [run_id]).fetchone()[
            0
        ]

    def generation_totals(self, run_id: int) -> tuple[int, float]:
        """Tokens written and seconds spent writing them: prompts and the teacher's answers."""
        rows = self.db.execute(
            """select coalesce(sum(gen_tokens), 0), coalesce(sum(gen_seconds), 0) from prompts where run_id = ?
               union all
               select coalesce(sum(a.n_tokens), 0), coalesce(sum(a.seconds), 0) from answers a
               join prompts p on p.id = a.prompt_id where p.run_id = ?""",
            [run_id, run_id],
        ).fetchall()
        return sum(r[0] for r in rows), sum(r[1] for r in rows)

    def scoring_totals(self, run_id: int) -> tuple[int, float]:
        row = self.db.execute(
            """select coalesce(sum(s.decoded_tokens), 0), coalesce(sum(s.seconds), 0) from scores s
               join prompts p on p.id = s.prompt_id where p.run_id = ?""",
            [run_id],
        ).fetchone()
        return row[0], row[1]


# What makes a database a tskd-lite store: a table of another program that happens to be called "runs" is not one.
_OUR_RUN_COLUMNS = {"id", "created", "recipe_json", "recipe_hash", "status", "message", "unit", "elapsed_s"}


def _create_whole(path: Path) -> None:
    """A new store appears whole or not at all: its schema is made in a temporary file beside it, linked in under
    its name once committed and flushed. Made in place, a kill between the first write and the schema's commit left
    a database with no tables, which the next run rightly took for someone else's (bench/chaos.py, a SIGKILL at
    0.5 s). The caller holds the database's lock, so temporary files of earlier, killed creations are removed."""
    for stale in path.parent.glob(f".{path.name}.*.part"):  # atomic's temporary names
        stale.unlink(missing_ok=True)
    with atomic.replacing_path(path, replace=False) as tmp:  # never over a file another program made meanwhile
        db = sqlite_utils.Database(tmp)
        try:
            with db.atomic():
                migrate(db)
        finally:
            db.close()


def _check_ours(db: sqlite_utils.Database, tables: set[str], path: Path) -> None:
    """Raise TskdError unless db is a store tskd-lite made (a meta table with its schema version, a runs table with
    its columns); nothing is read beyond that and nothing is written."""
    version = None
    if "meta" in tables and {"key", "value"} <= set(db["meta"].columns_dict):
        row = db.execute("select value from meta where key = 'schema_version'").fetchone()
        version = row[0] if row else None
    runs_ok = "runs" in tables and _OUR_RUN_COLUMNS <= set(db["runs"].columns_dict)
    if version is None or not runs_ok:
        listed = ", ".join(sorted(tables)[:5]) or "none"
        raise TskdError(
            f"{path}: an existing SQLite database that is not a tskd-lite store (tables: {listed}); "
            "choose another output.db"
        )
    if str(version) != str(SCHEMA_VERSION):
        raise TskdError(f"{path}: schema version {version!r}, not the {SCHEMA_VERSION} this tskd-lite reads")


def _run_info(row: dict) -> RunInfo:
    return RunInfo(row["id"], row["status"], json.loads(row["recipe_json"]), row["message"], row["unit"])
