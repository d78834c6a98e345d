"""`tskd-lite init`: a commented starter recipe written from the models and files a user has.

The file names only what the user gave (models, seeds, names, held-out file) and where the run writes; every other
key is left out, so it keeps the product's default (docs/recipe.md), and the comments say what that default is,
read from the recipe's dataclasses so they cannot drift from it. Keys that a strategy sizes when unset
(expand.candidates_per_round, expand.target_kept) are never written. The text is validated as `check` validates a
recipe before it is put in place, so `init` never leaves a recipe that `check` refuses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tskd_lite import atomic, rundir
from tskd_lite.errors import TskdError
from tskd_lite.gguf_meta import check_gguf
from tskd_lite.jsonl import check_input_file
from tskd_lite.recipe import Expand, ModelSpec, Recipe, Select, Train, load_recipe
from tskd_lite.registry import Registry
from tskd_lite.select import RULES
from tskd_lite.strategies import STRATEGIES


@dataclass(frozen=True)
class Inputs:
    """What `init` was given: the command line's paths, as the user typed them."""

    teacher: Path
    base: Path
    seeds: Path
    teacher_lora: Path | None = None
    target: Path | None = None
    entities: Path | None = None
    eval: Path | None = None

    def check(self) -> None:
        """Each file there and of its kind, or one line naming the option and the path."""
        if self.eval is not None and self.target is None:
            raise TskdError(
                f"--eval: {self.eval}: evaluation scores the target before and after training; give --target"
            )
        for option, path in (("--teacher", self.teacher), ("--teacher-lora", self.teacher_lora), ("--base", self.base)):
            if path is not None:
                check_gguf(path, option)
        if self.target is not None and not self.target.is_dir():  # a Hugging Face folder is checked at load
            check_gguf(self.target, "--target")
        for option, path in (("--seeds", self.seeds), ("--entities", self.entities), ("--eval", self.eval)):
            if path is not None:
                check_input_file(path, option)


