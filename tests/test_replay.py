"""Replay: the untouched target's own answers to general prompts, trained on beside the distilled pairs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import recipe_dict, write_recipe
from test_train import PAIRS, _recipe, _train

from tskd_lite.errors import TskdError
from tskd_lite.recipe import load_recipe
from tskd_lite.target import Formatter, greedy_answers, hf_dir
from tskd_lite.train import claim_out, replay
from tskd_lite.train.general_prompts import GENERAL_PROMPTS


def test_replayed_answers_are_the_untouched_targets_own_and_train_beside_the_pairs(tiny, target_gguf, tmp_path):
    prompts = tmp_path / "general.txt"
    prompts.write_text("Name a colour.\n\nWhat is a cloud?\nCount to three.\nSay hello.\n")
    recipe = _recipe(tiny, target_gguf, tmp_path, replay=0.25, replay_min=0, replay_prompts=str(prompts))
    result = _train(recipe)
    written = [json.loads(line) for line in (result.out_dir / replay.REPLAY_FILE).read_text().splitlines()]
    # 0.25 per pair of 12 is 3 of the file's 4 prompts (the blank line is no prompt), in the file's order
    asked = [row["prompt"] for row in written]
    assert len(asked) == 3 and set(asked) < {"Name a colour.", "What is a cloud?", "Count to three.", "Say hello."}
    assert result.n_replay == 3 and result.n_train + result.n_val == len(PAIRS) + 3

    # each answer is the target's greedy reply before any training, as evaluation would generate it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target_dir = hf_dir(recipe.target)
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    fmt = Formatter.for_target(tokenizer, recipe.target)
    own = greedy_answers(model, tokenizer, fmt, asked, replay.MAX_ANSWER_TOKENS)
    assert [row["answer"] for row in written] == [a.strip() for a in own]


def test_a_resumed_training_reads_its_replay_instead_of_writing_it_again(tiny, target_gguf, tmp_path, monkeypatch):
    recipe = _recipe(tiny, target_gguf, tmp_path, replay=0.5, replay_min=0)
    out = recipe.output.run_dir / "train"
    claim_out(out, "training folder")  # as train() does before it asks for the replay
    first = replay.replay_pairs(
        hf_dir(recipe.target), recipe.target, recipe.train, 12, out, progress=False, log=lambda _: None
    )
    assert len(first) == 6 and all(p in GENERAL_PROMPTS for p, _, _ in first)

    def no_generation(*_args):
        raise AssertionError("the replay was generated again")

    monkeypatch.setattr(replay, "_answers", no_generation)
    again = replay.replay_pairs(
        hf_dir(recipe.target), recipe.target, recipe.train, 12, out, progress=False, log=lambda _: None
    )
    assert again == first
    # another training size asks other prompts: those are written anew, not taken from the old file
    with pytest.raises(AssertionError, match="generated again"):
        replay.replay_pairs(hf_dir(recipe.target), recipe.target, recipe.train, 8, out, progress=False, log=print)


@pytest.mark.parametrize(
    ("per_pair", "floor", "n_pairs", "expected"),
    [
        (0.25, 32, 12, 32),  # the floor: a tiny pool trains mostly on the target's own answers
        (0.25, 32, 400, 80),  # 0.25 per pair, capped by the bundled prompts there are
        (0.25, 32, 200, 50),  # above the floor: 0.25 per pair
        (0.25, 0, 12, 3),
        (0.0, 32, 12, 0),  # replay 0 is off, whatever the floor
    ],
)
def test_the_replay_count_is_per_pair_with_a_floor(per_pair, floor, n_pairs, expected):
    from tskd_lite.recipe import Train

    cfg = Train(replay=per_pair, replay_min=floor)
    assert len(GENERAL_PROMPTS) == 80  # the cap the cases above are written for
    assert replay.replay_count(cfg, n_pairs, len(replay.replay_prompts(cfg))) == expected


def test_replay_is_on_by_default_and_zero_changes_nothing(tiny, target_gguf, tmp_path):
    default = recipe_dict(tiny, tmp_path / "default" / "pool.db")  # no [train] table
    train = load_recipe(write_recipe(tmp_path / "default.toml", default)).train
    assert (train.replay, train.replay_min) == (0.25, 32)
    result = _train(_recipe(tiny, target_gguf, tmp_path, replay=0))
    assert result.n_replay == 0 and not (result.out_dir / replay.REPLAY_FILE).exists()


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"replay": -0.5}, "train.replay: expected a number in [0, 10]"),
        ({"replay_min": 2.5}, "train.replay_min: expected"),
        ({"replay_prompts": "missing.txt"}, "train.replay_prompts"),
        ({"replay_prompts": "empty.txt"}, "holds no prompts"),
    ],
)
def test_bad_replay_settings_are_one_line_errors(tiny, tmp_path, train, message):
    (tmp_path / "empty.txt").write_text("\n  \n")
    raw = recipe_dict(tiny, tmp_path / "pool.db") | {"train": train}
    with pytest.raises(TskdError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        load_recipe(write_recipe(tmp_path / "r.toml", raw))
    assert "\n" not in str(e.value)


def test_check_says_what_stops_training_and_what_it_replays(tiny, target_gguf, tmp_path):
    from click.testing import CliRunner

    from tskd_lite.cli import main

    recipe = _recipe(tiny, target_gguf, tmp_path, replay=0.25, patience=2)
    shown = CliRunner().invoke(main, ["check", str(recipe.path)]).output
    assert "stopped when held-out loss has not improved for 2 epochs" in shown
    replayed = f"replay: 0.25 of the target's own answers per pair (at least 32), of {len(GENERAL_PROMPTS)} prompts"
    assert replayed in shown
    (tmp_path / "plain").mkdir()
    plain = _recipe(tiny, target_gguf, tmp_path / "plain", replay=0)
    assert "replay" not in CliRunner().invoke(main, ["check", str(plain.path)]).output


def test_a_replay_with_an_empty_reply_is_read_back_on_resume(tiny, target_gguf, tmp_path, monkeypatch):
    recipe = _recipe(tiny, target_gguf, tmp_path, replay=0.5, replay_min=0)
    out = recipe.output.run_dir / "train"
    claim_out(out, "training folder")

    def one_empty(_dir, _target, prompts, _progress):
        return ["", *["ok"] * (len(prompts) - 1)]

    monkeypatch.setattr(replay, "_answers", one_empty)
    first = replay.replay_pairs(hf_dir(recipe.target), recipe.target, recipe.train, 12, out, progress=False, log=print)
    assert len(first) == 5  # the empty reply is not trained on

    def no_generation(*_args):
        raise AssertionError("the replay was generated again")

    monkeypatch.setattr(replay, "_answers", no_generation)
    again = replay.replay_pairs(hf_dir(recipe.target), recipe.target, recipe.train, 12, out, progress=False, log=print)
    assert again == first
