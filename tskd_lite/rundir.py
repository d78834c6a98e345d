"""The run folder (output.dir): whose outputs it holds, and one writer at a time.

run.json names the database whose run the folder belongs to. A folder is claimed only when it names no other
database and holds none of the files tskd-lite writes there without that marker, so two recipes never write over
each other's adapter or report, and a user's own `train/` or `report.md` is never touched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
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
    "eval.json",
    "train",
    "outputs.lock",
    "error.log",
)


def owner(run_dir: Path) -> Path | None:
    """The database run_dir's run.json names, or None where there is no run.json."""
    info = run_dir / "run.json"
    if not os.path.lexists(info):
        return None
    try:
        return Path(json.loads(info.read_text(encoding="utf-8"))["db"])
    except (OSError, ValueError, KeyError, TypeError):
        raise TskdError(f'{info}: not a run.json tskd-lite wrote (expected {{"db": ..., "run_id": ...}})') from None


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


def claim(run_dir: Path, db: Path, run_id: int | None, where: str) -> None:
    """Make run_dir the folder of db's run run_id (after check's test); run_id None: of its latest run, keeping
    the run a run.json already names (training or evaluation started without `run`)."""
    check(run_dir, db, where)
    if run_id is None and owner(run_dir) is not None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "run.json", json.dumps({"db": str(Path(db).resolve()), "run_id": run_id}))


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