def write_starter(path: Path, given: Inputs, *, force: bool = False) -> Recipe:
    """Write the starter recipe at path (an existing file only with force) and return it as loaded."""
    path = Path(path)
    if path.is_dir():
        raise TskdError(f"{path} is a folder; name the recipe file to write (recipe.toml)")
    if os.path.lexists(path) and not force:
        raise TskdError(f"{path} exists; pass --force to replace it, or choose another file")
    if path.suffix != ".toml":  # status and export tell a recipe from a database by its suffix
        raise TskdError(f"{path}: a recipe's name ends in .toml")
    given.check()
    made = [folder for folder in (path.parent, *path.parent.parents) if not os.path.lexists(folder)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TskdError(f"{path}: cannot make its folder {path.parent}: {e.strerror or e}") from None
    try:
        # validated under a temporary name beside it (paths resolve against the recipe's folder), then put in
        # place whole: a refused recipe leaves nothing, and --force replaces the old one only with a good one
        with atomic.replacing_path(path, replace=force) as tmp:
            tmp.write_text(starter_text(path, given), encoding="utf-8")
            recipe = _validated(tmp, path)
    except (TskdError, FileExistsError) as e:
        for folder in made:  # the folders made for it, deepest first, as they were: not there
            try:
                folder.rmdir()
            except OSError:  # something else was put in it meanwhile: it stays, with what it holds
                break
        if isinstance(e, FileExistsError):  # a file put there meanwhile: still never replaced without --force
            raise TskdError(f"{path} exists; pass --force to replace it, or choose another file") from None
        raise
    return dataclasses.replace(recipe, path=path.resolve())


def _validated(tmp: Path, path: Path) -> Recipe:
    """load_recipe and the output checks `check` makes, their errors naming the recipe, not the temporary file."""
    try:
        recipe = load_recipe(tmp)
        rundir.check_outputs(recipe)
        return recipe
    except TskdError as e:
        message = str(e).replace(str(tmp.resolve()), str(path)).replace(str(tmp), str(path))
        raise TskdError(message) from None


def _relative(file: Path, folder: Path) -> str:
    """file as a recipe in folder names it: relative to that folder (a recipe's paths resolve against it, symlinks
    followed from the folder's real place), keeping the user's own names for the file's folders."""
    return Path(os.path.relpath(os.path.abspath(file), os.path.realpath(folder))).as_posix()


def starter_text(path: Path, given: Inputs) -> str:
    """The recipe's text: what each table is for, the files given, and the defaults the rest keeps."""
    folder = Path(path).parent

    def quoted(file: Path) -> str:  # a JSON string is a TOML basic string
        return json.dumps(_relative(file, folder))

    name, stem = Path(path).name, Path(path).stem
    spec, expand, select = ModelSpec(), Expand(), Select()
    seed = Recipe.__dataclass_fields__["seed"].default
    head = (
        "A tskd-lite recipe written by `tskd-lite init`: the models and files it was given, and where the run "
        "writes. Every key left out keeps its default (docs/recipe.md lists each key with it); relative paths are "
        f"relative to this file's folder. `tskd-lite check {name}` validates it and says what a run would do, "
        f"without loading a model; `tskd-lite run {name}` runs it, and run again resumes where it stopped."
    )
    teacher = [f"model = {quoted(given.teacher)}"]
    if given.teacher_lora is not None:
        teacher.append(f"lora = {quoted(given.teacher_lora)}")
    teacher.append(f"# n_ctx = {spec.n_ctx}  # context in tokens: a prompt and its answer must fit")
    parts = [
        _comment(head),
        f"# seed = {seed}  # every random choice derives from it: the same seed and files make the same dataset\n",
        _table(
            "teacher",
            "The fine-tuned model whose knowledge is moved: a GGUF, with its GGUF LoRA adapter if it has one.",
            teacher,
        ),
        _table(
            "base",
            "The model the teacher was fine-tuned from, un-tuned. A pair is kept where the teacher finds its answer "
            "much likelier than the base does: what the fine-tuning added. It only scores, so it needs no chat "
            "template; a base other than the teacher's own measures how two models differ instead.",
            [f"model = {quoted(given.base)}"],
        ),
        _table(
            "seeds",
            'All the pipeline sees of the domain: one prompt per line (or JSONL with a "prompt" field).',
            [f"file = {quoted(given.seeds)}"],
        ),
        _expand_table(given, quoted, expand),
        _table(
            "select",
            "The keep rule: a pair is kept where PPL_base / PPL_teacher >= tau (the paper's rule). The others: "
            f"{_others(RULES, select.rule)} (docs/how-it-works.md).",
            [f'# rule = "{select.rule}"', f"# tau = {select.tau:g}"],
        ),
        _table(
            "output",
            "The store holds every prompt, answer and score, so a stopped run resumes where it stopped. The dataset "
            "(export, chat JSONL) defaults to the db's path with .jsonl; the run folder (dir: training, evaluation, "
            "report.md, run.log) to a folder named after the db beside it.",
            [f'db = "runs/{stem}/pool.db"'],
        ),
        *_target_tables(given, quoted),
    ]
    return "\n".join(parts)


def _others(registry: Registry, default: str) -> str:
    """The registry's other names, quoted as a recipe spells them: read from it, so a new rule or strategy shows."""
    return ", ".join(f'"{name}"' for name in registry.names() if name != default)


def _comment(text: str) -> str:
    return textwrap.fill(text, 112, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False) + "\n"


def _table(name: str, about: str, keys: list[str]) -> str:
    return _comment(about) + f"[{name}]\n" + "".join(f"{key}\n" for key in keys)


def _expand_table(given: Inputs, quoted, expand: Expand) -> str:
    about = "How each round writes new prompts. "
    keys = []
    if given.entities is not None:
        about += (
            'With names given (names only, no facts) the strategy is "entities": each seed prompt that names one is '
            "asked again about every other name, the setting the transfer benchmark found best (docs/benchmark.md)."
        )
        keys.append(f"entities_file = {quoted(given.entities)}")
    else:
        about += (
            f'Unset, the strategy is "{expand.strategy}": the teacher writes prompts like the kept ones (the others: '
            f'{_others(STRATEGIES, expand.strategy)}). With entities_file = "names.txt", a list of names with no '
            'facts, it is "entities": each seed prompt asked about every name.'
        )
    about += (
        " candidates_per_round and target_kept, left out, are sized by the strategy: `tskd-lite check` prints "
        "what they come to."
    )
    keys.append(f"# rounds = {expand.rounds}  # generated rounds after the seeds")
    return _table("expand", about, keys)


def _target_tables(given: Inputs, quoted) -> list[str]:
    if given.target is None:
        return [
            _comment(
                "To move the knowledge on, add [target] (model = a GGUF or a Hugging Face folder, any architecture: "
                "trained on the kept pairs) and [eval] (file = a held-out JSONL): docs/recipe.md."
            )
        ]
    train = Train()
    replay = (
        f"{train.replay:g} of the target's own answers replayed per pair, so it keeps what it knew"
        if train.replay
        else "no replay of the target's own answers (replay = 0)"
    )
    tables = [
        _table(
            "target",
            "The model that receives the knowledge: a GGUF (converted once, cached beside it) or a Hugging Face "
            "folder; another architecture and tokenizer than the teacher's is fine.",
            [f"model = {quoted(given.target)}"],
        ),
        _table(
            "train",
            f"LoRA on the target over the kept pairs. Defaults: rank {train.rank}, {train.epochs} epochs, learning "
            f"rate {train.learning_rate:g}, {train.val_fraction:g} of the pairs held out for a validation loss, "
            f"{replay} (docs/training.md).",
            [],
        ),
    ]
    eval_about = (
        'A held-out {"prompt", "answer", "aliases"?} JSONL the pipeline never sees: teacher, base and the target '
        "before and after training are scored on it, in report.md."
    )
    if given.eval is None:
        return tables + [_comment(eval_about + ' Add it as [eval] with file = "test.jsonl".')]
    return tables + [_table("eval", eval_about, [f"file = {quoted(given.eval)}"])]
