from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import recipe_dict, write_recipe

from tskd_lite.cli import main
from tskd_lite.errors import TskdError
from tskd_lite.recipe import changed_keys, flatten, load_recipe


def test_valid_recipe_loads_with_defaults_and_resolved_paths(tiny, tmp_path):
    raw = recipe_dict(tiny, Path("out/run.db"))
    raw["seeds"] = {"prompts": ["A?", "B?", "A?"], "file": "seeds.jsonl"}
    (tmp_path / "seeds.jsonl").write_text('{"prompt": "C?"}\n\n{"prompt": "B?"}\n')
    r = load_recipe(write_recipe(tmp_path / "r.toml", raw))
    assert r.seeds.prompts == ("A?", "B?", "C?")  # duplicates across inline and file dropped, order kept
    assert r.output.db == (tmp_path / "out/run.db").resolve()
    assert r.teacher.lora is None and r.teacher.lora_scale == 1.0
    assert r.select.tau == 1.5 and r.dedup.near_threshold == 0.8
    assert r.generator_spec is r.teacher


def test_overrides_are_laid_over_the_file_and_validated(tiny, tmp_path):
    path = write_recipe(tmp_path / "r.toml", recipe_dict(tiny, Path("run.db")))
    r = load_recipe(path, {"expand": {"rounds": 1}, "seed": 3, "output": {"db": "other.db"}})
    assert r.expand.rounds == 1 and r.expand.candidates_per_round == 12  # the rest of the table stays
    assert r.seed == 3 and r.output.db == (tmp_path / "other.db").resolve()
    with pytest.raises(TskdError, match=r"r.toml: select.tau: expected a number in \(0, 1e\+06\], got -1"):
        load_recipe(path, {"select": {"tau": -1}})


def test_changed_keys_ignores_resumable_ones(tiny, tmp_path):
    raw = recipe_dict(tiny, tmp_path / "a.db")
    a = flatten(load_recipe(write_recipe(tmp_path / "a.toml", raw)))
    raw2 = copy.deepcopy(raw)
    raw2["expand"]["rounds"] = 9
    raw2["output"]["export"] = str(tmp_path / "elsewhere.jsonl")
    raw2["select"]["top_fraction"] = 0.25
    b = flatten(load_recipe(write_recipe(tmp_path / "b.toml", raw2)))
    assert changed_keys(a, b) == ["select.top_fraction"]


def _broken(tiny, tmp_path):
    """(name, mutate(raw) -> None, fragment the one-line error must contain)."""
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(tiny["teacher"].read_bytes()[:-5000])
    notgguf = tmp_path / "notgguf.gguf"
    notgguf.write_text("hello")

    def set_(table, key, value):
        def mutate(raw):
            if table is None:
                raw[key] = value
            else:
                raw.setdefault(table, {})[key] = value

        return mutate

    def drop(table, key=None):
        def mutate(raw):
            if key is None:
                del raw[table]
            else:
                del raw[table][key]

        return mutate

    return [
        ("unknown top key", set_(None, "colour", "red"), "colour: unknown key"),
        ("unknown nested key", set_("select", "taux", 2.0), "select.taux: unknown key"),
        ("wrong type", set_("expand", "rounds", "three"), "expand.rounds: expected an integer"),
        ("bool for int", set_("expand", "few_shot", True), "expand.few_shot: expected an integer"),
        ("tau zero", set_("select", "tau", 0), "select.tau: expected a number in (0, 1e+06]"),
        ("tau negative", set_("select", "tau", -1.5), "select.tau: expected a number in (0, 1e+06]"),
        ("top fraction > 1", set_("select", "top_fraction", 1.5), "select.top_fraction: expected a number in (0, 1]"),
        ("bad rule", set_("select", "rule", "magic"), "select.rule: expected one of"),
        ("empty seeds", set_("seeds", "prompts", []), "seeds: expected at least one seed prompt"),
        ("blank seed", set_("seeds", "prompts", ["  "]), "seeds.prompts: expected a list of non-empty strings"),
        ("missing seeds file", set_("seeds", "file", "nope.txt"), "seeds.file"),
        ("missing teacher", drop("teacher"), "teacher: required key is missing"),
        ("missing base model", drop("base", "model"), "base.model: required key is missing"),
        ("missing model file", set_("teacher", "model", "missing.gguf"), "teacher.model: file not found"),
        ("truncated gguf", set_("base", "model", str(trunc)), "is truncated"),
        ("not a gguf", set_("teacher", "model", str(notgguf)), "not a GGUF file"),
        ("missing lora", set_("teacher", "lora", "adapter.gguf"), "teacher.lora: file not found"),
        ("negative rounds", set_("expand", "rounds", -1), "expand.rounds: expected an integer in [0, 1000]"),
        ("negative train seed", set_("train", "seed", -1), "train.seed: expected an integer in [0, 4294967295]"),
        ("instruction without slot", set_("expand", "instruction", "Write a question."), "expand.instruction"),
        ("bad format", set_("output", "format", "csv"), "output.format: expected one of"),
        ("table is a scalar", set_(None, "dedup", 3), "dedup: expected a table"),
        ("near threshold", set_("dedup", "near_threshold", 0), "dedup.near_threshold"),
        ("teacher without template", set_("teacher", "model", str(tiny["notemplate"])), "set teacher.chat_template"),
        ("bad jinja", set_("teacher", "chat_template", "{% for %}"), "teacher.chat_template: not a valid Jinja"),
        ("bad train schedule", set_("train", "schedule", "step"), "train.schedule: expected one of"),
        ("negative lora rank", set_("train", "rank", -4), "train.rank: expected an integer in [1, 4096]"),
        ("val fraction", set_("train", "val_fraction", 0.9), "train.val_fraction"),
        ("target missing", set_("target", "model", "nope.gguf"), "target.model: file not found"),
        ("eval file missing", set_("eval", "file", "nope.jsonl"), "eval.file: file not found"),
        ("eval without file", set_("eval", "limit", 3), "eval.file: required key is missing"),
        ("small n_ctx", set_("teacher", "n_ctx", 8), "teacher.n_ctx: expected an integer in [64, 131072]"),
    ]


