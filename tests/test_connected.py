"""The connected domain (bench/connected.py): deterministic, every entity reachable from the seeds, held-out
phrasings, answers that name what they link to, and files the benchmark's readers take."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import connected  # noqa: E402
from bench.facts import index_for, read_facts  # noqa: E402
from tskd_lite.evaluate import read_eval_file  # noqa: E402
from tskd_lite.train.data import read_pairs  # noqa: E402

FILES = ["train.jsonl", "test.jsonl", "seeds.txt", "entities.txt", "facts.jsonl", "recipe.toml"]


@pytest.fixture(scope="module")
def domain(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("connected")
    connected.write(out, 40, 0)
    return out


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _train(folder: Path) -> dict[str, str]:
    return {prompt: answer for prompt, answer, _ in read_pairs(folder / "train.jsonl")}


def test_same_seed_same_files_and_another_seed_another_world(domain, tmp_path):
    connected.write(tmp_path / "again", 40, 0)
    connected.write(tmp_path / "other", 40, 1)
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (domain / name).read_bytes(), name
    assert (tmp_path / "other" / "facts.jsonl").read_bytes() != (domain / "facts.jsonl").read_bytes()


def test_every_entity_is_reachable_from_the_seeds(domain):
    entities, seeds = _lines(domain / "entities.txt"), _lines(domain / "seeds.txt")
    facts = read_facts(domain / "facts.jsonl")
    links = [(f.entity, f.value) for f in facts if f.value in entities]
    assert connected.unreached(links, seeds, entities) == []
    answers = connected.answer_edges(_train(domain).items(), entities)
    assert connected.unreached(answers, seeds, entities) == []
    # the check bites: without the founders no fact leads into the foot of an organisation's chain
    unfounded = [(f.entity, f.value) for f in facts if f.value in entities and f.attribute != "founded_by"]
    assert connected.unreached(unfounded, seeds, entities)


def test_sizes_and_names(domain):
    entities = _lines(domain / "entities.txt")
    facts = read_facts(domain / "facts.jsonl")
    assert len(entities) >= 55 and len(facts) >= 130
    low = [e.lower() for e in entities]
    assert len(set(low)) == len(low)
    assert not [(a, b) for a in low for b in low if a != b and a in b]
    assert {f.entity for f in facts} <= set(entities)
    linking = set(connected.LINKING)
    assert {f.attribute for f in facts} >= linking
    assert all(f.value in entities for f in facts if f.attribute in linking)


def test_held_out_prompts_ask_the_facts_in_words_the_teacher_never_saw(domain):
    items = read_eval_file(domain / "test.jsonl", "test.jsonl")
    facts = read_facts(domain / "facts.jsonl")
    assert not {item.prompt for item in items} & set(_train(domain))
    values = {f.value for f in facts}
    assert all(item.answer in values for item in items)
    # bench/facts.py's own reading: each item asks one fact, and every fact is asked
    index = index_for(domain, items)
    assert index is not None and len(index.asked) == len(items) == len(facts)


def test_every_training_answer_names_its_linked_entity(domain):
    train = _train(domain)
    entities = _lines(domain / "entities.txt")
    facts = read_facts(domain / "facts.jsonl")
    assert len(train) == sum(len(connected.TRAIN[f.attribute]) for f in facts)
    for fact in facts:
        assert len(connected.TRAIN[fact.attribute]) >= 3
        for question, _ in connected.TRAIN[fact.attribute]:
            answer = train[question.format(name=fact.entity)]
            # the subject and the value (for a linking fact, the entity it leads to), as whole words
            assert connected.named(answer, [fact.entity, fact.value]) == [fact.entity, fact.value], answer
    # the questions name their subject and nothing else
    assert all(len(connected.named(q, entities)) == 1 for q in train)


def test_five_seeds_in_training_phrasing_one_per_relation(domain):
    seeds, train = _lines(domain / "seeds.txt"), _train(domain)
    assert len(seeds) == 5 and len(set(seeds)) == 5
    assert all(s in train for s in seeds)
    firsts = [connected.TRAIN[a][0][0].split("{name}")[0] for a in connected.LINKING]
    assert [s.startswith(f) for s, f in zip(seeds, firsts, strict=True)] == [True] * 5


def test_recipe_is_toml_with_the_examples_slot(domain):
    recipe = tomllib.loads((domain / "recipe.toml").read_text())
    assert "{examples}" in recipe["expand"]["instruction"]


def test_small_sizes_stay_connected_and_too_small_refused(tmp_path):
    for size in (8, 13):
        sizes = connected.write(tmp_path / str(size), size, 3)
        assert sizes["facts"] == sizes["test items"]
    with pytest.raises(ValueError):
        connected.make_domain(7, 0)


def test_command_line(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "connected.py"), "--out", str(tmp_path / "c"), "--size", "12"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "entities" in done.stdout
    facts = [json.loads(line) for line in _lines(tmp_path / "c" / "facts.jsonl")]
    assert facts and all(set(f) == {"entity", "attribute", "value"} for f in facts)


def test_fact_measures_read_the_teachers_own_answers_as_true_and_shuffled_ones_as_guesses(domain):
    """Here values are entities and answers name what they link to: the teacher's own training answers are no
    guesses (bench/facts.py once marked 85% of them wrong), while answers moved to other questions are."""
    from bench.facts import measures

    index = index_for(domain, read_eval_file(domain / "test.jsonl", "test.jsonl"))
    pairs = [(p, a) for p, a, _ in read_pairs(domain / "train.jsonl")]
    true = measures(pairs, index)
    assert true["wrong_rate"] == 0.0 and true["precision"] == 1.0 and true["coverage"] == 1.0
    shuffled = measures([(p, pairs[(i + 7) % len(pairs)][1]) for i, (p, _) in enumerate(pairs)], index)
    assert shuffled["wrong_rate"] > 0.5
