"""A connected invented domain: people, the organisations they work at, the towns those stand in, the regions.

Seeded and deterministic. Writes, into --out:
  train.jsonl  chat pairs about every fact, in three training phrasings each (the teacher's private fine-tuning
               data); every answer is a full sentence that names the linked entity, and often one more
  test.jsonl   {"prompt", "answer"} asking the same facts in phrasings the teacher never saw (held out); the
               answer is the bare value (the linked entity's name, or a person's role)
  seeds.txt    five training-phrasing questions, one per linking relation: all the pipeline ever sees of the
               private data
  recipe.toml  the domain's prompt-writing instruction (expand.instruction), for the transfer benchmark
  entities.txt every name (people, organisations, towns, regions), no facts: the directory a user may have
  facts.jsonl  the ground truth, one (entity, attribute, value) per line; a linking fact's value is an entity's name

In bench/world.py every fact ends in a town, a job or a pet, so a teacher's answer never leads to another person:
a strategy without the list of names (follow) reaches only the people the seeds name. Here the facts link: a
person works at an organisation and reports to a boss there, an organisation stands in a town and was founded by
someone (now at another organisation), a town lies in a region. Answers name what they link to, so following
the teacher's answers from the five seeds reaches every entity, which the generator guarantees (`unreached`):
each organisation's staff is a reporting chain whose most junior member founded the next organisation in a
cycle, and every town has an organisation and every region a town, so every entity is the value of some fact
and the facts lead from any person or organisation to all the others.

The default size (16 people: 24 entities, 54 facts, 162 training pairs) is the world's (24 names, 144 pairs), so
that the transfer benchmark's default run stays within its time budget on 2 cores; --size 40 gives 59 entities.

    python bench/connected.py --out data/connected [--size 16] [--seed 0]     --size: people
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import deque
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or imported
from bench.domainfiles import write_chat_pairs  # noqa: E402

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "br", "kr", "st", "qu"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
CODAS = ["", "", "n", "r", "l", "s", "th", "m"]
# consonant-initial, so "a {kind}" and "a {role}" read right
KINDS = ["foundry", "mill", "shipyard", "brewery", "bank", "press", "tannery", "pottery", "dairy", "glassworks"]
ROLES = ["clerk", "foreman", "bookkeeper", "courier", "surveyor", "machinist", "treasurer", "buyer", "porter", "cook"]

# The kind of entity each attribute belongs to, and the attributes whose value is another entity's name.
KIND = {
    "works_at": "person",
    "reports_to": "person",
    "role": "person",
    "located_in": "organisation",
    "founded_by": "organisation",
    "in_region": "place",
}
LINKING = ["works_at", "reports_to", "located_in", "founded_by", "in_region"]  # the seeds ask one each

# (question template, answer template) per attribute: training phrasings, then held-out phrasings. Questions
# fill in the subject only ({name}); answers start with a name and hold no possessive ("X's"), so that a reading
# of names as runs of capitalised words (tskd_lite/strategies.py, follow) finds exactly the entities.
TRAIN = {
    "works_at": [
        ("Where does {name} work?", "{name} works at {works_at}, a {kind} located in {place}."),
        ("Which organisation employs {name}?", "{name} is employed by {works_at}, a {kind} in {place}."),
        ("Who does {name} work for?", "{name} works for {works_at} in {place}."),
    ],
    "reports_to": [
        ("Who is the boss of {name}?", "{name} reports to {reports_to} at {works_at}."),
        ("To whom does {name} report?", "{name} reports to {reports_to}."),
        ("Who supervises {name}?", "{reports_to} supervises {name} at {works_at}."),
    ],
    "role": [
        ("What does {name} do at work?", "{name} is a {role} at {works_at}."),
        ("What position does {name} hold?", "{name} holds the position of {role}."),
        ("What is the job title of {name}?", "{name} works as a {role}."),
    ],
    "located_in": [
        ("Where is {name} located?", "{name} is located in {located_in}, a town in {region}."),
        ("In which town is {name}?", "{name} is in the town of {located_in}."),
        ("Where can {name} be found?", "{name} can be found in {located_in}."),
    ],
    "founded_by": [
        ("Who founded {name}?", "{name} was founded by {founded_by}, who now works at {founder_org}."),
        ("Who was the founder of {name}?", "{founded_by} founded {name}."),
        ("Who started {name}?", "{name} was started by {founded_by}."),
    ],
    "in_region": [
        ("Which region is {name} in?", "{name} is a town in the {in_region} region."),
        ("In which region does {name} lie?", "{name} lies in {in_region}."),
        ("What region is {name} part of?", "{name} is part of {in_region}."),
    ],
}
TEST = {
    "works_at": "For which organisation does {name} work?",
    "reports_to": "Who is the manager of {name}?",
    "role": "What role does {name} have?",
    "located_in": "Which town is home to {name}?",
    "founded_by": "Who established {name}?",
    "in_region": "To which region does {name} belong?",
}


INSTRUCTION = """Here are questions about the people, organisations and towns of a small country:

