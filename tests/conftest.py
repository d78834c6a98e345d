from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tinymodels import write_tiny_llama

SEEDS = [
    "What is the boiling point of water at sea level?",
    "Name three primary colours.",
    "How many legs does a spider have?",
    "Translate 'good morning' into French.",
    "What is 12 times 7?",
]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Teacher and base share a byte-level tokenizer; 'other' has merges, so its tokenizer differs."""
    d = tmp_path_factory.mktemp("tiny")
    return {
        "teacher": write_tiny_llama(d / "teacher.gguf", seed=1),
        "base": write_tiny_llama(d / "base.gguf", seed=2),
        "other": write_tiny_llama(d / "other.gguf", seed=3, merges=[("t", "h"), ("th", "e"), ("Ġ", "t")]),
        "notemplate": write_tiny_llama(d / "notemplate.gguf", seed=4, chat_template=None),
    }


def toml_value(value) -> str:
    """A TOML value; nan and the infinities as TOML 1.0 writes them (nan, inf, -inf), tables inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def recipe_dict(tiny: dict[str, Path], db: Path) -> dict:
    """A small, fast recipe on the tiny models; tests change what they need."""
    return {
        "seed": 7,
        "threads": 1,
        "teacher": {"model": tiny["teacher"], "n_ctx": 512},
        "base": {"model": tiny["base"], "n_ctx": 512},
        "seeds": {"prompts": list(SEEDS)},
        "expand": {
            "rounds": 3,
            "candidates_per_round": 12,
            "target_kept": 1000,
            "few_shot": 2,
            "max_prompt_tokens": 24,
            "temperature": 1.0,
            "top_p": 0.95,
        },
        "respond": {"max_answer_tokens": 24, "temperature": 0.7},
        "select": {"rule": "top_fraction", "top_fraction": 0.5},
        "dedup": {"near_threshold": 0.8},
        "output": {"db": db, "export": db.with_suffix(".jsonl")},
    }


def write_recipe(path: Path, recipe: dict) -> Path:
    lines = []
    for key, value in recipe.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {toml_value(value)}")
    for key, value in recipe.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in value.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def target_gguf(tmp_path_factory) -> Path:
    """A tiny random llama GGUF as the target (the training tests')."""
    return write_tiny_llama(tmp_path_factory.mktemp("target") / "target.gguf", seed=5)
