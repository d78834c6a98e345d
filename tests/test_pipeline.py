"""End to end on tiny models: the run, its store, export, status, locking, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SEEDS, recipe_dict, write_recipe

from tskd_lite import pipeline
from tskd_lite.cli import main
from tskd_lite.errors import TskdError
from tskd_lite.export import ACCEPTED
from tskd_lite.locate import EXPECTED
from tskd_lite.recipe import load_recipe
from tskd_lite.store import Store


def _run(tiny, tmp_path, name="run", mutate=None, **kw):
    raw = recipe_dict(tiny, tmp_path / f"{name}.db")
    if mutate:
        mutate(raw)
    recipe = load_recipe(write_recipe(tmp_path / f"{name}.toml", raw))
    return recipe, pipeline.run(recipe, progress=False, log=lambda _: None, **kw)


def _snapshot(db_path: Path) -> dict:
    """Everything a run decided, without ids' timings: what must match between interrupted and clean runs."""
    con = sqlite3.connect(db_path)
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    snap = {
        "prompts": q(
            "select round, idx, text, source, fewshot_ids, status, dup_of, gen_tokens, parent_id, strategy, inputs "
            "from prompts "
            "order by round, idx"
        ),
        "answers": q(
            "select p.round, p.idx, a.text, a.n_tokens, a.finish_reason from answers a "
            "join prompts p on p.id = a.prompt_id order by p.round, p.idx"
        ),
        "scores": q(
            "select p.round, p.idx, s.gap, s.teacher_nll, s.base_nll, s.teacher_logprobs from scores s "
            "join prompts p on p.id = s.prompt_id order by p.round, p.idx"
        ),
        "selections": q(
            "select p.round, p.idx, s.kept, s.reason from selections s "
            "join prompts p on p.id = s.prompt_id order by p.round, p.idx"
        ),
        "rounds": q("select round, n_kept from rounds order by round"),
        "paraphrase_rounds": q("select round, n_kept from paraphrase_rounds order by round"),
        "runs": q("select id, status, message from runs"),
    }
    con.close()
    return snap