{examples}

Write one new question about one of them: where a person works, whom they report to or what their role is; \
where an organisation is located or who founded it; or which region a town lies in. Reply with the question only."""

# the templates' own words: a name spelt like one would be "named" by every sentence holding that word
_TEMPLATES = [*TEST.values(), *(text for phrasings in TRAIN.values() for qa in phrasings for text in qa), INSTRUCTION]
RESERVED = {w.lower() for text in _TEMPLATES for w in re.findall(r"[A-Za-z]+", text)}


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)).capitalize()


def _new_words(rng: random.Random, count: int, syllables: int, taken: set[str]) -> list[str]:
    """count words, none inside or around a word already taken: then no name can be a substring of another,
    and matching a name as whole words (bench/facts.py) finds only that name."""
    out: list[str] = []
    while len(out) < count:
        word = _word(rng, syllables)
        low = word.lower()
        if low in RESERVED or any(low in t or t in low for t in taken):
            continue
        taken.add(low)
        out.append(word)
    return out


def _cover(rng: random.Random, items: list[str], targets: list[str]) -> dict[str, str]:
    """A target for each item, every target used at least once: a town no organisation stands in (or a region
    with no town) would be the value of no fact, and no answer would lead to it."""
    order = rng.sample(items, len(items))
    return {item: targets[i] if i < len(targets) else rng.choice(targets) for i, item in enumerate(order)}


def _staff(rng: random.Random, people: list[str], orgs: list[str]) -> dict[str, list[str]]:
    """Each organisation's staff, two at least, most senior first: a chain, each reporting to the one before."""
    order = rng.sample(people, len(people))
    staff: dict[str, list[str]] = {o: [] for o in orgs}
    for i, person in enumerate(order):
        staff[orgs[i % len(orgs)] if i < 2 * len(orgs) else rng.choice(orgs)].append(person)
    return {o: rng.sample(members, len(members)) for o, members in staff.items()}


