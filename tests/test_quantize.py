"""Re-encoding a GGUF's weights: the copy loads, scores like the original within the new type's rounding."""

from __future__ import annotations

import json
import re
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import recipe_dict, write_recipe
from tinymodels import write_tiny_lora

from tskd_lite import pipeline
from tskd_lite.backends import open_backend
from tskd_lite.cli import main
from tskd_lite.errors import TskdError
from tskd_lite.quantize import requantize
from tskd_lite.recipe import ModelSpec, load_recipe

ANSWER = "Eighty-four: 12 x 7 = 84, because 10 x 7 = 70 and 2 x 7 = 14."


def _logprobs(path, lora=None):
    engine = open_backend(ModelSpec(model=path, lora=lora, n_ctx=256), role="teacher", threads=1, parallel=1)
    lp = engine.answer_logprobs(engine.render("What is 12 times 7?"), ANSWER)
    engine.close()
    return lp


def test_requantized_copy_scores_like_the_original(tiny, tmp_path):
    result = CliRunner().invoke(main, ["requantize", str(tiny["teacher"]), str(tmp_path / "q8.gguf")])
    assert result.exit_code == 0, result.output
    assert "q8_0" in result.output
    q8 = tmp_path / "q8.gguf"
    assert q8.stat().st_size < tiny["teacher"].stat().st_size / 2  # f32 weights became 8-bit ones
    assert not list(tmp_path.glob("*.part"))
    original, copy = _logprobs(tiny["teacher"]), _logprobs(q8)
    diff = np.abs(original - copy)
    # Q8_0 rounding moves log-probs a little (a random model amplifies it); not at all would mean no re-encoding
    assert diff.max() > 0 and diff.mean() < 0.05
    q4 = requantize(tiny["teacher"], tmp_path / "q4.gguf", "q4_0")
    assert np.abs(original - _logprobs(q4)).mean() > diff.mean()  # 4 bits round more coarsely than 8
    # A teacher's LoRA, made for the original, applies to the copy as it does to the original.
    lora = tmp_path / "adapter.gguf"
    write_tiny_lora(lora, {"blk.0.ffn_up.weight": (128, 64), "blk.1.attn_v.weight": (32, 64)}, alpha=8.0, seed=5)
    adapted, adapted_copy = _logprobs(tiny["teacher"], lora), _logprobs(q8, lora)
    assert np.abs(adapted - original).mean() > 0.05
    assert np.abs(adapted_copy - adapted).mean() < 0.05


def test_requantize_errors_are_one_line(tiny, tmp_path):
    with pytest.raises(TskdError, match="--type: expected one of q8_0, q4_0, f16, got 'q3_k'"):
        requantize(tiny["teacher"], tmp_path / "x.gguf", "q3_k")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny["teacher"].read_bytes()[:-1000])  # the last tensor's data cut short
    result = CliRunner().invoke(main, ["requantize", str(broken), str(tmp_path / "y.gguf")])
    assert result.exit_code == 1
    message = f"Error: model: {broken} is truncated (tensor output.weight ends past the end of the file)\n"
    assert result.output == message
    assert not (tmp_path / "y.gguf").exists()


def test_a_requantize_key_scores_with_a_copy_made_once_in_the_run_folder(tiny, tmp_path):
    raw = recipe_dict(tiny, tmp_path / "run.db")
    raw["expand"]["rounds"] = 1
    for role in ("teacher", "base"):
        raw[role]["requantize"] = "q8_0"
    before = {role: tiny[role].read_bytes() for role in ("teacher", "base")}
    recipe = load_recipe(write_recipe(tmp_path / "run.toml", raw))
    lines: list[str] = []
    pipeline.run(recipe, progress=False, log=lines.append)
    copies = sorted((recipe.output.run_dir / "weights").glob("*.gguf"))
    assert len(copies) == len({tiny["teacher"], tiny["base"]})  # one copy per distinct model file
    assert all(tiny[role].read_bytes() == data for role, data in before.items())  # the recipe's files only read
    assert any("as a q8_0 copy" in line for line in lines) and any("scoring and writing with" in line for line in lines)
    # the teacher's stored scores are the copy's, not the original's
    con = sqlite3.connect(recipe.output.db)
    prompt, answer, stored = con.execute(
        "select p.text, a.text, s.teacher_logprobs from prompts p join answers a on a.prompt_id = p.id "
        "join scores s on s.prompt_id = p.id order by p.id limit 1"
    ).fetchone()
    teacher_copy = next(c for c in copies if c.name.startswith(tiny["teacher"].stem + "."))
    far = {}
    for path in (teacher_copy, tiny["teacher"]):
        engine = open_backend(ModelSpec(model=path, n_ctx=512), role="teacher", threads=1, parallel=1)
        far[path] = np.abs(engine.answer_logprobs(engine.render(prompt), answer) - json.loads(stored)).max()
        engine.close()
    assert far[teacher_copy] < 1e-3 < far[tiny["teacher"]]  # the store rounds to 5 significant digits
    # a second run of the same recipe reuses the copies
    stamps = [c.stat().st_mtime_ns for c in copies]
    pipeline.run(load_recipe(recipe.path), force_new=True, progress=False, log=lambda _: None)
    assert [c.stat().st_mtime_ns for c in copies] == stamps


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"requantize": "q3_k"}, "teacher.requantize: expected one of q8_0, q4_0, f16, got 'q3_k'"),
        (
            {"backend": "openai", "url": "http://127.0.0.1:9", "served_model": "m", "requantize": "q8_0"},
            "teacher.requantize: a served model takes no requantize",
        ),
    ],
)
def test_a_bad_requantize_key_is_one_line(tiny, tmp_path, spec, message):
    raw = recipe_dict(tiny, tmp_path / "run.db")
    raw["teacher"] = {**({} if "backend" in spec else {"model": tiny["teacher"]}), **spec}
    with pytest.raises(TskdError, match=re.escape(message)) as err:
        load_recipe(write_recipe(tmp_path / "run.toml", raw))
    assert "\n" not in str(err.value)