def test_run_end_to_end(tiny, tmp_path):
    recipe, result = _run(tiny, tmp_path)
    assert result.status == "done" and "round limit (3)" in result.message
    snap = _snapshot(recipe.output.db)
    rounds = {r for r, *_ in snap["prompts"]}
    assert rounds == {0, 1, 2, 3}
    assert [t for r, _, t, *_ in snap["prompts"] if r == 0] == SEEDS
    generated = [p for p in snap["prompts"] if p[0] > 0]
    assert len(generated) == 3 * 12
    new = [p for p in snap["prompts"] if p[5] == "new"]
    # every new prompt is answered, every non-empty answer scored, every new prompt has a decision
    assert len(snap["answers"]) == len(new)
    assert len(snap["selections"]) == len(new)
    assert len(snap["scores"]) == sum(1 for a in snap["answers"] if a[2])
    # top_fraction 0.5: each round keeps ceil(half) of what it scored
    for round_, n_kept in snap["rounds"]:
        n_scored = sum(1 for s in snap["scores"] if s[0] == round_)
        assert n_kept == -(-n_scored // 2)
    # few-shot examples of round r come from seeds or pairs kept before r
    con = sqlite3.connect(recipe.output.db)
    for round_, fewshot in con.execute("select round, fewshot_ids from prompts where round > 0"):
        for pid in json.loads(fewshot):
            src_round, source, kept = con.execute(
                "select p.round, p.source, s.kept from prompts p left join selections s on s.prompt_id = p.id "
                "where p.id = ?",
                [pid],
            ).fetchone()
            assert src_round < round_ and (source == "seed" or kept == 1)
    lines = recipe.output.export_path.read_text().splitlines()
    assert len(lines) == result.kept == sum(n for _, n in snap["rounds"])
    first = json.loads(lines[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]


def test_duplicates_are_recorded_not_answered(tiny, tmp_path):
    def greedy_generator(raw):  # a temperature-0 generator repeats itself: most candidates are duplicates
        raw["expand"]["temperature"] = 0.0
        raw["expand"]["few_shot"] = 5

    recipe, _ = _run(tiny, tmp_path, mutate=greedy_generator)
    con = sqlite3.connect(recipe.output.db)
    dups = con.execute("select id, dup_of from prompts where status = 'duplicate'").fetchall()
    assert len(dups) >= 11  # the 12 candidates of round 1 share one prompt: the first is new, the rest are not
    assert all(dup_of is not None and dup_of < pid for pid, dup_of in dups)
    answered = {pid for (pid,) in con.execute("select prompt_id from answers")}
    assert not answered & {pid for pid, _ in dups}


def test_a_round_that_keeps_nothing_stops_the_run(tiny, tmp_path):
    def impossible(raw):
        raw["select"] = {"rule": "ppl_ratio", "tau": 1e6}

    recipe, result = _run(tiny, tmp_path, mutate=impossible)
    assert result.status == "stopped"
    assert "round 0 kept none" in result.message and "select.tau" in result.message
    assert result.kept == 0 and recipe.output.export_path.read_text() == ""


def test_target_kept_ends_the_run_early(tiny, tmp_path):
    def small_target(raw):
        raw["expand"]["target_kept"] = 5

    recipe, result = _run(tiny, tmp_path, mutate=small_target)
    assert result.status == "done" and "target_kept 5" in result.message
    assert _snapshot(recipe.output.db)["rounds"][-1][0] < 3


def test_different_tokenizers_score_per_byte(tiny, tmp_path):
    def other_base(raw):
        raw["base"]["model"] = tiny["other"]

    recipe, result = _run(tiny, tmp_path, mutate=other_base)
    con = sqlite3.connect(recipe.output.db)
    assert con.execute("select unit from runs").fetchone()[0] == "byte"
    units = con.execute("select distinct s.unit from scores s").fetchall()
    assert units == [("byte",)]
    n_units, answer = con.execute(
        "select s.n_units, a.text from scores s join answers a on a.prompt_id = s.prompt_id limit 1"
    ).fetchone()
    assert n_units == len(answer.encode())


def test_rerun_resumes_and_changed_recipe_is_refused(tiny, tmp_path):
    recipe, first = _run(tiny, tmp_path)
    before = _snapshot(recipe.output.db)
    again = pipeline.run(recipe, progress=False, log=lambda _: None)
    assert again.run_id == first.run_id and _snapshot(recipe.output.db)["prompts"] == before["prompts"]

    def changed(raw):
        raw["select"]["top_fraction"] = 0.3
        raw["respond"]["max_answer_tokens"] = 10

    raw = recipe_dict(tiny, recipe.output.db)
    changed(raw)
    other = load_recipe(write_recipe(tmp_path / "changed.toml", raw))
    before_refused = _snapshot(recipe.output.db)
    with pytest.raises(TskdError, match=r"different recipe \(respond.max_answer_tokens, select.top_fraction changed\)"):
        pipeline.run(other, progress=False, log=lambda _: None)
    # a refused run leaves the store exactly as it found it (runs table included)
    assert _snapshot(recipe.output.db) == before_refused
    assert before_refused["prompts"] == before["prompts"]
    fresh = pipeline.run(other, force_new=True, progress=False, log=lambda _: None)
    assert fresh.run_id == first.run_id + 1

    def more_rounds(raw):
        raw["expand"]["rounds"] = 4

    raw = recipe_dict(tiny, tmp_path / "extend.db")
    first_ext = pipeline.run(
        load_recipe(write_recipe(tmp_path / "extend.toml", raw)), progress=False, log=lambda _: None
    )
    more_rounds(raw)
    extended = pipeline.run(
        load_recipe(write_recipe(tmp_path / "extend.toml", raw)), progress=False, log=lambda _: None
    )
    assert extended.run_id == first_ext.run_id and extended.kept > first_ext.kept


def test_second_writer_gets_a_locked_error(tiny, tmp_path):
    raw = recipe_dict(tiny, tmp_path / "locked.db")
    recipe = load_recipe(write_recipe(tmp_path / "locked.toml", raw))
    holder = Store.open(recipe.output.db)
    try:
        result = CliRunner().invoke(main, ["run", str(tmp_path / "locked.toml")])
        assert result.exit_code == 1
        assert (
            result.output.strip()
            == f"Error: {recipe.output.db}: locked: another tskd-lite run is writing to this database"
        )
    finally:
        holder.close()


def test_status_and_export_commands(tiny, tmp_path):
    recipe, result = _run(tiny, tmp_path)
    runner = CliRunner()
    status = runner.invoke(main, ["status", str(recipe.output.db)])
    assert status.exit_code == 0, status.output
    assert "run 1: done" in status.output and f"kept {result.kept} pairs" in status.output
    assert "generation:" in status.output and "tokens/s" in status.output
    as_json = json.loads(runner.invoke(main, ["status", str(tmp_path / "run.toml"), "--json"]).output)
    assert as_json["kept"] == result.kept and len(as_json["rounds"]) == 4
    assert as_json["scoring"]["tokens"] > 0
    out = tmp_path / "alpaca.jsonl"
    exp = runner.invoke(main, ["export", str(recipe.output.db), "-o", str(out), "--format", "alpaca", "--provenance"])
    assert exp.exit_code == 0, exp.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == result.kept
    assert set(rows[0]) == {"instruction", "input", "output", "tskd"}
    assert set(rows[0]["tskd"]) >= {"round", "source", "gap", "teacher_ppl", "base_ppl", "fewshot_ids"}
    missing = runner.invoke(main, ["status", str(tmp_path / "nope.db")])
    assert missing.exit_code == 1
    assert missing.output == f"Error: {tmp_path / 'nope.db'}: not found; expected {EXPECTED}\n"


# -- reading a finished run: what commands take, export's file formats, run folders that move ------------------


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """One finished run (one round) for the tests that only read a run: home/recipe.toml, home/pool.db and its run
    folder home/pool/, as a recipe lays them out."""
    home = tmp_path_factory.mktemp("finished")
    raw = recipe_dict(tiny, home / "pool.db")
    raw["expand"]["rounds"] = 1
    recipe = load_recipe(write_recipe(home / "recipe.toml", raw))
    pipeline.run(recipe, progress=False, log=lambda _: None)
    return recipe


def test_every_command_that_reads_a_run_takes_its_recipe_or_run_folder(finished, tmp_path):
    runner = CliRunner()
    recipe, run_dir, db = finished.path, finished.output.run_dir, finished.output.db
    statuses = [runner.invoke(main, ["status", str(named), "--json"]) for named in (recipe, run_dir, db)]
    assert all(s.exit_code == 0 for s in statuses) and len({s.output for s in statuses}) == 1
    exports = [runner.invoke(main, ["export", str(named), "-o", "-"]) for named in (recipe, run_dir, db)]
    assert all(e.exit_code == 0 for e in exports) and len({e.output for e in exports}) == 1 and exports[0].output
    for named in (recipe, run_dir):
        rebuilt = runner.invoke(main, ["report", str(named)])
        assert rebuilt.exit_code == 0 and rebuilt.output == f"{run_dir / 'report.md'}\n", rebuilt.output
        # train and eval load the recipe run.json names; this one has no [target] nor [eval], which they say
        trained = runner.invoke(main, ["train", str(named)])
        assert trained.output == f"Error: {recipe}: target: a [target] table is needed to train\n"
        evaluated = runner.invoke(main, ["eval", str(named)])
        assert evaluated.output == f"Error: {recipe}: eval: [eval] and [target] tables are needed to evaluate\n"
    alone = runner.invoke(main, ["report", str(db)])
    assert alone.exit_code == 1
    assert alone.output == f"Error: {db}: a database does not say where its run folder is; pass the folder or recipe\n"
    for command in ("status", "report", "export", "train", "eval"):
        args = [command, str(tmp_path)] + (["-o", "-"] if command == "export" else [])
        line = runner.invoke(main, args).output
        assert line.startswith(f"Error: {tmp_path}: not a run folder (no run.json") and line.count("\n") == 1, command


def test_export_writes_the_format_its_extension_names_and_refuses_others(finished, tmp_path):
    runner, db = CliRunner(), finished.output.db
    lines = finished.output.export_path.read_text().splitlines()  # the run's own export: JSON Lines
    for name in ("out.jsonl", "out.ndjson", "OUT.JSONL", "out"):
        result = runner.invoke(main, ["export", str(db), "-o", str(tmp_path / name)])
        assert result.output == f"{tmp_path / name}: {len(lines)} pairs (chat, JSON Lines)\n"
        assert (tmp_path / name).read_text().splitlines() == lines
    result = runner.invoke(main, ["export", str(db), "-o", str(tmp_path / "out.json")])
    assert result.exit_code == 0 and result.output.endswith("(chat, JSON)\n")
    assert json.loads((tmp_path / "out.json").read_text()) == [json.loads(line) for line in lines]
    assert runner.invoke(main, ["export", str(db), "-o", "-"]).output.splitlines() == lines
    for name, suffix in (("out.parquet", ".parquet"), ("out.csv", ".csv"), ("out.jsonl.gz", ".gz")):
        result = runner.invoke(main, ["export", str(db), "-o", str(tmp_path / name), "--format", "alpaca"])
        assert result.exit_code == 1 and not (tmp_path / name).exists()
        assert result.output == (
            f"Error: -o/--output: {tmp_path / name}: export cannot write {suffix} files; it writes {ACCEPTED}\n"
        )


def test_a_run_folder_copied_with_its_database_reads_the_copy(finished, tmp_path):
    original = tmp_path / "original"
    shutil.copytree(finished.output.db.parent, original)  # recipe, database and run folder, side by side
    info = json.loads((original / "pool" / "run.json").read_text())
    assert info == {"db": os.path.join("..", "pool.db"), "run_id": 1, "recipe": os.path.join("..", "recipe.toml")}
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    runner = CliRunner()
    status = runner.invoke(main, ["status", str(copy / "pool")])
    assert status.exit_code == 0 and "run 1: done" in status.output, status.output
    report = runner.invoke(main, ["report", str(copy / "pool")])
    assert report.exit_code == 0 and (copy / "pool" / "report.md").is_file(), report.output
    assert json.loads((copy / "pool" / "report.json").read_text())["dataset"]["kept"] > 0
    # the copied recipe still names the first database and folder: train refuses rather than write there
    line = runner.invoke(main, ["train", str(copy / "pool")]).output
    assert line == (
        f"Error: {copy / 'pool'}: its recipe {copy / 'recipe.toml'} writes to {finished.output.run_dir} (output.dir), "
        "not here; pass a recipe whose output.dir is this folder\n"
    )
    # a run.json from before held the database's absolute path: still read
    (copy / "pool" / "run.json").write_text(json.dumps({"db": str(copy / "pool.db"), "run_id": 1}))
    assert runner.invoke(main, ["status", str(copy / "pool")]).output == status.output
    assert not original.exists()


# -- kill and resume ------------------------------------------------------------------------------------


def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute(sql).fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # tables not created yet
        return 0


KILL_POINTS = [
    "select count(*) from prompts where round = 1",  # mid-expansion of round 1
    "select count(*) from answers a join prompts p on p.id = a.prompt_id where p.round = 2",  # mid-respond
    "select count(*) from scores s join prompts p on p.id = s.prompt_id where p.round = 2",  # mid-scoring
    "select count(*) from prompts where round = 3",
]


def _kill_when(recipe_path: Path, db: Path, sql: str, at_least: int) -> bool:
    """Start a run in a subprocess and SIGKILL it once sql counts at_least; False if it finished first."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tskd_lite", "run", "--quiet", str(recipe_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ},
    )
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if _count(db, sql) >= at_least:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode()
    return False


def _resume_and_compare(recipe_path: Path, db: Path, clean_db: Path) -> None:
    """Resume the killed run to the end; every table and the dataset must equal the uninterrupted run's."""
    done = subprocess.run(
        [sys.executable, "-m", "tskd_lite", "run", "--quiet", str(recipe_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    a, b = _snapshot(clean_db), _snapshot(db)
    for table in ("runs", "prompts", "answers", "scores", "selections", "rounds", "paraphrase_rounds"):
        assert b[table] == a[table], table
    assert db.with_suffix(".jsonl").read_text() == clean_db.with_suffix(".jsonl").read_text()


def kill_resume_compare(tiny, tmp_path, mutate, points: list[str], at_least: int, min_kills: int) -> None:
    """An uninterrupted run of the recipe, then one SIGKILLed at each point (when the SQL counts at_least) and
    resumed each time; the resumed run must equal the uninterrupted one, table by table and in its dataset."""

    def slower(raw):  # longer outputs give the poller time to land between commits
        mutate(raw)
        raw["respond"]["max_answer_tokens"] = 64

    clean_raw = recipe_dict(tiny, tmp_path / "clean.db")
    slower(clean_raw)
    pipeline.run(load_recipe(write_recipe(tmp_path / "clean.toml", clean_raw)), progress=False, log=lambda _: None)
    raw = recipe_dict(tiny, tmp_path / "killed.db")
    slower(raw)
    path = write_recipe(tmp_path / "killed.toml", raw)
    kills = sum(_kill_when(path, tmp_path / "killed.db", sql, at_least) for sql in points)
    assert kills >= min_kills, "the runs finished before the kill points; the test did not interrupt anything"
    _resume_and_compare(path, tmp_path / "killed.db", tmp_path / "clean.db")


def test_killed_runs_resume_to_the_same_pool_and_dataset(tiny, tmp_path):
    def slower(raw):  # longer outputs give the poller time to land between commits
        raw["expand"]["max_prompt_tokens"] = 48
        raw["respond"]["max_answer_tokens"] = 64

    clean_raw = recipe_dict(tiny, tmp_path / "clean.db")
    slower(clean_raw)
    clean = load_recipe(write_recipe(tmp_path / "clean.toml", clean_raw))
    pipeline.run(clean, progress=False, log=lambda _: None)

    raw = recipe_dict(tiny, tmp_path / "killed.db")
    slower(raw)
    path = write_recipe(tmp_path / "killed.toml", raw)
    db = tmp_path / "killed.db"
    kills = sum(_kill_when(path, db, sql, 3) for sql in KILL_POINTS)
    assert kills >= 3, "the runs finished before the kill points; the test did not interrupt anything"
    _resume_and_compare(path, db, tmp_path / "clean.db")
    con = sqlite3.connect(db)
    assert (
        con.execute("select count(*) from prompts").fetchone()[0]
        == con.execute("select count(distinct round || ':' || idx) from prompts").fetchone()[0]
    )


# -- fault injection: every store step is whole or absent ---------------------------------------------------

STEPS = [("insert_prompts", 1), ("insert_prompts", 3), ("add_answers", 2), ("add_scores", 2), ("record_selection", 2)]


@pytest.mark.parametrize(("method", "nth"), STEPS)
def test_a_step_failing_before_its_commit_leaves_nothing_and_the_resume_completes(
    tiny, tmp_path, monkeypatch, method, nth
):
    """The nth call of a store step writes everything it means to, then fails before its commit (as a kill or a
    failing last insert would): the database must hold exactly what it held before the step, and a resume must
    reach the uninterrupted run's result."""
    clean, _ = _run(tiny, tmp_path, name="clean")

    raw = recipe_dict(tiny, tmp_path / "faulty.db")
    recipe = load_recipe(write_recipe(tmp_path / "faulty.toml", raw))
    original = getattr(Store, method)
    seen = {"calls": 0, "before": None}

    def failing(self, *args, **kwargs):
        seen["calls"] += 1
        if seen["calls"] != nth:
            return original(self, *args, **kwargs)
        seen["before"] = _snapshot(self.path)
        with self.transaction():
            original(self, *args, **kwargs)  # nested: a savepoint inside the outer transaction
            raise RuntimeError("injected fault before commit")

    monkeypatch.setattr(Store, method, failing)
    with pytest.raises(RuntimeError, match="injected fault"):
        pipeline.run(recipe, progress=False, log=lambda _: None)
    after = _snapshot(recipe.output.db)
    for table in ("prompts", "answers", "scores", "selections", "rounds"):
        assert after[table] == seen["before"][table], table

    monkeypatch.setattr(Store, method, original)
    pipeline.run(recipe, progress=False, log=lambda _: None)
    a, b = _snapshot(clean.output.db), _snapshot(recipe.output.db)
    for table in ("prompts", "answers", "scores", "selections", "rounds"):
        assert b[table] == a[table], table
    assert recipe.output.export_path.read_text() == clean.output.export_path.read_text()


def test_a_large_insert_that_fails_half_way_leaves_no_rows(tmp_path):
    """sqlite-utils inserts in chunks of 100 and, outside a transaction, commits each chunk."""
    store = Store.open(tmp_path / "big.db")
    try:
        run_id = store.new_run("r.toml", "", {}, "h")

        def rows():
            for i in range(250):
                if i == 180:
                    raise RuntimeError("source failed at row 180")
                yield {"run_id": run_id, "round": 0, "idx": i, "text": f"p{i}", "norm": f"p{i}", "status": "new"}

        with pytest.raises(RuntimeError, match="row 180"):
            store.insert_prompts(rows())
        assert store.prompts(run_id) == []
    finally:
        store.close()


# -- paraphrase augmentation ---------------------------------------------------------------------------------


def _with_paraphrases(raw):
    raw["expand"]["paraphrases"] = 2
    raw["expand"]["rounds"] = 2


def test_paraphrases_of_kept_prompts_are_answered_scored_and_selected(tiny, tmp_path):
    recipe, result = _run(tiny, tmp_path, mutate=_with_paraphrases)
    con = sqlite3.connect(recipe.output.db)
    rows = con.execute(
        "select p.id, p.round, p.parent_id, p.status, q.round, q.source, s.kept from prompts p "
        "join prompts q on q.id = p.parent_id left join selections s on s.prompt_id = q.id "
        "where p.source = 'paraphrase'"
    ).fetchall()
    # every kept non-paraphrase prompt of every round has exactly two paraphrase items, in its own round
    kept_parents = con.execute(
        "select p.id from prompts p join selections s on s.prompt_id = p.id "
        "where s.kept = 1 and p.source != 'paraphrase'"
    ).fetchall()
    assert len(rows) == 2 * len(kept_parents) > 0
    assert all(r[1] == r[4] and r[5] != "paraphrase" and r[6] == 1 for r in rows)
    # new paraphrases are answered and decided like any other prompt; their stage has its own completion mark
    new = [r[0] for r in rows if r[3] == "new"]
    decided = {pid for (pid,) in con.execute("select prompt_id from selections")}
    assert new and set(new) <= decided
    # rewrites that lost a name or number of their parent are recorded as drifted and never answered
    answered = {pid for (pid,) in con.execute("select prompt_id from answers")}
    drifted = {r[0] for r in rows if r[3] == "drifted"}
    assert drifted and not drifted & answered
    stages = con.execute("select round, n_kept from paraphrase_rounds order by round").fetchall()
    assert [r for r, _ in stages] == [0, 1, 2]
    kept_paraphrases = con.execute(
        "select count(*) from selections s join prompts p on p.id = s.prompt_id "
        "where s.kept = 1 and p.source = 'paraphrase'"
    ).fetchone()[0]
    assert sum(n for _, n in stages) == kept_paraphrases
    assert result.kept == len(kept_parents) + kept_paraphrases

    runner = CliRunner()
    status = runner.invoke(main, ["status", str(recipe.output.db)])
    assert "of which paraphrases" in status.output
    out = tmp_path / "prov.jsonl"
    runner.invoke(main, ["export", str(recipe.output.db), "-o", str(out), "--provenance"])
    provenance = [json.loads(line)["tskd"] for line in out.read_text().splitlines()]
    of = {p["prompt_id"]: p["paraphrase_of"] for p in provenance if p["source"] == "paraphrase"}
    assert len(of) == kept_paraphrases and all(parent is not None for parent in of.values())
    assert all(p["paraphrase_of"] is None for p in provenance if p["source"] != "paraphrase")


def test_a_killed_run_with_paraphrases_resumes_to_the_same_pool(tiny, tmp_path):
    def longer(raw):
        _with_paraphrases(raw)
        raw["expand"]["max_prompt_tokens"] = 48

    points = [
        "select count(*) from prompts where source = 'paraphrase' and round = 0",  # mid-paraphrasing
        "select count(*) from answers a join prompts p on p.id = a.prompt_id "
        "where p.source = 'paraphrase' and p.round = 1",  # mid-answering the paraphrases
        "select count(*) from scores s join prompts p on p.id = s.prompt_id "
        "where p.source = 'paraphrase' and p.round = 2",  # mid-scoring them
    ]
    kill_resume_compare(tiny, tmp_path, longer, points, at_least=3, min_kills=2)


# -- context size ------------------------------------------------------------------------------------------------


def test_an_overflowing_seed_or_instruction_is_refused_before_the_run_starts(tiny, tmp_path):
    def long_seed(raw):
        raw["seeds"]["prompts"] = [*SEEDS, "word " * 200]
        raw["teacher"]["n_ctx"] = raw["base"]["n_ctx"] = 128

    with pytest.raises(TskdError, match=r"teacher.n_ctx: seed prompt 6 takes \d+ tokens .* raise teacher.n_ctx"):
        _run(tiny, tmp_path, mutate=long_seed)
    con = sqlite3.connect(tmp_path / "run.db")
    assert con.execute("select count(*) from runs").fetchone()[0] == 0  # nothing started, nothing to clean up

    def long_instruction(raw):
        raw["teacher"]["n_ctx"] = raw["base"]["n_ctx"] = 160
        raw["expand"]["max_prompt_tokens"] = 40

    with pytest.raises(TskdError, match=r"teacher.n_ctx: the prompt-writing instruction .* lower expand.few_shot"):
        _run(tiny, tmp_path, "instr", mutate=long_instruction)


def test_n_ctx_may_be_raised_to_resume_a_run(tiny, tmp_path):
    recipe, first = _run(tiny, tmp_path, mutate=lambda raw: raw["expand"].update(rounds=1))

    def more(raw):
        raw["expand"]["rounds"] = 2
        raw["teacher"]["n_ctx"] = raw["base"]["n_ctx"] = 1024

    _, resumed = _run(tiny, tmp_path, mutate=more)
    assert resumed.run_id == first.run_id


def test_a_model_file_replaced_in_place_is_refused_on_resume(tiny, tmp_path):
    import shutil

    teacher = tmp_path / "teacher.gguf"
    shutil.copy(tiny["teacher"], teacher)

    def own_teacher(raw):
        raw["teacher"]["model"] = teacher
        raw["expand"]["rounds"] = 1

    _run(tiny, tmp_path, mutate=own_teacher)
    shutil.copy(tiny["base"], teacher)  # another model under the same path
    with pytest.raises(TskdError, match=r"teacher.model: .*teacher.gguf is not the file run 1 was made with"):
        _run(tiny, tmp_path, mutate=own_teacher)
    _, fresh = _run(tiny, tmp_path, mutate=own_teacher, force_new=True)
    assert fresh.run_id == 2


# -- paths -----------------------------------------------------------------------------------------------------


def test_a_recipe_cannot_take_over_another_database_or_file(tiny, tmp_path):
    other = tmp_path / "run.db"
    con = sqlite3.connect(other)
    con.execute("create table customers (id integer, name text)")
    con.commit()
    con.close()
    before = other.read_bytes()
    with pytest.raises(TskdError, match=r"run.db: an existing SQLite database that is not a tskd-lite store"):
        _run(tiny, tmp_path)
    assert other.read_bytes() == before
    other.unlink()

    notes = tmp_path / "run.jsonl"  # the export path of the recipe _run writes
    notes.write_text("someone's notes\n")
    with pytest.raises(TskdError, match=r"output.export: .*run.jsonl exists and was not written by a run"):
        _run(tiny, tmp_path)
    assert notes.read_text() == "someone's notes\n"
    notes.unlink()
    recipe, first = _run(tiny, tmp_path)  # a new file: written and recorded; a rerun may write it again
    _, again = _run(tiny, tmp_path)
    assert again.run_id == first.run_id and notes.is_file()

    out = CliRunner().invoke(main, ["check", str(recipe.path)])
    assert out.exit_code == 0
    for path in (tiny["teacher"], tiny["base"], recipe.output.db, recipe.output.export_path):
        assert str(path) in out.output
