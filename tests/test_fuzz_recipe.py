"""A fuzz corpus of recipe values: every key of the recipe, each given odd values, loads or gives one line naming it.

The keys are walked from the recipe's dataclasses, so a key added later is covered without touching this file.
Each key is given nan, the infinities, a negative number, 0, huge integers and a huge float, values of the wrong
type, an empty string, and (path keys) a folder, devices, a dangling symlink, a path under a file and a missing
file. Every case either loads or raises TskdError with one line naming the key (dotted); never another exception,
never a hang (an alarm and an address-space cap end a case that would). On top of that, the rules the recipe
enforces: floats are finite, integer keys have an upper bound, and the files a recipe reads are regular files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import resource
import signal
import types
import typing
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import recipe_dict, write_recipe

from tskd_lite.cli import main
from tskd_lite.errors import TskdError
from tskd_lite.recipe import Recipe, load_recipe

NAN, INF = float("nan"), float("inf")
# Path keys a run writes to; every other path key is a file the recipe reads, which must be a regular file.
# A new output path key belongs here (test_the_key_walk_sees_every_table_and_path_key checks these exist).
OUTPUT_PATHS = ("output.db", "output.export", "output.dir", "target.cache")
SECONDS = 10.0  # one case: load_recipe on the tiny models takes milliseconds
EXTRA_MEMORY = 256 << 20  # how far one case may grow the address space before it fails with MemoryError


def _unwrap(hint):
    """X from X | None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner
    return hint


