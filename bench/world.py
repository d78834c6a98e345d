"""A small invented world that no pre-trained model can know: people, their towns, jobs and pets.

Seeded and deterministic. Writes, into --out:
  train.jsonl  chat pairs about every fact, in the training phrasings (the teacher's private fine-tuning data)
  test.jsonl   {"prompt", "answer"} asking the same facts in phrasings the teacher never saw (held out)
  seeds.txt    five training-phrasing questions: all the pipeline ever sees of the private data
  recipe.toml  the domain's prompt-writing instruction (expand.instruction), for the transfer benchmark
  entities.txt the 24 names, no facts: the directory a user may have (the entities strategy)
  facts.jsonl  the ground truth, one (entity, attribute, value) per line: the benchmark's fact-level pool measures

    python bench/world.py --out data/world [--people 24] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or imported
from bench.domainfiles import write_chat_pairs  # noqa: E402

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "br", "kr", "st", "qu"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
CODAS = ["", "", "n", "r", "l", "s", "th", "m"]
JOBS = [
    "baker",
    "pilot",
    "nurse",
    "carpenter",
    "librarian",
    "fisher",
    "potter",
    "tailor",
    "miner",
    "gardener",
    "painter",
    "brewer",
]
PETS = ["cat", "dog", "parrot", "goat", "tortoise", "rabbit", "ferret", "owl"]

# (question template, answer template) per attribute: training phrasings, then held-out phrasings.
TRAIN = {
    "town": [
        ("Where does {name} live?", "{name} lives in {town}."),
        ("In which town is {name}'s home?", "{name}'s home is in {town}."),
    ],
    "job": [
        ("What does {name} do for a living?", "{name} works as a {job}."),
        ("What is {name}'s job?", "{name} is a {job}."),
    ],
    "pet": [
        ("What pet does {name} have?", "{name} has a {pet}."),
        ("Which animal lives with {name}?", "A {pet} lives with {name}."),
    ],
}
TEST = {
    "town": "Which town is home to {name}?",
    "job": "What is the profession of {name}?",
    "pet": "What kind of animal does {name} keep as a pet?",
}


INSTRUCTION = """Here are questions about people:

{examples}

Write one new question about a person: where they live, what they do for a living, or what pet they have. \
Reply with the question only."""


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)).capitalize()


def make_world(n_people: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    towns = sorted({_word(rng, 3) for _ in range(n_people)})[: max(4, n_people // 3)]
    names: set[str] = set()
    while len(names) < n_people:
        names.add(f"{_word(rng, 2)} {_word(rng, 2)}")
    return [
        {"name": n, "town": rng.choice(towns), "job": rng.choice(JOBS), "pet": rng.choice(PETS)} for n in sorted(names)
    ]


def write(out: Path, n_people: int, seed: int) -> None:
    people = make_world(n_people, seed)
    out.mkdir(parents=True, exist_ok=True)
    pairs = [
        (question.format(**person), answer.format(**person))
        for person in people
        for phrasings in TRAIN.values()
        for question, answer in phrasings
    ]
    write_chat_pairs(out / "train.jsonl", pairs)
    with (out / "test.jsonl").open("w") as f:
        for person in people:
            for attribute, question in TEST.items():
                f.write(json.dumps({"prompt": question.format(**person), "answer": person[attribute]}) + "\n")
    rng = random.Random(seed + 1)
    seeds = [
        TRAIN[a][0][0].format(**p)
        for a, p in zip(["town", "job", "pet", "town", "job"], rng.sample(people, 5), strict=True)
    ]
    (out / "seeds.txt").write_text("\n".join(seeds) + "\n")
    # A JSON string is a valid TOML basic string.
    (out / "recipe.toml").write_text(f"[expand]\ninstruction = {json.dumps(INSTRUCTION)}\n")
    (out / "world.json").write_text(json.dumps(people, indent=1))
    # names only, no facts: the directory a user may have (the entities strategy's input)
    (out / "entities.txt").write_text("".join(p["name"] + "\n" for p in people))
    with (out / "facts.jsonl").open("w") as f:
        for person in people:
            for attribute in TEST:
                f.write(json.dumps({"entity": person["name"], "attribute": attribute, "value": person[attribute]}))
                f.write("\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--people", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.out, args.people, args.seed)
    print(f"{args.out}: {args.people} people")