def test_broken_recipes_give_one_line_errors_and_leave_the_database_untouched(tiny, tmp_path):
    db = tmp_path / "existing.db"
    db.write_bytes(b"pretend this is a database with a week of work in it")
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    cases = _broken(tiny, tmp_path)
    assert len(cases) >= 15
    runner = CliRunner()
    for name, mutate, fragment in cases:
        raw = recipe_dict(tiny, db)
        mutate(raw)
        path = write_recipe(tmp_path / "broken.toml", raw)
        for command in ("check", "run"):
            result = runner.invoke(main, [command, str(path)])
            assert result.exit_code == 1, (name, command, result.output)
            lines = result.output.strip().splitlines()
            assert len(lines) == 1, (name, result.output)
            assert lines[0].startswith(f"Error: {path}"), (name, lines[0])
            assert fragment in lines[0], (name, lines[0])
            assert "Traceback" not in result.output
        assert hashlib.sha256(db.read_bytes()).hexdigest() == digest, name


def test_a_base_without_chat_template_is_fine(tiny, tmp_path):
    raw = recipe_dict(tiny, tmp_path / "x.db")
    raw["base"]["model"] = tiny["notemplate"]
    assert load_recipe(write_recipe(tmp_path / "r.toml", raw)).base.model == tiny["notemplate"]


def test_invalid_toml_and_missing_recipe(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[teacher\nmodel = 1")
    with pytest.raises(TskdError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(TskdError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.toml")


def test_check_command_accepts_a_good_recipe(tiny, tmp_path):
    path = write_recipe(tmp_path / "ok.toml", recipe_dict(tiny, tmp_path / "x.db"))
    out = subprocess.run([sys.executable, "-m", "tskd_lite", "check", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ok (5 seed prompts, 3 rounds" in out.stdout
    assert not (tmp_path / "x.db").exists()


def test_the_tool_reads_back_its_own_export_and_bom_files(tiny, tmp_path):
    """Answers may hold U+2028/U+2029/U+0085, which the export writes raw (valid JSON); the reader must not split
    records there. A seeds file saved with a UTF-8 byte-order mark reads like one without."""
    import json

    from tskd_lite.train import read_pairs

    odd = "line\u2028separator, paragraph\u2029separator, next\u0085line"
    dataset = tmp_path / "export.jsonl"
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": odd}]}
    dataset.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_pairs(dataset) == [("q", odd, None)]

    raw = recipe_dict(tiny, tmp_path / "bom.db")
    raw["seeds"] = {"file": tmp_path / "seeds.txt"}
    (tmp_path / "seeds.txt").write_bytes("\ufeffFirst seed?\r\nSecond seed?\r\n".encode())
    recipe = load_recipe(write_recipe(tmp_path / "bom.toml", raw))
    assert recipe.seeds.prompts == ("First seed?", "Second seed?")


def test_a_key_added_since_a_run_was_made_counts_as_its_default():
    from tskd_lite.recipe import changed_keys

    recorded = {"expand.rounds": 3, "select.tau": 1.5}  # made before expand.strategy and select.min_contrast existed
    current = {"expand.rounds": 3, "select.tau": 1.5, "expand.strategy": "fewshot", "select.min_contrast": 1.0}
    assert changed_keys(recorded, current) == []
    assert changed_keys(recorded, {**current, "expand.strategy": "entities"}) == ["expand.strategy"]


@pytest.mark.parametrize(
    ("table", "key", "value", "expected"),
    [
        (None, "tarin", {"epochs": 1}, 'tarin: unknown table, did you mean "train"?'),  # a misspelt table
        ("select", "tua", 1.5, 'select.tua: unknown key, did you mean "select.tau"?'),  # a misspelt key
        ("select", "Tau", 1.5, 'select.Tau: unknown key, did you mean "select.tau"?'),  # TOML keys are case-exact
        ("expand", "tau", 1.5, 'expand.tau: unknown key, did you mean "select.tau"?'),  # a key in the wrong table
        (None, "rounds", 2, 'rounds: unknown key, did you mean "expand.rounds"?'),  # a table's key at the top
        ("select", "zzz", 1, "select.zzz: unknown key (select takes: agreement_samples, agreement_temperature,"),
    ],
)
def test_an_unknown_key_is_one_line_naming_the_file_the_key_and_the_likely_one(
    tiny, tmp_path, table, key, value, expected
):
    raw = recipe_dict(tiny, tmp_path / "x.db")
    (raw if table is None else raw[table])[key] = value
    path = write_recipe(tmp_path / "r.toml", raw)
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: {path}: {expected}"), line
    assert ("did you mean" in line) == ("did you mean" in expected)