def _walk(cls: type = Recipe, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        hint = _unwrap(hints[f.name])
        yield prefix + f.name, hint
        if dataclasses.is_dataclass(hint):
            yield from _walk(hint, f"{prefix}{f.name}.")


KEYS = dict(_walk())
FLOAT_KEYS = [k for k, h in KEYS.items() if h is float]
INT_KEYS = [k for k, h in KEYS.items() if h is int]
PATH_INPUTS = [k for k, h in KEYS.items() if h is Path and k not in OUTPUT_PATHS]

GENERAL_VALUES = [
    ("nan", NAN),
    ("inf", INF),
    ("-inf", -INF),
    ("-1", -1),
    ("-0.5", -0.5),
    ("0", 0),
    ("10**12", 10**12),
    ("2**63", 2**63),
    ("1e300", 1e300),
    ("a string of digits", "3"),
    ("a number", 3),
    ("true", True),
    ("a list", [1, 2]),
    ("a table", {"a": 1}),
    ("an empty string", ""),
]
PATH_CASES = ("a folder", "/dev/urandom", "/dev/null", "a dangling symlink", "a path under a file", "a missing file")


def _with(raw: dict, key: str, value) -> dict:
    out = copy.deepcopy(raw)
    *tables, name = key.split(".")
    place = out
    for table in tables:
        place = place.setdefault(table, {})
    place[name] = value
    return out


@pytest.fixture(scope="module")
def base(tiny, tmp_path_factory) -> dict:
    """A recipe with every optional table present (so each of their keys can be set), and the odd paths."""
    d = tmp_path_factory.mktemp("fuzzrecipe")
    eval_file = d / "held_out.jsonl"
    eval_file.write_text(json.dumps({"prompt": "What is 2 plus 2?", "answer": "4"}) + "\n")
    (d / "afolder").mkdir()
    (d / "somefile.txt").write_text("not a folder\n")
    (d / "dangling.gguf").symlink_to(d / "nothing-here.gguf")
    raw = recipe_dict(tiny, d / "pool.db")
    raw["generator"] = {"model": tiny["teacher"], "n_ctx": 512}
    raw["target"] = {"model": tiny["base"]}
    raw["train"] = {}
    raw["eval"] = {"file": eval_file}
    paths = {
        "a folder": d / "afolder",
        "/dev/urandom": Path("/dev/urandom"),
        "/dev/null": Path("/dev/null"),
        "a dangling symlink": d / "dangling.gguf",
        "a path under a file": d / "somefile.txt" / "x.gguf",
        "a missing file": d / "missing.gguf",
    }
    return {"raw": raw, "paths": paths}


class _Hung(BaseException):
    """The test's own alarm. A BaseException, so that no `except Exception` in the code under test swallows it."""


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def _guard():
    """Fail a case that runs past SECONDS (SIGALRM) or grows by more than EXTRA_MEMORY (RLIMIT_AS: reading
    /dev/urandom whole is a loop in C that no signal ends, and would otherwise take the machine's memory)."""

    def on_alarm(signum, frame):
        raise _Hung(f"still loading after {SECONDS:g} s")

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + EXTRA_MEMORY
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        signal.setitimer(signal.ITIMER_REAL, SECONDS)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _outcome(path: Path) -> tuple[str, str]:
    """("loaded" | "refused" | "hung" | "crashed", the message)."""
    try:
        with _guard():
            load_recipe(path)
    except TskdError as e:
        return "refused", str(e)
    except _Hung as e:
        return "hung", str(e)
    except Exception as e:  # noqa: BLE001 (what the test reports)
        return "crashed", f"{type(e).__name__}: {e}"[:300]
    return "loaded", ""


def _names(message: str, key: str, recipe: Path) -> bool:
    """The message is one line that names the key (or, for a table, a key in it) followed by a colon."""
    if "\n" in message:
        return False
    message = message.removeprefix(f"{recipe}: ").removeprefix(f"{recipe.resolve()}: ")
    return re.search(rf"(?<![\w./]){re.escape(key)}(\.[a-z_]+)*:", message) is not None


def _values(key: str, base: dict) -> list[tuple[str, object]]:
    values = list(GENERAL_VALUES)
    if KEYS[key] is Path:
        values += [(what, str(base["paths"][what])) for what in PATH_CASES]
    return values


def _case(base: dict, tmp_path: Path, key: str, value, n: int) -> tuple[str, str, Path]:
    recipe = write_recipe(tmp_path / f"case{n}.toml", _with(base["raw"], key, value))
    return (*_outcome(recipe), recipe)


def _show(what, outcome: str, message: str) -> str:
    return f"{what}: {outcome}" + (f" ({message[:200]!r})" if message else "")


def test_the_key_walk_sees_every_table_and_path_key(base, tmp_path):
    # a sample of what the walk must find, nested tables and optional ones included
    for key in ("teacher.model", "generator.lora", "expand.candidates_per_round", "eval.file", "train.rank", "seed"):
        assert key in KEYS
    assert set(OUTPUT_PATHS) <= set(KEYS)
    assert {"seeds.file", "expand.entities_file", "eval.file", "target.model"} <= set(PATH_INPUTS)
    assert {f"{role}.{k}" for role in ("teacher", "base", "generator") for k in ("model", "lora")} <= set(PATH_INPUTS)
    assert len(KEYS) > 80 and len(FLOAT_KEYS) > 10 and len(INT_KEYS) > 20
    # the base recipe itself loads, with every optional table present
    outcome, message, _ = _case(base, tmp_path, "seed", 7, 0)
    assert outcome == "loaded", message


@pytest.mark.parametrize("key", list(KEYS))
def test_every_value_loads_or_gives_one_line_naming_the_key(base, tmp_path, key):
    wrong = []
    for n, (what, value) in enumerate(_values(key, base)):
        outcome, message, recipe = _case(base, tmp_path, key, value, n)
        if outcome == "refused" and _names(message, key, recipe):
            continue
        if outcome != "loaded":
            wrong.append(_show(f"{key} = {what}", outcome, message))
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_floats_must_be_finite(base, tmp_path, key):
    _assert_all_refused(base, tmp_path, key, [("nan", NAN), ("inf", INF), ("-inf", -INF)])


@pytest.mark.parametrize("key", INT_KEYS)
def test_integer_keys_have_an_upper_bound(base, tmp_path, key):
    """Counts and sizes (and the seeds, which llama.cpp and numpy take as 32- or 64-bit integers): a typo of a few
    zeros is refused at load, not found as an allocation or a loop that never ends."""
    _assert_all_refused(base, tmp_path, key, [("10**12", 10**12), ("2**63", 2**63)])


@pytest.mark.parametrize("key", PATH_INPUTS)
def test_files_a_recipe_reads_must_be_regular_files(base, tmp_path, key):
    """A folder (target.model: a folder that is no Hugging Face model), a device (/dev/urandom never ends,
    /dev/null is empty), a dangling symlink, a path under a file and a missing file are all refused, naming the key."""
    _assert_all_refused(base, tmp_path, key, [(what, str(base["paths"][what])) for what in PATH_CASES])


def _assert_all_refused(base, tmp_path, key: str, cases: list[tuple[str, object]]) -> None:
    """Each (what, value) set at key is refused with one line naming the key."""
    wrong = []
    for n, (what, value) in enumerate(cases):
        outcome, message, recipe = _case(base, tmp_path, key, value, n)
        if not (outcome == "refused" and _names(message, key, recipe)):
            wrong.append(_show(f"{key} = {what}", outcome, message))
    assert not wrong, "\n".join(wrong)


CLI_SAMPLE = [
    ("expand.temperature", INF),
    ("select.tau", NAN),
    ("teacher.lora_scale", NAN),
    ("select.max_teacher_ppl", INF),
    ("expand.candidates_per_round", 10**12),
    ("train.max_steps", 2**63),
    ("threads", 10**12),
    ("train.rank", "3"),
    ("output.format", 3),
    ("expand", 3),
    ("seeds.file", "/dev/urandom"),
    ("eval.file", "/dev/null"),
    ("expand.entities_file", "/dev/null"),
    ("teacher.model", "a folder"),
    ("base.lora", "a dangling symlink"),
]


@pytest.mark.parametrize(("key", "value"), CLI_SAMPLE, ids=[f"{k}={v}" for k, v in CLI_SAMPLE])
def test_check_gives_one_line_and_exit_1(base, tmp_path, key, value):
    if value in base["paths"]:
        value = str(base["paths"][value])
    recipe = write_recipe(tmp_path / "r.toml", _with(base["raw"], key, value))
    try:
        with _guard():
            result = CliRunner().invoke(main, ["check", str(recipe)])
    except _Hung as e:
        pytest.fail(f"{key} = {value!r}: {e}")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    assert _names(lines[0].removeprefix("Error: "), key, recipe), result.output
