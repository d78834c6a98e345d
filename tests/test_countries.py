"""bench/countries.py: the real-facts domain's files are deterministic, held out, and read by the project's readers."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import countries  # noqa: E402
from bench.facts import index_for, read_facts  # noqa: E402
from tskd_lite.evaluate import normalise_answer, read_eval_file  # noqa: E402

FILES = ("train.jsonl", "test.jsonl", "seeds.txt", "entities.txt", "facts.jsonl", "recipe.toml")


@pytest.fixture(scope="module")
def domain(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("countries")
    countries.write(out, seed=0)
    return out


def _train(domain: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (domain / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows]


def test_the_same_seed_writes_the_same_files(domain, tmp_path):
    countries.write(tmp_path, seed=0)
    assert all((tmp_path / f).read_bytes() == (domain / f).read_bytes() for f in FILES)


def test_files_load_with_the_project_readers(domain):
    items = read_eval_file(domain / "test.jsonl", "test.jsonl")
    facts = read_facts(domain / "facts.jsonl")
    index = index_for(domain, items)
    assert len(items) == len(facts) == len(countries.COUNTRIES) * len(countries.ATTRIBUTES)
    # every held-out item asks for one fact, and every fact is asked
    assert index is not None and index.asked == set(facts)
    # whole-word naming picks out exactly the country asked about (no "Niger" inside "Nigeria")
    assert all(len(index.entities(item.prompt)) == 1 for item in items)


def test_no_test_prompt_is_a_training_prompt(domain):
    train = {normalise_answer(q) for q, _ in _train(domain)}
    items = read_eval_file(domain / "test.jsonl", "test.jsonl")
    assert not [i.prompt for i in items if normalise_answer(i.prompt) in train]


def test_every_test_answer_is_a_fact_value_with_its_aliases(domain):
    facts = {(f.value, f.aliases) for f in read_facts(domain / "facts.jsonl")}
    for item in read_eval_file(domain / "test.jsonl", "test.jsonl"):
        assert (item.answer, item.aliases) in facts


def test_every_fact_is_trained_in_two_phrasings_that_contain_its_value(domain):
    index = index_for(domain, read_eval_file(domain / "test.jsonl", "test.jsonl"))
    pairs = iter(_train(domain))
    for country in countries.make_countries():
        for attribute, phrasings in countries.TRAIN.items():
            assert len(phrasings) >= 2
            value = normalise_answer(country["values"][attribute])
            for _ in phrasings:
                question, answer = next(pairs)
                assert index.entities(question) == [country["name"]]
                assert f" {value} " in f" {normalise_answer(answer)} ", (question, answer)
    assert next(pairs, None) is None


def test_seeds_are_five_training_questions(domain):
    seeds = (domain / "seeds.txt").read_text(encoding="utf-8").splitlines()
    assert len(seeds) == len(set(seeds)) == 5
    assert set(seeds) <= {q for q, _ in _train(domain)}


def test_countries_are_distinct_and_listed(domain):
    names = [row[0] for row in countries.COUNTRIES]
    assert len(names) == len(set(names))
    assert (domain / "entities.txt").read_text(encoding="utf-8").splitlines() == sorted(names)


def test_calling_codes_are_plus_and_digits(domain):
    codes = [f.value for f in read_facts(domain / "facts.jsonl") if f.attribute == "calling_code"]
    assert len(codes) == len(countries.COUNTRIES)
    assert all(re.fullmatch(r"\+\d{1,4}", c) for c in codes)


def test_recipe_holds_an_instruction_with_the_examples_slot(domain):
    recipe = tomllib.loads((domain / "recipe.toml").read_text(encoding="utf-8"))
    assert "{examples}" in recipe["expand"]["instruction"]


def test_the_drift_variant_mixes_general_seeds_and_a_general_writer(tmp_path):
    countries.write(tmp_path, 0)
    plain = (tmp_path / "seeds.txt").read_text(encoding="utf-8").splitlines()
    countries.write_drift(tmp_path)
    seeds = (tmp_path / "seeds.txt").read_text(encoding="utf-8").splitlines()
    assert seeds[:5] == plain and len(seeds) == 15
    assert not any(name in s for s in seeds[5:] for name in (tmp_path / "entities.txt").read_text().splitlines())
    recipe = tomllib.loads((tmp_path / "recipe.toml").read_text(encoding="utf-8"))
    assert recipe["generator"]["model"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "{examples}" in recipe["expand"]["instruction"]
