"""Fact-level measures of a pool, for a domain that ships its ground truth as facts.jsonl.

facts.jsonl holds one fact per line: {"entity": str, "attribute": str, "value": str, "aliases"?: [str]}. A pair
(prompt, answer) *names* an entity when the entity appears in the prompt as whole words (after the evaluation's
normalisation); it *states* a fact of that entity when the answer contains the fact's value (or an alias); it
states a *wrong* value when the answer holds a value that the domain uses for that attribute but that is not the
named entity's, and none of the entity's own, or when it names no entity of the domain and still states one of
the domain's values (the teacher answering an invented name in the world's style). A held-out test item asks
for a fact when its prompt names the entity and its reference answer is the fact's value.

Per pool (the kept pairs):
  in-domain     pairs whose prompt names an entity of the domain, among all pairs (what a selection rule should
                keep when a general model writes the prompts: the drift measure)
  coverage      distinct held-out facts that some pair states correctly, over the held-out facts asked
  precision     pairs that state a correct fact, among the pairs that name an entity of the domain
  wrong rate    pairs that state a wrong value (confident guessing), among all pairs

    python bench/facts.py DOMAIN_DIR POOL.db [POOL.db ...]     one line per pool
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tskd_lite.errors import TskdError  # noqa: E402
from tskd_lite.evaluate import EvalItem, normalise_answer, read_eval_file  # noqa: E402
from tskd_lite.jsonl import read_jsonl  # noqa: E402


@dataclass(frozen=True)
class Fact:
    entity: str
    attribute: str
    value: str
    aliases: tuple[str, ...] = ()


def read_facts(path: Path) -> list[Fact]:
    facts = []
    for at, row in read_jsonl(path, "facts.jsonl"):
        ok = isinstance(row, dict) and all(
            isinstance(row.get(k), str) and row[k].strip() for k in ("entity", "attribute", "value")
        )
        aliases = row.get("aliases", []) if isinstance(row, dict) else None
        if not ok or not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise TskdError(f'{at}: expected {{"entity": str, "attribute": str, "value": str, "aliases"?: [str]}}')
        facts.append(Fact(row["entity"], row["attribute"], row["value"], tuple(aliases)))
    return facts


def _words(text: str) -> str:
    return f" {normalise_answer(text)} "


def _says(text: str, fact: Fact) -> bool:
    return any(_words(v) in text for v in (fact.value, *fact.aliases) if normalise_answer(v))


class FactIndex:
    def __init__(self, facts: list[Fact], items: list[EvalItem]) -> None:
        self.by_entity: dict[str, list[Fact]] = {}
        for f in facts:
            self.by_entity.setdefault(f.entity, []).append(f)
        # every value the domain uses, per attribute: what a confident guess draws from
        self.values: dict[str, list[Fact]] = {}
        for f in facts:
            self.values.setdefault(f.attribute, []).append(f)
        self.asked = {fact for item in items for fact in self._facts_asked(item)}

    def _facts_asked(self, item: EvalItem) -> list[Fact]:
        refs = {normalise_answer(r) for r in (item.answer, *item.aliases)}
        return [
            f
            for e in self.entities(item.prompt)
            for f in self.by_entity[e]
            if refs & {normalise_answer(v) for v in (f.value, *f.aliases)}
        ]

    def entities(self, text: str) -> list[str]:
        words = _words(text)
        return [e for e in self.by_entity if _words(e) in words]

    def classify(self, prompt: str, answer: str) -> dict:
        """Which entities the prompt names, which of their facts the answer states, and whether it guessed."""
        named = self.entities(prompt)
        said = _words(answer)
        correct = {f for e in named for f in self.by_entity[e] if _says(said, f)}
        wrong = False
        for attribute, facts in self.values.items():
            # where values are entities (works at, located in), the names the prompt asks about are not guesses
            mentioned = {f.value for f in facts if _says(said, f)} - set(named)
            if not mentioned:
                continue
            own = {f.value for e in named for f in self.by_entity[e] if f.attribute == attribute}
            # an attribute the named entity does not have (a person's answer naming its employer's town) is context
            if not named or (own and mentioned - own and not mentioned & own):
                wrong = True
        return {"named": named, "correct": correct, "wrong": wrong}


def measures(pairs: list[tuple[str, str]], index: FactIndex) -> dict:
    named = correct = wrong = 0
    stated: set[Fact] = set()
    for prompt, answer in pairs:
        c = index.classify(prompt, answer)
        named += bool(c["named"])
        correct += bool(c["correct"])
        wrong += c["wrong"]
        stated |= c["correct"]
    return {
        "pairs": len(pairs),
        "naming_an_entity": named,
        "stating_a_true_fact": correct,
        "facts_stated": len(stated),
        "held_out_facts": len(index.asked),
        "in_domain": named / len(pairs) if pairs else None,
        "coverage": len(stated & index.asked) / len(index.asked) if index.asked else None,
        "precision": correct / named if named else None,
        "wrong_rate": wrong / len(pairs) if pairs else None,
    }


def index_for(domain: Path, items: list[EvalItem]) -> FactIndex | None:
    """The domain's fact index, or None when it ships no facts.jsonl."""
    path = domain / "facts.jsonl"
    return FactIndex(read_facts(path), items) if path.is_file() else None


def main() -> None:
    from tskd_lite.store import Store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("domain", type=Path)
    parser.add_argument("pools", type=Path, nargs="+")
    args = parser.parse_args()
    try:
        index = index_for(args.domain, read_eval_file(args.domain / "test.jsonl", "test.jsonl"))
        if index is None:
            raise TskdError(f"{args.domain}: no facts.jsonl")
        for db in args.pools:
            store = Store.read(db)
            try:
                rows = store.kept_pairs(store.get_run(None).id)
            finally:
                store.close()
            print(db, measures([(r["prompt"], r["answer"]) for r in rows], index))
    except TskdError as e:
        raise SystemExit(f"Error: {e}") from None


if __name__ == "__main__":
    main()
