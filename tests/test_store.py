"""The store as a library: context managers, and the schema as named migrations that old stores take too."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from datetime import datetime
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
    before["scores"].append("base_byte_ends")  # m008's, null in what that release wrote; every other it had
    before["agreements"] = ["prompt_id", "agreement", "samples", "seconds"]  # m009's table, empty until asked for
    assert {k: v for k, v in after.items() if k != "_migrations"} == before
    assert (tmp_path / "again.jsonl").read_bytes() == (FIXTURES / "store-0.1.0.jsonl").read_bytes()
    status = CliRunner().invoke(main, ["status", str(db)])
    assert status.exit_code == 0 and "kept 13 pairs" in status.output
    con = sqlite3.connect(db)  # the audit views, over what that release wrote
    assert con.execute("select count(*), min(rule), min(threshold) from kept_pairs").fetchone() == (
        13,
        "top_fraction",
        0.5,
    )
    assert con.execute("select sum(kept) from round_summary").fetchone() == (13,)
    _check_times(con)
    _check_tokens(con)
    con.close()


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


def _tiny_run(tiny, tmp_path: Path, base: Path | None = None) -> Path:
    """A one-round run with paraphrases under the ppl_ratio rule: every kind of prompt and of reason."""
    from conftest import recipe_dict, write_recipe

    from tskd_lite import pipeline
    from tskd_lite.recipe import load_recipe

    raw = recipe_dict(tiny, tmp_path / "run.db")
    raw["expand"].update(rounds=1, candidates_per_round=6, paraphrases=1)
    raw["select"] = {"rule": "ppl_ratio", "tau": 1.0001, "top_fraction": 0.8}
    if base is not None:
        raw["base"]["model"] = base
    pipeline.run(load_recipe(write_recipe(tmp_path / "run.toml", raw)), progress=False, log=lambda _: None)
    return tmp_path / "run.db"


def test_the_kept_pairs_view_agrees_with_the_tables(tiny, tmp_path):
    with Store.read(_tiny_run(tiny, tmp_path)) as store:
        run_id = store.latest_run().id
        view = list(store.db.query("select * from kept_pairs where run_id = ?", [run_id]))
        pairs = store.kept_pairs(run_id)
        reasons = dict(store.db.execute("select prompt_id, reason from selections where kept = 1").fetchall())
        strategies = dict(store.db.execute("select id, coalesce(strategy, source) from prompts").fetchall())
    assert pairs and len(view) == len(pairs)
    for row, pair in zip(view, pairs, strict=True):
        assert (row["prompt_id"], row["round"], row["prompt"], row["answer"], row["gap"]) == (
            pair["id"],
            pair["round"],
            pair["prompt"],
            pair["answer"],
            pair["gap"],
        )
        assert (row["rule"], row["threshold"], row["reason"]) == ("ppl_ratio", 1.0001, reasons[pair["id"]])
        assert row["strategy"] == strategies[pair["id"]] and row["ppl_ratio"] >= 1.0001
        assert ">= tau 1.0001" in row["reason"]  # a reason names the threshold it passed
    assert {"seed", "fewshot"} <= {row["strategy"] for row in view}


def test_the_round_summary_view_agrees_with_the_tables(tiny, tmp_path):
    with Store.read(_tiny_run(tiny, tmp_path)) as store:
        run_id = store.latest_run().id
        summary = list(store.db.query("select * from round_summary where run_id = ?", [run_id]))
        assert [row["round"] for row in summary] == store.rounds_of(run_id)
        for row in summary:
            counts = store.status_counts(run_id, row["round"])
            scored = store.scored(run_id, row["round"])
            kept = store.db.execute(
                "select count(*) from selections where run_id = ? and round = ? and kept = 1", [run_id, row["round"]]
            ).fetchone()[0]
            assert row["candidates"] == sum(counts.values()) and row["new"] == counts.get("new", 0)
            assert (row["duplicates"], row["empty"], row["drifted"]) == tuple(
                counts.get(k, 0) for k in ("duplicate", "empty", "drifted")
            )
            assert (row["scored"], row["kept"]) == (len(scored), kept)
            assert row["paraphrases"] == store.count_paraphrases(run_id, row["round"])
        assert sum(row["kept"] for row in summary) == len(store.kept_pairs(run_id))
        dropped = [r for (r,) in store.db.execute("select reason from selections where kept = 0")]
    for reason in dropped:  # the threshold a dropped pair missed is in its reason
        assert reason == "empty answer" or "tau 1.0001" in reason or "top_fraction 0.8" in reason, reason


def _check_times(con: sqlite3.Connection) -> None:
    """Every ISO time names the same instant as the float beside it (to the millisecond SQLite keeps)."""
    rows = con.execute("select at, at_iso from timeline").fetchall()
    rows += con.execute("select created, created_iso from runs_readable").fetchall()
    n_marks = sum(con.execute(f"select count(*) from {t}").fetchone()[0] for t in ("rounds", "paraphrase_rounds"))
    assert len(rows) == 2 * con.execute("select count(*) from runs").fetchone()[0] + n_marks + len(
        migrations.MIGRATIONS
    )
    for at, iso in rows:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", iso), iso
        assert abs(datetime.fromisoformat(iso).timestamp() - at) < 0.001, (at, iso)
    ats = [at for (at,) in con.execute("select at from timeline")]
    assert ats == sorted(ats)


def _check_tokens(con: sqlite3.Connection) -> None:
    """Each model's tokens in answer_tokens line up with its log-probs one to one and make up the answer."""
    rows = con.execute(
        """select s.prompt_id, a.text, s.teacher_logprobs, s.base_logprobs
           from scores s join answers a on a.prompt_id = s.prompt_id"""
    ).fetchall()
    assert rows
    for prompt_id, answer, teacher, base in rows:
        for model, logprobs in (("teacher", json.loads(teacher)), ("base", json.loads(base))):
            got = con.execute(
                "select i, token, token_hex, logprob from answer_tokens where prompt_id = ? and model = ? order by i",
                [prompt_id, model],
            ).fetchall()
            assert [i for i, *_ in got] == list(range(len(logprobs)))  # as many tokens as log-probs, in order
            assert [lp for *_, lp in got] == logprobs
            assert bytes.fromhex("".join(h for _, _, h, _ in got)) == answer.encode("utf-8")
            for _, token, hexed, _ in got:  # a token is its bytes as text, or null where it holds part of one
                assert token is None or token.encode("utf-8") == bytes.fromhex(hexed)


