"""The store as a library: context managers, and the schema as named migrations that old stores take too."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from tskd_lite import migrations
from tskd_lite.cli import main
from tskd_lite.export import export
from tskd_lite.store import Store

FIXTURES = Path(__file__).parent / "fixtures"


def _tables(db: Path) -> dict[str, list[str]]:
    con = sqlite3.connect(db)
    names = [r[0] for r in con.execute("select name from sqlite_master where type = 'table' order by name")]
    out = {n: [c[1] for c in con.execute(f"pragma table_info({n})")] for n in names}
    con.close()
    return out


def test_a_store_made_by_the_previous_release_migrates_and_reads_alike(tmp_path):
    """tests/fixtures/store-0.1.0.db was written by the release before migrations.py (a one-round run with
    paraphrases on tiny models), store-0.1.0.jsonl is what that release exported from it."""
    db = tmp_path / "old.db"
    shutil.copy(FIXTURES / "store-0.1.0.db", db)
    before = _tables(db)
    assert "_migrations" not in before
    with Store.open(db) as store:
        applied = [r["name"] for r in store.db["_migrations"].rows]
        assert applied == [m.__name__ for m in migrations.MIGRATIONS]
        export(store, store.latest_run().id, tmp_path / "again.jsonl")
    after = _tables(db)
    assert {k: v for k, v in after.items() if k != "_migrations"} == before  # it had every column already
    assert (tmp_path / "again.jsonl").read_bytes() == (FIXTURES / "store-0.1.0.jsonl").read_bytes()
    status = CliRunner().invoke(main, ["status", str(db)])
    assert status.exit_code == 0 and "kept 13 pairs" in status.output


def test_a_first_release_store_gains_each_later_step(tmp_path):
    db = tmp_path / "first.db"
    first = sqlite3.connect(db)
    first.close()
    import sqlite_utils

    old = sqlite_utils.Database(db)
    migrations.m001_initial(old)  # the tables as the first release made them, without a _migrations table
    old.close()
    assert "parent_id" not in _tables(db)["prompts"] and "contrasts" not in _tables(db)
    with Store.open(db):
        pass
    tables = _tables(db)
    assert {"parent_id", "strategy", "inputs"} <= set(tables["prompts"])
    assert "models" in tables["runs"] and "teacher_byte_ends" in tables["scores"]
    assert {"contrasts", "paraphrase_rounds"} <= set(tables)
    with Store.open(db) as store:  # a second open takes no step twice
        assert store.db["_migrations"].count == len(migrations.MIGRATIONS)


def test_a_new_store_has_the_same_schema_as_a_migrated_one(tmp_path):
    with Store.open(tmp_path / "new.db"):
        pass
    old = tmp_path / "old.db"
    shutil.copy(FIXTURES / "store-0.1.0.db", old)
    with Store.open(old):
        pass
    new, migrated = _tables(tmp_path / "new.db"), _tables(old)
    assert set(new) == set(migrated)
    assert all(set(new[t]) == set(migrated[t]) for t in new)