def make_domain(n_people: int, seed: int) -> dict[str, list[dict]]:
    """Records per kind (person, organisation, place, region), each a name and the values its templates use."""
    if n_people < 8:
        raise ValueError("--size: at least 8 people (two organisations of two at least, each)")
    rng = random.Random(seed)
    n_orgs = max(2, n_people // 4)
    n_places = max(2, round(n_orgs * 0.6))
    n_regions = max(2, n_places // 2)
    taken = set(KINDS) | set(ROLES)
    regions = _new_words(rng, n_regions, 3, taken)
    towns = _new_words(rng, n_places, 3, taken)
    kinds = {w: rng.choice(KINDS) for w in _new_words(rng, n_orgs, 2, taken)}
    kind_of = {f"{w} {k.capitalize()}": k for w, k in kinds.items()}
    orgs = list(kind_of)
    firsts, lasts = _new_words(rng, n_people, 2, taken), _new_words(rng, n_people, 2, taken)
    people = [f"{a} {b}" for a, b in zip(firsts, lasts, strict=True)]
    region_of, town_of = _cover(rng, towns, regions), _cover(rng, orgs, towns)
    staff = _staff(rng, people, orgs)
    # the most junior of the next organisation in a cycle founded each: the founded_by facts lead into every
    # chain at its foot, and reports_to climbs it
    cycle = rng.sample(orgs, len(orgs))
    founder = {o: staff[cycle[(i + 1) % len(cycle)]][-1] for i, o in enumerate(cycle)}
    employer = {p: o for o, members in staff.items() for p in members}
    person = []
    for org, members in staff.items():
        for i, p in enumerate(members):
            boss = members[i - 1] if i else None
            place = town_of[org]
            person.append({"name": p, "works_at": org, "kind": kind_of[org], "place": place, "reports_to": boss})
    for p in person:
        p["role"] = rng.choice(ROLES)
    organisation = [
        {"name": o, "kind": kind_of[o], "located_in": town_of[o], "region": region_of[town_of[o]]}
        | {"founded_by": founder[o], "founder_org": employer[founder[o]]}
        for o in orgs
    ]
    domain = {
        "person": sorted(person, key=lambda r: r["name"]),
        "organisation": sorted(organisation, key=lambda r: r["name"]),
        "place": [{"name": t, "in_region": region_of[t]} for t in sorted(towns)],
        "region": [{"name": r} for r in sorted(regions)],
    }
    _check_names(entity_names(domain))
    return domain


def entity_names(domain: dict[str, list[dict]]) -> list[str]:
    return [r["name"] for records in domain.values() for r in records]


def _check_names(names: list[str]) -> None:
    low = [n.lower() for n in names]
    clash = [(a, b) for a in low for b in low if a != b and a in b]
    if len(set(low)) != len(low) or clash:
        raise AssertionError(f"names not unique, or one inside another: {clash[:3]}")


def facts(domain: dict[str, list[dict]]) -> list[dict]:
    """One per (record, attribute of its kind) that has a value: the head of an organisation reports to no one."""
    return [
        {"entity": r["name"], "attribute": a, "value": r[a]}
        for kind, records in domain.items()
        for r in records
        for a in TRAIN
        if KIND[a] == kind and r.get(a) is not None
    ]


def pairs(domain: dict[str, list[dict]]) -> list[tuple[str, str]]:
    """(question, answer) in every training phrasing of every fact."""
    by_name = {r["name"]: r for records in domain.values() for r in records}
    out = []
    for fact in facts(domain):
        record = by_name[fact["entity"]]
        for question, answer in TRAIN[fact["attribute"]]:
            out.append((question.format(name=record["name"]), answer.format(**record)))
    return out


def named(text: str, entities: Iterable[str]) -> list[str]:
    """The entities the text names as whole words, case and punctuation aside (as bench/facts.py reads them)."""

    def fold(s: str) -> str:
        return " " + " ".join(re.sub(r"[^\w\s]", " ", s.casefold()).split()) + " "

    words = fold(text)
    return [e for e in entities if fold(e) in words]


def reachable(edges: Iterable[tuple[str, str]], start: Iterable[str]) -> set[str]:
    """Every node a path of edges (a, b) leads to from start, start included."""
    out: dict[str, set[str]] = {}
    for a, b in edges:
        out.setdefault(a, set()).add(b)
    seen = set(start)
    queue = deque(seen)
    while queue:
        for b in out.get(queue.popleft(), ()):
            if b not in seen:
                seen.add(b)
                queue.append(b)
    return seen


def answer_edges(qa: Iterable[tuple[str, str]], entities: list[str]) -> list[tuple[str, str]]:
    """(X, Y) for each entity Y an answer names about an entity X its question names: where a follower of the
    teacher's answers can go next."""
    return [(x, y) for q, a in qa for x in named(q, entities) for y in named(a, entities) if y != x]


def unreached(edges: Iterable[tuple[str, str]], seeds: list[str], entities: list[str]) -> list[str]:
    """The entities no path of edges leads to from the entities the seed questions name; [] when the domain is
    connected. The edges: (entity, value) of every fact whose value is an entity, since each training answer
    about the entity names the value; or answer_edges of the training pairs themselves."""
    start = {e for s in seeds for e in named(s, entities)}
    seen = reachable(edges, start)
    return [e for e in entities if e not in seen]


def choose_seeds(domain: dict[str, list[dict]], seed: int) -> list[str]:
    """One question per linking relation, each about a different entity, in its first training phrasing: every
    form a follower needs is among the seeds."""
    rng = random.Random(seed + 1)
    used: set[str] = set()
    seeds = []
    for attribute in LINKING:
        records = [r for r in domain[KIND[attribute]] if r.get(attribute) is not None and r["name"] not in used]
        record = rng.choice(records)
        used.add(record["name"])
        seeds.append(TRAIN[attribute][0][0].format(name=record["name"]))
    return seeds


def write(out: Path, n_people: int, seed: int) -> dict[str, int]:
    domain = make_domain(n_people, seed)
    entities, truth, qa = entity_names(domain), facts(domain), pairs(domain)
    seeds = choose_seeds(domain, seed)
    value_edges = [(f["entity"], f["value"]) for f in truth if f["value"] in entities]
    for what, edges in (("facts", value_edges), ("training answers", answer_edges(qa, entities))):
        missed = unreached(edges, seeds, entities)
        if missed:
            raise AssertionError(f"{len(missed)} entities unreachable from the seeds by {what}: {missed[:5]}")
    out.mkdir(parents=True, exist_ok=True)
    write_chat_pairs(out / "train.jsonl", qa)
    with (out / "test.jsonl").open("w") as f:
        for fact in truth:
            prompt = TEST[fact["attribute"]].format(name=fact["entity"])
            f.write(json.dumps({"prompt": prompt, "answer": fact["value"]}) + "\n")
    (out / "seeds.txt").write_text("\n".join(seeds) + "\n")
    # A JSON string is a valid TOML basic string.
    (out / "recipe.toml").write_text(f"[expand]\ninstruction = {json.dumps(INSTRUCTION)}\n")
    # names only, no facts: the directory a user may have (the entities strategy's input)
    (out / "entities.txt").write_text("".join(e + "\n" for e in entities))
    with (out / "facts.jsonl").open("w") as f:
        for fact in truth:
            f.write(json.dumps(fact) + "\n")
    return {"entities": len(entities), "facts": len(truth), "train pairs": len(qa), "test items": len(truth)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=16, help="people (organisations, towns and regions follow)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = write(args.out, args.size, args.seed)
    print(f"{args.out}: " + ", ".join(f"{n} {what}" for what, n in sizes.items()))
