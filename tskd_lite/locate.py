"""What a command that reads a run is pointed at: a recipe, a run folder or a database, each naming the others.

status, report, export, train and eval all take their RUN argument through locate(), so what one accepts every
other accepts too: a recipe names its database and run folder; a run folder's run.json names its database and
recipe; a database alone names neither, which is enough for status and export.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tskd_lite import rundir
from tskd_lite.errors import TskdError
from tskd_lite.recipe import Recipe, load_recipe

EXPECTED = "a recipe (.toml), a run folder (with run.json) or a database"


@dataclass(frozen=True)
class RunPlace:
    """The database, run folder and run that what the user named stands for."""

    named: Path  # as the user gave it, for messages
    db: Path
    run_dir: Path | None  # None: a database alone, which does not say where its run folder is
    run_id: int | None  # the run a run folder belongs to; None: the database's latest
    recipe_path: Path | None  # None: a database alone, or a run.json written before it recorded its recipe
    loaded: Recipe | None = None  # the recipe when `named` is one (loaded once: loading checks every model file)

    def recipe(self) -> Recipe:
        """The recipe that made the run: train and eval need its models and files, not only the database."""
        if self.loaded is not None:
            return self.loaded
        if self.recipe_path is None:
            what = "a database alone" if self.run_dir is None else f"{self.run_dir / 'run.json'} names none"
            raise TskdError(f"{self.named}: no recipe to read ({what}); pass the recipe file")
        if not self.recipe_path.is_file():
            info = self.run_dir / "run.json"
            raise TskdError(f"{info}: its recipe {self.recipe_path} is not there (moved?); pass the recipe file")
        recipe = load_recipe(self.recipe_path)
        if self.run_dir is not None and recipe.output.run_dir.resolve() != self.run_dir.resolve():
            # a copied run folder: its recipe still writes to the original, which the command must not touch
            raise TskdError(
                f"{self.run_dir}: its recipe {self.recipe_path} writes to {recipe.output.run_dir} (output.dir), "
                "not here; pass a recipe whose output.dir is this folder"
            )
        return recipe

    def folder(self) -> Path:
        """The run folder (what report writes into); refused for a database alone, which does not say where its
        folder is, and for a recipe whose output.dir holds another database's run."""
        if self.run_dir is None:
            raise TskdError(f"{self.named}: a database does not say where its run folder is; pass the folder or recipe")
        made_by = rundir.owner(self.run_dir)
        if made_by is not None and made_by.resolve() != self.db.resolve():
            raise TskdError(f"{self.named}: output.dir {self.run_dir} holds the outputs of {made_by} (run.json)")
        return self.run_dir


def locate(target: Path) -> RunPlace:
    """Read RUN: a directory is a run folder (it must hold run.json), a .toml file a recipe, any other file a
    database (the store says what is wrong with it, if anything)."""
    target = Path(target)
    if target.is_dir():
        if not os.path.lexists(target / "run.json"):
            raise TskdError(f"{target}: not a run folder (no run.json; `tskd-lite run` writes it); expected {EXPECTED}")
        db, run_id, recipe_path = rundir.run_info(target)
        return RunPlace(target, db, target, run_id, recipe_path)
    if target.suffix.lower() == ".toml":
        recipe = load_recipe(target)
        return RunPlace(target, recipe.output.db, recipe.output.run_dir, None, target, recipe)
    if not os.path.lexists(target):
        raise TskdError(f"{target}: not found; expected {EXPECTED}")
    return RunPlace(target, target, None, None, None)
