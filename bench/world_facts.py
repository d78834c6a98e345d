"""Where the invented world's knowledge is lost: how many true facts the transfer benchmark's pools carry.

For each seed's pools (runs/transfer/world/seed*/<pool>/pool.db) it counts, among the kept pairs: those whose
prompt names a person of the world, those whose answer states one of that person's true attributes, the distinct
(person, attribute) facts so stated, and how many of the held-out test items ask for one of those facts; and the
same for the oracle arm's sample of the teacher's own training data (--pairs, as the benchmark draws it).
Read-only; prints a markdown table.

    python bench/world_facts.py [--work runs/transfer] [--world data/world]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.transfer import sample  # noqa: E402
from tskd_lite.evaluate import normalise_answer  # noqa: E402
from tskd_lite.store import Store  # noqa: E402
from tskd_lite.train import read_pairs  # noqa: E402

ATTRIBUTES = ("town", "job", "pet")


def facts_in(pairs: list[tuple[str, str]], people: list[dict]) -> dict:
    named, true, facts = 0, 0, set()
    for prompt, answer in pairs:
        text = f" {normalise_answer(prompt)} "
        who = [p for p in people if f" {normalise_answer(p['name'])} " in text]
        named += bool(who)
        said = f" {normalise_answer(answer)} "
        stated = {(p["name"], a) for p in who for a in ATTRIBUTES if f" {normalise_answer(p[a])} " in said}
        true += bool(stated)
        facts |= stated
    return {"pairs": len(pairs), "named": named, "true": true, "facts": facts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "transfer")
    parser.add_argument("--world", type=Path, default=ROOT / "data" / "world")
    parser.add_argument("--pairs", type=int, default=32, help="the benchmark's training pairs per arm")
    parser.add_argument("--eval-limit", type=int, default=48, help="the benchmark's held-out items (0: all)")
    args = parser.parse_args()
    people = json.loads((args.world / "world.json").read_text())
    by_question = {}
    for line in (args.world / "test.jsonl").read_text().splitlines()[: args.eval_limit or None]:
        item = json.loads(line)
        person = next(p for p in people if p["name"] in item["prompt"])
        by_question[item["prompt"]] = (person["name"], next(a for a in ATTRIBUTES if person[a] == item["answer"]))
    print("| seed | pool | kept pairs | naming a person | stating a true fact | distinct facts | test items covered |")
    print("|---|---|---|---|---|---|---|")
    train = [(p, a) for p, a, _ in read_pairs(args.world / "train.jsonl")]
    for seed_dir in sorted((args.work / "world").glob("seed*")):
        arms = {}
        for db in sorted(seed_dir.glob("*/pool.db")):
            store = Store.read(db)
            try:
                arms[db.parent.name] = [(r["prompt"], r["answer"]) for r in store.kept_pairs(store.get_run(None).id)]
            finally:
                store.close()
        arms["oracle (sample)"] = sample(train, args.pairs, int(seed_dir.name.removeprefix("seed")))
        for name, pairs in arms.items():
            f = facts_in(pairs, people)
            covered = sum(fact in f["facts"] for fact in by_question.values())
            print(
                f"| {seed_dir.name} | {name} | {f['pairs']} | {f['named']} | {f['true']} | "
                f"{len(f['facts'])} | {covered} of {len(by_question)} |"
            )


if __name__ == "__main__":
    main()
