"""`check` as a dry run: the roles and models, the gap's unit, the stages, resume or new run, and --json."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from conftest import recipe_dict, write_recipe

from tskd_lite import pipeline
from tskd_lite.cli import main
from tskd_lite.recipe import load_recipe


def _recipe(tiny, tmp_path: Path, name: str = "r", mutate=None) -> Path:
    raw = recipe_dict(tiny, tmp_path / f"{name}.db")
    raw["expand"].update(rounds=1, candidates_per_round=4)
    if mutate:
        mutate(raw)
    return write_recipe(tmp_path / f"{name}.toml", raw)


def _check(*args) -> str:
    result = CliRunner().invoke(main, ["check", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_check_names_the_roles_the_unit_the_stages_and_a_new_run(tiny, tmp_path):
    path = _recipe(tiny, tmp_path)
    shown = _check(path)
    assert shown.startswith(f"{path}: ok (5 seed prompts, 1 rounds, database {tmp_path / 'r.db'})")
    assert f"  teacher {tiny['teacher']} (llama_cpp; tiny-1, llama)\n" in shown
    assert f"  base    {tiny['base']} (llama_cpp; tiny-2, llama)\n" in shown
    assert "  gap     per token (teacher and base share a tokenizer)\n" in shown
    assert "  stages  each round: expand, respond, score, select; then export\n" in shown
    assert f"  run     starts a new run in {tmp_path / 'r.db'}\n" in shown
    assert "WARNING" not in shown and "target" not in shown and "generator" not in shown
    assert "  pool    " in shown and "  train   " not in shown  # the lines check printed before stay
    assert not (tmp_path / "r.db").exists()  # a dry run writes nothing


def test_check_shows_the_stages_a_recipe_with_target_and_eval_adds(tiny, target_gguf, tmp_path):
    (tmp_path / "eval.jsonl").write_text('{"prompt": "p", "answer": "a"}\n')

    def mutate(raw):
        raw["generator"] = {"model": tiny["teacher"], "n_ctx": 512}
        raw["expand"]["paraphrases"] = 1
        raw["select"] = {"rule": "contrast"}
        raw["target"] = {"model": target_gguf, "cache": tmp_path / "target.hf"}
        raw["eval"] = {"file": tmp_path / "eval.jsonl"}

    shown = _check(_recipe(tiny, tmp_path, mutate=mutate))
    assert f"  generator {tiny['teacher']} (llama_cpp; tiny-1, llama)\n" in shown
    assert f"  target  {target_gguf} (transformers; tiny-5, llama)\n" in shown
    assert (
        "  stages  each round: expand, respond, score, contrast, select, paraphrase; then export, train, eval, report\n"
        in shown
    )
    assert "  train   " in shown
    seeds_only = _check(_recipe(tiny, tmp_path, "seeds", mutate=lambda raw: raw["expand"].update(rounds=0)))
    assert "  stages  each round: respond, score, select; then export\n" in seeds_only


def test_the_stages_check_shows_are_those_run_all_follows(tiny, target_gguf, tmp_path):
    raw = recipe_dict(tiny, tmp_path / "t.db")
    no_eval = load_recipe(write_recipe(tmp_path / "t.toml", raw | {"target": {"model": target_gguf}}))
    assert pipeline.stages(no_eval)[1] == ["export", "train", "report"]
    assert pipeline.stages(load_recipe(write_recipe(tmp_path / "p.toml", raw)))[1] == ["export"]


def test_different_tokenizers_give_a_per_byte_gap_and_a_warning(tiny, tmp_path):
    path = _recipe(tiny, tmp_path, mutate=lambda raw: raw["base"].update(model=tiny["other"]))
    shown = _check(path)
    assert "  gap     per byte (teacher and base tokenizers differ)\n" in shown
    warning = shown.strip().splitlines()[-1]
    assert warning.startswith(
        "WARNING: teacher and base tokenizers differ (teacher: tiny-1, llama; base: tiny-3, llama)"
    )
    assert "per byte of answer text" in warning
    found = json.loads(_check(path, "--json"))
    assert found["unit"] == "byte" and found["warnings"] == [warning.removeprefix("WARNING: ")]


def test_check_json_holds_what_the_lines_say(tiny, tmp_path):
    path = _recipe(tiny, tmp_path)
    found = json.loads(_check(path, "--json"))
    assert (found["recipe"], found["ok"], found["seed_prompts"], found["rounds"]) == (str(path), True, 5, 1)
    assert found["roles"] == {
        "teacher": {"model": str(tiny["teacher"]), "backend": "llama_cpp", "about": "tiny-1, llama"},
        "base": {"model": str(tiny["base"]), "backend": "llama_cpp", "about": "tiny-2, llama"},
    }
    assert (found["unit"], found["warnings"]) == ("token", [])
    assert found["stages"] == {"each_round": ["expand", "respond", "score", "select"], "after_rounds": ["export"]}
    assert found["run"] == {
        "action": "new",
        "db": str(tmp_path / "r.db"),
        "run_id": None,
        "status": None,
        "message": None,
    }
    assert found["pool"] in _check(path) and found["train"] is None
    assert found["reads"] == [str(tiny["teacher"]), str(tiny["base"])]
    assert found["writes"] == [str(tmp_path / p) for p in ("r.db", "r.jsonl", "r")]


def test_check_says_a_run_resumes_and_refuses_what_run_refuses(tiny, tmp_path):
    path = _recipe(tiny, tmp_path)
    result = pipeline.run(load_recipe(path), progress=False, log=lambda _: None)
    db = tmp_path / "r.db"
    before = db.read_bytes()
    shown = _check(path)
    assert f"  run     resumes run {result.run_id} in {db} ({result.status}: {result.message})\n" in shown
    found = json.loads(_check(path, "--json"))
    assert found["run"] | {"message": None} == {
        "action": "resume",
        "db": str(db),
        "run_id": result.run_id,
        "status": result.status,
        "message": None,
    }
    assert db.read_bytes() == before  # the store is read, not written

    changed = _recipe(tiny, tmp_path, mutate=lambda raw: raw["select"].update(top_fraction=0.25))
    refused = CliRunner().invoke(main, ["check", str(changed)])
    assert refused.exit_code == 1
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and "select.top_fraction changed" in lines[0] and "--force-new" in lines[0]
    ran = CliRunner().invoke(main, ["run", "--quiet", str(changed)])
    assert ran.exit_code == 1 and ran.output.strip().splitlines()[-1] == lines[0]  # the same words as run's
    assert db.read_bytes() == before