def test_answer_tokens_line_up_with_the_log_probs_when_tokenizers_differ(tiny, tmp_path):
    db = _tiny_run(tiny, tmp_path, base=tiny["other"])
    con = sqlite3.connect(db)
    assert con.execute("select distinct unit from scores").fetchall() == [("byte",)]
    assert con.execute("select count(*) from scores where base_byte_ends is null").fetchone() == (0,)
    _check_tokens(con)
    _check_times(con)
    con.close()


def test_answer_tokens_and_times_of_a_run_and_the_documented_queries(tiny, tmp_path):
    db = _tiny_run(tiny, tmp_path)
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from scores where base_byte_ends is not null").fetchone() == (0,)
    _check_tokens(con)  # one tokenizer: the base's tokens are the teacher's
    _check_times(con)
    docs = (Path(__file__).parent.parent / "docs" / "store.md").read_text()
    queries = [q for block in re.findall(r"```sql\n(.*?)```", docs, re.S) for q in block.split(";") if q.strip()]
    assert len(queries) >= 5
    for query in queries:  # every query the docs show runs on a store
        con.execute(query).fetchall()
    con.close()


def test_the_datasette_metadata_names_what_the_store_has(tiny, tmp_path):
    """docs/datasette.json (Datasette is not a dependency): its label columns exist, and the id columns a
    reader sees as labels are declared foreign keys of the tables it labels."""
    with Store.open(tmp_path / "pool.db"):
        pass
    meta = json.loads((Path(__file__).parent.parent / "docs" / "datasette.json").read_text())
    tables = _tables(tmp_path / "pool.db")
    labelled = meta["databases"]["pool"]["tables"]
    for table, settings in labelled.items():
        assert settings["label_column"] in tables[table], table
    con = sqlite3.connect(tmp_path / "pool.db")
    fks = {(t, r[3], r[2]) for t in tables for r in con.execute(f"pragma foreign_key_list({t})")}
    con.close()
    assert {
        ("answers", "prompt_id", "prompts"),
        ("scores", "prompt_id", "prompts"),
        ("prompts", "run_id", "runs"),
    } <= fks
    assert {other for _, _, other in fks} <= set(labelled)


def test_a_store_from_before_m008_upgrades_in_place_and_its_run_resumes(tiny, tmp_path):
    """A finished run in a store as the version before m008 left it; raising expand.rounds resumes it (the same
    run, no new one) after the upgrade, and ends with the pool an uninterrupted run makes."""
    from conftest import recipe_dict, write_recipe

    from tskd_lite import pipeline
    from tskd_lite.recipe import load_recipe

    def recipe(db: Path, rounds: int):
        raw = recipe_dict(tiny, db)
        raw["expand"].update(rounds=rounds, candidates_per_round=6)
        return load_recipe(write_recipe(db.with_suffix(".toml"), raw))

    old = tmp_path / "old.db"
    pipeline.run(recipe(old, 1), progress=False, log=lambda _: None)
    con = sqlite3.connect(old)  # back to what m001..m007 made
    for view in ("runs_readable", "timeline", "answer_tokens"):
        con.execute(f"drop view {view}")
    con.execute("alter table scores drop column base_byte_ends")
    con.execute("delete from _migrations where name = 'm008_readable_times_and_tokens'")
    con.commit()
    con.close()
    pipeline.run(recipe(old, 2), progress=False, log=lambda _: None)
    pipeline.run(recipe(tmp_path / "new.db", 2), progress=False, log=lambda _: None)
    pools = []
    for db in (old, tmp_path / "new.db"):
        con = sqlite3.connect(db)
        assert con.execute("select count(*) from runs").fetchone() == (1,)
        assert "m008_readable_times_and_tokens" in {n for (n,) in con.execute("select name from _migrations")}
        _check_tokens(con)
        _check_times(con)
        pools.append(con.execute("select round, prompt, answer, gap from kept_pairs").fetchall())
        con.close()
    assert pools[0] and pools[0] == pools[1]
