"""`tskd-lite init`: the starter recipe loads and passes check as written, names its files relative to its own
folder, leaves the product's defaults out, and refuses what it must (an existing file, a missing input)."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from tinymodels import write_tiny_lora

from tskd_lite.cli import main
from tskd_lite.recipe import Select, Train, load_recipe


@pytest.fixture
def project(tiny, tmp_path) -> Path:
    """A user's folder: models, seeds, names and a held-out file, with the recipe to go into recipes/."""
    (tmp_path / "models").mkdir()
    for name in ("teacher", "base", "other"):
        shutil.copy(tiny[name], tmp_path / "models" / f"{name}.gguf")
    write_tiny_lora(tmp_path / "models" / "adapter.gguf", {"blk.0.ffn_up.weight": (128, 64)})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "seeds.txt").write_text("Where does Ada Lin live?\nWhat does Bo Kra do?\n")
    (tmp_path / "data" / "names.txt").write_text("Ada Lin\nBo Kra\nCy Dee\n")
    (tmp_path / "data" / "test.jsonl").write_text('{"prompt": "Where does Cy Dee live?", "answer": "Oslo"}\n')
    return tmp_path


def _init(project: Path, *extra: str, recipe: str = "recipes/new.toml", **given: str):
    files = {"teacher": "models/teacher.gguf", "base": "models/base.gguf", "seeds": "data/seeds.txt"} | given
    args = ["init", str(project / recipe), *extra]
    for option, path in files.items():
        args += [f"--{option.replace('_', '-')}", str(project / path)]
    return CliRunner().invoke(main, args)


def _one_line_error(result) -> str:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ")
    return line


def test_the_starter_recipe_loads_passes_check_and_moves_with_its_files(project):
    full = {"teacher_lora": "models/adapter.gguf", "entities": "data/names.txt", "target": "models/other.gguf"}
    result = _init(project, eval="data/test.jsonl", **full)
    assert result.exit_code == 0, result.output
    path = project / "recipes" / "new.toml"
    text = path.read_text()
    assert str(project) not in text  # every path relative to the recipe's folder
    assert tomllib.loads(text)["teacher"] == {"model": "../models/teacher.gguf", "lora": "../models/adapter.gguf"}
    checked = CliRunner().invoke(main, ["check", str(path)])
    assert checked.exit_code == 0 and f"{path}: ok (2 seed prompts" in checked.output, checked.output
    r = load_recipe(path)
    assert r.teacher.lora == (project / "models" / "adapter.gguf").resolve()
    assert r.target.model == (project / "models" / "other.gguf").resolve()
    assert len(r.expand.entities) == 3 and r.expand.strategy == "entities"  # chosen for the names, not written
    assert r.eval is not None and r.output.db == (project / "recipes" / "runs" / "new" / "pool.db").resolve()

    # the defaults are the product's: left out (the sized keys sized by the strategy), named in the comments only
    assert set(r.expand.sized_keys) == {"candidates_per_round", "target_kept"}
    assert r.select == Select() and r.train == Train()
    raw = tomllib.loads(text)
    assert raw["train"] == {} and raw["select"] == {} and "seed" not in raw
    assert f"rank {Train().rank}, {Train().epochs} epochs" in text and f"# tau = {Select().tau:g}" in text
    assert all(line.startswith("#") or line.strip() == "" or "[" in line or "=" in line for line in text.splitlines())

    # the recipe and its files moved together elsewhere still load: nothing points back at the old place
    moved = project.parent / "moved"
    shutil.copytree(project, moved)
    shutil.rmtree(project)
    assert load_recipe(moved / "recipes" / "new.toml").teacher.model == (moved / "models" / "teacher.gguf").resolve()


def test_a_recipe_without_target_or_names_is_a_dataset_recipe(project):
    result = _init(project, recipe="here.toml")
    assert result.exit_code == 0, result.output
    r = load_recipe(project / "here.toml")
    assert r.target is None and r.eval is None and r.expand.strategy == "fewshot"
    assert tomllib.loads((project / "here.toml").read_text())["seeds"] == {"file": "data/seeds.txt"}


def test_an_existing_recipe_is_kept_unless_force(project):
    path = project / "recipes" / "new.toml"
    path.parent.mkdir()
    path.write_text("# the user's own recipe\n")
    line = _one_line_error(_init(project))
    assert f"{path} exists; pass --force" in line
    assert path.read_text() == "# the user's own recipe\n"
    assert _init(project, "--force").exit_code == 0
    assert load_recipe(path).teacher.model == (project / "models" / "teacher.gguf").resolve()
    assert sorted(p.name for p in path.parent.iterdir()) == ["new.toml"]  # no temporary file left beside it


@pytest.mark.parametrize(
    ("option", "given"),
    [
        ("--teacher", {"teacher": "models/absent.gguf"}),
        ("--base", {"base": "models/absent.gguf"}),
        ("--teacher-lora", {"teacher_lora": "models/absent.gguf"}),
        ("--target", {"target": "models/absent.gguf"}),
        ("--seeds", {"seeds": "data/absent.txt"}),
        ("--entities", {"entities": "data/absent.txt"}),
    ],
)
def test_a_missing_input_names_the_option_and_the_path_and_writes_nothing(project, option, given):
    line = _one_line_error(_init(project, **given))
    (path,) = given.values()
    assert line == f"Error: {option}: file not found: {project / path}"
    assert not (project / "recipes").exists()


def test_what_the_recipe_would_refuse_is_refused_before_it_is_written(project):
    (project / "models" / "broken.gguf").write_text("not a model")
    assert "--base: " in _one_line_error(_init(project, base="models/broken.gguf"))
    assert "--eval: " in _one_line_error(_init(project, eval="data/test.jsonl"))  # no target to evaluate
    (project / "data" / "empty.txt").write_text("\n")
    line = _one_line_error(_init(project, seeds="data/empty.txt"))
    assert line.startswith(f"Error: {project / 'recipes' / 'new.toml'}: seeds") and ".part" not in line
    assert not (project / "recipes").exists()  # nor the folder made for it

    # refused in a folder that was there: the folder stays, with nothing new in it
    (project / "recipes").mkdir()
    _one_line_error(_init(project, seeds="data/empty.txt"))
    assert not list((project / "recipes").iterdir())
