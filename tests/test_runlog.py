"""<run folder>/run.log: what a run printed, timestamped, appended run after run, with the error it stopped on;
never written into a folder that is not the run's own, never through a link."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from click.testing import CliRunner
from conftest import recipe_dict, write_recipe

from tskd_lite import pipeline, rundir
from tskd_lite.cli import main
from tskd_lite.errors import TskdError
from tskd_lite.recipe import load_recipe


def _recipe(tiny, tmp_path: Path) -> Path:
    raw = recipe_dict(tiny, tmp_path / "pool.db")
    raw["expand"] |= {"rounds": 1, "candidates_per_round": 4}
    return write_recipe(tmp_path / "r.toml", raw)


def _entries(log: Path) -> list[tuple[datetime, str]]:
    """(time, message) per line; fails on a line that does not start with an ISO timestamp with its zone."""
    out = []
    for line in log.read_text(encoding="utf-8").splitlines():
        at, message = line.split(" ", 1)
        stamp = datetime.fromisoformat(at)
        assert stamp.tzinfo is not None, line
        out.append((stamp, message))
    return out


def test_run_appends_every_line_it_prints_to_the_run_folders_log(tiny, tmp_path):
    path = _recipe(tiny, tmp_path)
    first = CliRunner().invoke(main, ["run", "--quiet", str(path)])
    assert first.exit_code == 0, first.output
    log = tmp_path / "pool" / "run.log"
    entries = _entries(log)
    messages = [m for _, m in entries]
    assert messages[0] == f"--- tskd-lite run {path.resolve()}"
    printed = first.output.strip().splitlines()
    assert messages[1:] == printed  # every line, in order, the ones before the folder existed included
    assert any(m.startswith("new run 1 in") for m in messages) and any(m.startswith("round 1: kept") for m in messages)
    assert [t for t, _ in entries] == sorted(t for t, _ in entries)

    again = CliRunner().invoke(main, ["run", "--quiet", str(path)])
    assert again.exit_code == 0, again.output
    messages = [m for _, m in _entries(log)]
    assert messages[: len(printed) + 1] == [f"--- tskd-lite run {path.resolve()}", *printed]  # appended, not replaced
    assert messages.count(f"--- tskd-lite run {path.resolve()}") == 2
    assert any(m.startswith("resuming run 1 in") for m in messages[len(printed) + 1 :])


def test_the_error_a_run_stops_on_is_the_logs_last_line(tiny, tmp_path, monkeypatch):
    def fails(*_args):
        raise TskdError("the disk said no")

    monkeypatch.setattr(pipeline, "_rounds", fails)
    result = CliRunner().invoke(main, ["run", "--quiet", str(_recipe(tiny, tmp_path))])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == "Error: the disk said no"
    messages = [m for _, m in _entries(tmp_path / "pool" / "run.log")]
    assert messages[-1] == "error: the disk said no" and messages.count("error: the disk said no") == 1


def test_nothing_is_written_where_the_folder_is_not_the_runs_own(tiny, tmp_path):
    recipe = load_recipe(_recipe(tiny, tmp_path))
    out = recipe.output
    out.run_dir.mkdir()
    (out.run_dir / "notes.txt").write_text("the user's folder, not claimed by any run\n")
    lines = []
    log = rundir.RunLog(lines.append, out.run_dir, out.db, "tskd-lite run r.toml")
    log("loading teacher")
    log.stopped(TskdError("stopped before the folder was claimed"))
    assert lines == ["loading teacher"]  # the terminal has it
    assert not (out.run_dir / "run.log").exists()  # the folder does not

    # a user's own run.log in an output.dir no run claimed keeps the run from using that folder at all
    (out.run_dir / "run.log").write_text("the user's own log\n")
    result = CliRunner().invoke(main, ["run", "--quiet", str(recipe.path)])
    assert result.exit_code == 1 and "run.log exists and no tskd-lite run wrote it" in result.output
    assert (out.run_dir / "run.log").read_text() == "the user's own log\n"


def test_lines_before_the_claim_go_in_once_it_is_made_and_a_link_is_never_followed(tiny, tmp_path):
    recipe = load_recipe(_recipe(tiny, tmp_path))
    out = recipe.output
    lines = []
    log = rundir.RunLog(lines.append, out.run_dir, out.db, "tskd-lite train r.toml")
    log("before")
    rundir.claim(out.run_dir, out.db, 1, "output.dir")
    log("after")
    assert [m for _, m in _entries(out.run_dir / "run.log")] == ["--- tskd-lite train r.toml", "before", "after"]

    victim = tmp_path / "victim.txt"
    victim.write_text("not a log\n")
    (out.run_dir / "run.log").unlink()
    (out.run_dir / "run.log").symlink_to(victim)
    log = rundir.RunLog(lines.append, out.run_dir, out.db, "tskd-lite eval r.toml")
    log("one")
    log("two")
    assert victim.read_text() == "not a log\n"
    one, warning, two = lines[-3:]
    assert (one, two) == ("one", "two")  # the terminal still has every line
    assert warning.startswith(f"WARNING: cannot write {out.run_dir / 'run.log'}")  # said once, then the log is off


def test_a_log_that_is_given_no_line_writes_nothing(tiny, tmp_path):
    """Under torchrun only rank 0 logs (dist.on_main): the other ranks' logs see no line and must stay silent, even
    about the error they stop on."""
    recipe = load_recipe(_recipe(tiny, tmp_path))
    out = recipe.output
    rundir.claim(out.run_dir, out.db, 1, "output.dir")
    silent = rundir.RunLog(print, out.run_dir, out.db, "tskd-lite train r.toml")
    silent.stopped(RuntimeError("rank 1 failed"))
    assert not (out.run_dir / "run.log").exists()
