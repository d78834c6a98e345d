"""The run folder (output.dir): whose outputs it holds, and one writer at a time.

run.json names the database whose run the folder belongs to (and the recipe that made it). A folder is claimed
only when it names no other database and holds none of the files tskd-lite writes there without that marker, so two
recipes never write over each other's adapter or report, and a user's own `train/` or `report.md` is never touched.

Its paths are relative to the folder itself, so a run folder copied or moved together with its database reports on
the copy, never on the original (run.json files written before hold absolute paths, still read as they are).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tskd_lite import atomic, locks
from tskd_lite.errors import TskdError
from tskd_lite.store import Store

if TYPE_CHECKING:
    from tskd_lite.recipe import Recipe

# Everything a run writes inside its folder (train/ holds the adapter, the merged model and the checkpoint).
OUR_NAMES = (
    "run.json",
    "report.md",
    "report.json",
    "gap_hist.png",
    "loss.png",
    "eval.png",
    "funnel.png",
    "eval.json",
    "train",
    "outputs.lock",
    "error.log",
    "run.log",
    "weights",  # model copies re-encoded for scoring (a model's requantize key)
)


def owner(run_dir: Path) -> Path | None:
    """The database run_dir's run.json names, or None where there is no run.json."""
    return run_info(run_dir)[0] if os.path.lexists(run_dir / "run.json") else None


def run_info(run_dir: Path) -> tuple[Path, int | None, Path | None]:
    """run.json's database, run id and recipe (None: not recorded), its relative paths made absolute."""
    info = run_dir / "run.json"
    try:
        raw = json.loads(info.read_text(encoding="utf-8"))
        recipe = raw.get("recipe")
        run_id = raw.get("run_id")
        if not isinstance(run_id, (int, type(None))) or isinstance(run_id, bool):
            raise TypeError(run_id)
        return _from_folder(run_dir, raw["db"]), run_id, None if recipe is None else _from_folder(run_dir, recipe)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise TskdError(f'{info}: not a run.json tskd-lite wrote (expected {{"db": ..., "run_id": ...}})') from None


def _from_folder(run_dir: Path, stored: str) -> Path:
    """A path run.json holds: relative to the run folder (an absolute one, from before, is taken as it is)."""
    if not isinstance(stored, str):
        raise TypeError(stored)
    return (run_dir / stored).resolve() if not Path(stored).is_absolute() else Path(stored)


def _to_folder(run_dir: Path, path: Path) -> str:
    """path as run.json stores it: relative to the run folder, so the two can be moved together."""
    try:
        return os.path.relpath(Path(path).resolve(), run_dir.resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        return str(Path(path).resolve())


def check(run_dir: Path, db: Path, where: str) -> None:
    """Raise TskdError (naming `where`, the recipe key) unless run_dir is free or already db's run folder."""
    if os.path.lexists(run_dir) and not run_dir.is_dir():
        raise TskdError(f"{where}: {run_dir} exists and is not a folder")
    made_by = owner(run_dir)
    if made_by is not None:
        if made_by.resolve() != Path(db).resolve():
            raise TskdError(
                f"{where}: {run_dir} holds the outputs of {made_by} (run.json); give this recipe its own output.dir"
            )
        return
    found = [name for name in OUR_NAMES if os.path.lexists(run_dir / name)]
    if found:
        raise TskdError(
            f"{where}: {run_dir / found[0]} exists and no tskd-lite run wrote it (no run.json); "
            "choose another output.dir"
        )


def claim(run_dir: Path, db: Path, run_id: int | None, where: str, recipe: Path | None = None) -> None:
    """Make run_dir the folder of db's run run_id (after check's test), made by the recipe file `recipe`; run_id
    None: of its latest run, keeping the run a run.json already names (training or evaluation started without
    `run`)."""
    check(run_dir, db, where)
    if run_id is None and owner(run_dir) is not None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"db": _to_folder(run_dir, db), "run_id": run_id}
    if recipe is not None:  # so that train, eval and report take the run folder alone
        info["recipe"] = _to_folder(run_dir, recipe)
    atomic.write_text(run_dir / "run.json", json.dumps(info))


def check_outputs(recipe: Recipe) -> None:
    """Refuse, before anything is written, a run that would write over what is not its own: a run folder that
    holds another database's outputs (or files no run wrote), an existing dataset file no run of this database
    wrote, a database another program made."""
    out = recipe.output
    check(out.run_dir, out.db, f"{recipe.path}: output.dir")
    if out.db.is_file() and out.db.stat().st_size > 0:
        with Store.read(out.db) as store:
            free = store.may_write_export(out.export_path)
    else:
        free = not os.path.lexists(out.export_path)
    if not free:
        raise TskdError(
            f"{recipe.path}: output.export: {out.export_path} exists and was not written by a run of {out.db}; "
            "remove it or choose another output.export"
        )


@contextmanager
def lock(run_dir: Path) -> Iterator[None]:
    """The run folder to one writer at a time: training, evaluation and the report share its files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with locks.held(run_dir / "outputs", "another tskd-lite command is training, evaluating or reporting here"):
        yield


class RunLog:
    """A command's log: each line goes to `log` (the terminal) and, with an ISO timestamp, is appended to
    <run folder>/run.log, so what a run said can be read after its terminal is gone. Only once the folder is this
    database's run folder (its run.json, written by claim): lines logged before that (models loading, the run
    starting) wait here and go in first, and in a folder that never becomes the run's nothing is written. A
    RunLog that is never given a line writes nothing either (under torchrun, the ranks that do not log)."""

    def __init__(self, log: Callable[[str], None], run_dir: Path, db: Path, heading: str) -> None:
        self.log, self.run_dir, self.db = log, Path(run_dir), Path(db).resolve()
        self.path = self.run_dir / "run.log"
        self.pending = [(_now(), f"--- {heading}")]  # written with the first line, to mark where a command begins
        self.said = False
        self.state = "waiting"  # for the run folder; then "writing", or "off" after a write failed
        self.noted: BaseException | None = None

    def __call__(self, line: str) -> None:
        self.log(line)
        self.said = True
        self.write(line)

    def stopped(self, error: BaseException) -> None:
        """Note in the file (the terminal has the error already, from the command line) why the command ended."""
        if error is self.noted or not self.said:
            return
        self.noted = error
        if isinstance(error, KeyboardInterrupt):
            why = "interrupted (Ctrl-C); run the same command again to resume"
        else:
            name = "" if isinstance(error, TskdError) else f"{type(error).__name__}: "
            why = f"error: {name}{' '.join(str(error).split()) or 'no message'}"
        self.write(why)

    def write(self, line: str) -> None:
        self.pending += [(_now(), part) for part in line.split("\n")]
        if self.state == "waiting" and self._ours():
            self.state = "writing"
        if self.state != "writing":
            if self.state == "off":
                self.pending = []
            return
        text = "".join(f"{at} {part}\n" for at, part in self.pending)
        self.pending = []
        try:
            # O_NOFOLLOW: a link left at run.log is refused, never followed out of the folder; O_NONBLOCK: a FIFO
            # there is refused rather than waited on (a regular file ignores it)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
            fd = os.open(self.path, flags, 0o666)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:  # the log must never stop the run it records
            self.state = "off"
            self.log(f"WARNING: cannot write {self.path} ({e.strerror or e}); the run goes on without its log file")

    def _ours(self) -> bool:
        try:
            made_by = owner(self.run_dir)
        except TskdError:  # a damaged run.json: not a folder to write into (the command itself reports it)
            return False
        return made_by is not None and made_by.resolve() == self.db


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
