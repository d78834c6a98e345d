"""The arms: what the target is trained on, one registered class each.

An arm states its name, its one-line description (`--help` and docs/benchmark.md's table are made from it) and whether
`just transfer-bench` runs it by default. An arm that grows a pool of its own says how in `overrides` (the recipe
changes laid over the shared recipe); one that trains on another arm's pool names it in `pool`; `pairs` draws its
training pairs (by default a sample of its pool's export). Registration order is the order of `--arms`' choices,
of `--help`, of docs/benchmark.md's table and of the pools in the results.

Adding an arm is one class here and its line in docs/benchmark.md's table (tests/test_transfer.py checks the table).
"""

from __future__ import annotations

import dataclasses
import random
import textwrap
from typing import TYPE_CHECKING, ClassVar

from tskd_lite import pipeline
from tskd_lite.recipe import OPEN_FORMS
from tskd_lite.store import Store
from tskd_lite.strategies import MAX_CANDIDATES
from tskd_lite.train import read_pairs

from .tables import Column, table

if TYPE_CHECKING:
    from tskd_lite.recipe import Recipe

    from .domain import Domain

# Every pool runs every round, whatever it keeps, so that the arms generate alike: the same number of prompts
# (entities and follow: at most that many, as many as there are new names to ask about).
EVERY_ROUND = {"target_kept": 1 << 30}
# The entities and follow pools ask every form x name (the product's default for them), whatever the other pools'
# prompt budget: a cap set for the world asked 41 of a real domain's 249 names.
EVERY_NAME = {**EVERY_ROUND, "candidates_per_round": MAX_CANDIDATES}
CONTRAST = {"select": {"rule": "contrast"}}
# the replay arms' [train]: the target's own answers, one for every four pairs, at least the recipe's
# train.replay_min (the product's default, 32)
REPLAY = {"replay": 0.25}
TOKEN_TOP_FRACTION = 0.5

REGISTRY: dict[str, Arm] = {}


def sample(pairs: list, n: int, seed: int) -> list:
    if len(pairs) <= n:
        return list(pairs)
    return [pairs[i] for i in sorted(random.Random(seed).sample(range(len(pairs)), n))]


class Arm:
    """One arm; subclasses state name, description and default, and grow a pool (overrides), name another arm's
    (pool) or draw their pairs elsewhere (pairs)."""

    name: ClassVar[str]
    description: ClassVar[str]
    default: ClassVar[bool]
    pool: ClassVar[str | None] = None  # the pool it trains on; set to its own name where it defines overrides
    needs_entities: ClassVar[bool] = False  # runs only on a domain that ships entities.txt
    # [train] keys laid over the recipe's for this arm's training: no replay unless the arm says so, so that an
    # arm measures its pairs alone whatever the product's default
    train: ClassVar[dict] = {"replay": 0.0}

    def overrides(self, domain: Domain) -> dict:
        """The recipe changes that grow this arm's pool."""
        raise NotImplementedError(f"{self.name} grows no pool of its own")

    def pairs(self, domain: Domain, seed: int, n: int) -> list:
        """The (prompt, answer, spans) pairs the target trains on: up to n of the pool's exported pairs."""
        export = domain.pool(self.pool, seed).output.export_path
        if not export.read_text(encoding="utf-8").strip():  # the pool kept nothing
            return []
        return sample(read_pairs(export), n, seed)


def register(cls: type[Arm]) -> type[Arm]:
    for attribute in ("name", "description", "default"):  # stated by each arm, never inherited
        if attribute not in vars(cls):
            raise TypeError(f"{cls.__name__}: an arm states its {attribute}")
    if cls.name in REGISTRY:
        raise TypeError(f"{cls.__name__}: arm {cls.name} is registered twice")
    if cls.overrides is not Arm.overrides:  # it grows its own pool
        if vars(cls).get("pool", cls.name) != cls.name:
            raise TypeError(f"{cls.__name__}: an arm that grows its own pool trains on it")
        cls.pool = cls.name
    elif cls.pool is None and cls.pairs is Arm.pairs:
        raise TypeError(f"{cls.__name__}: an arm grows a pool, trains on another arm's, or draws its own pairs")
    REGISTRY[cls.name] = cls()
    return cls


@register
class SeedsOnly(Arm):
    name = "seeds_only"
    description = "the teacher's answers to the five seed prompts"
    default = True
    pool = "full"

    def pairs(self, domain: Domain, seed: int, n: int) -> list:
        with Store.read(domain.pool(self.pool, seed).output.db) as store:
            return [(p, a, None) for p, a in store.answered_pairs(store.get_run(None).id, 0)]


@register
class NoSelection(Arm):
    name = "no_selection"
    description = "generated pairs with no selection (τ ≈ 0), the pool grown from all of them"
    default = True

    def overrides(self, domain: Domain) -> dict:
        return {"expand": dict(EVERY_ROUND), "select": {"rule": "ppl_ratio", "tau": 1e-9, "top_fraction": 1.0}}


@register
class OneRound(Arm):
    name = "one_round"
    description = "one round of 48 prompts, selected once (τ = 1.5)"
    default = False

    def overrides(self, domain: Domain) -> dict:
        total = domain.recipe.expand.rounds * domain.recipe.expand.candidates_per_round
        return {"expand": {**EVERY_ROUND, "rounds": 1, "candidates_per_round": total}}


@register
class Full(Arm):
    name = "full"
    description = (
        "TuneShift-KD as the paper describes it: 3 rounds, few-shot, each written from the pairs kept so far (τ = 1.5)"
    )
    default = True

    def overrides(self, domain: Domain) -> dict:
        return {"expand": dict(EVERY_ROUND)}


@register
class TokenLevel(Arm):
    name = "token_level"
    description = (
        "the full pool's pairs, loss only on the half of each answer's tokens with the largest teacher-over-base lift"
    )
    default = False
    pool = "full"

    def pairs(self, domain: Domain, seed: int, n: int) -> list:
        recipe = domain.pool(self.pool, seed)
        token = dataclasses.replace(
            recipe, train=dataclasses.replace(recipe.train, token_top_fraction=TOKEN_TOP_FRACTION)
        )
        return sample(pipeline.token_selected_pairs(token, domain.log), n, seed)


@register
class Oracle(Arm):
    name = "oracle"
    description = "the teacher's own training data: the ceiling a real user no longer has"
    default = True

    def pairs(self, domain: Domain, seed: int, n: int) -> list:
        return sample(read_pairs(domain.folder / "train.jsonl"), n, seed)


@register
class FullAug(Arm):
    name = "full_aug"
    description = "the full pool grown with paraphrase augmentation (2 rewrites of each kept prompt)"
    default = False

    def overrides(self, domain: Domain) -> dict:
        return {"expand": {**EVERY_ROUND, "paraphrases": domain.settings.paraphrases}}


@register
class OracleAug(Arm):
    name = "oracle_aug"
    description = (
        "the oracle's pairs plus the teacher's answers to 2 rewrites of each of their prompts, selected the same way"
    )
    default = False

    def pairs(self, domain: Domain, seed: int, n: int) -> list:
        with Store.read(self.grow(domain, seed, n).output.db) as store:
            rows = store.kept_pairs(store.get_run(None).id)
        paraphrased = [(r["prompt"], r["answer"], None) for r in rows if r["source"] == "paraphrase"]
        return REGISTRY["oracle"].pairs(domain, seed, n) + paraphrased

    def grow(self, domain: Domain, seed: int, n: int) -> Recipe:
        """Paraphrases of the oracle sample's prompts, answered and selected as full_aug's are: a pool whose seeds
        are the oracle's prompts, with no expansion rounds."""
        folder = domain.layout.oracle_pool(seed, n)
        seeds = folder / "seeds.txt"
        if not seeds.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            prompts = [p for p, _, _ in REGISTRY["oracle"].pairs(domain, seed, n)]
            seeds.write_text("".join(" ".join(p.split()) + "\n" for p in prompts))
        overrides = {
            "seed": seed,
            "output": {"db": str(folder / "pool.db"), "export": str(folder / "pool.jsonl")},
            "seeds": {"file": str(seeds)},
            "expand": {"rounds": 0, **EVERY_ROUND, "paraphrases": domain.settings.paraphrases},
        }
        return domain.grown(domain.with_teacher(overrides), self.name, seed)


@register
class Entities(Arm):
    name = "entities"
    description = (
        'templates × entities (`expand.strategy = "entities"`) from the domain\'s `entities.txt` (names only), τ = 1.5'
    )
    default = True
    needs_entities = True

    def overrides(self, domain: Domain) -> dict:
        entities = str(domain.folder / "entities.txt")
        return {"expand": {**EVERY_NAME, "strategy": "entities", "entities_file": entities}}


@register
class Sample(Arm):
    name = "sample"
    description = (
        'the teacher writes its own user turns from its bare chat template (`expand.strategy = "sample"`), τ = 1.5'
    )
    default = False

    def overrides(self, domain: Domain) -> dict:
        return {"expand": {**EVERY_ROUND, "strategy": "sample"}}


@register
class FullContrast(Full):
    name = "full_contrast"
    description = 'full\'s recipe with the contrast keep rule (`select.rule = "contrast"`)'
    default = False

    def overrides(self, domain: Domain) -> dict:
        return super().overrides(domain) | CONTRAST


@register
class FullTokenGap(Full):
    name = "full_token_gap"
    description = "full's recipe with the token-gap keep rule (`select.rule = \"token_gap\"`: TiTok's lift as a rule)"
    default = False

    def overrides(self, domain: Domain) -> dict:
        return super().overrides(domain) | {"select": {"rule": "token_gap"}}


@register
class EntitiesContrast(Entities):
    name = "entities_contrast"
    description = "entities' recipe with the contrast keep rule"
    default = True

    def overrides(self, domain: Domain) -> dict:
        return super().overrides(domain) | CONTRAST


@register
class FollowContrast(Arm):
    name = "follow_contrast"
    description = (
        'names found in the seeds and the teacher\'s answers, no list (`expand.strategy = "follow"`), contrast rule'
    )
    default = True

    def overrides(self, domain: Domain) -> dict:
        return {"expand": {**EVERY_NAME, "strategy": "follow"}} | CONTRAST


@register
class EntitiesReplay(Arm):
    name = "entities_replay"
    description = (
        "entities' pairs plus the untouched target's own answers to general prompts, 0.25 per pair and at "
        "least 32 (`train.replay`, `train.replay_min`: the product's defaults): do no harm"
    )
    default = True
    needs_entities = True
    pool = "entities"
    train = REPLAY


@register
class FullReplay(Arm):
    name = "full_replay"
    description = "full's pairs plus the target's own answers to general prompts, as entities_replay"
    default = False
    pool = "full"
    train = REPLAY


@register
class SeedsReplay(SeedsOnly):
    name = "seeds_replay"
    description = "seeds_only's pairs plus the target's own answers to general prompts, as entities_replay"
    default = False
    train = REPLAY


@register
class FollowAgreement(Arm):
    name = "follow_agreement"
    description = (
        'follow\'s names, no list, agreement rule (`select.rule = "agreement"`: 4 sampled answers repeat its names)'
    )
    default = False

    def overrides(self, domain: Domain) -> dict:
        return {"expand": {**EVERY_NAME, "strategy": "follow"}, "select": {"rule": "agreement"}}


@register
class EntitiesOpenReplay(Entities):
    name = "entities_open_replay"
    description = (
        'entities_replay with each name also asked open questions (`expand.open_forms`: "Tell me about {name}.", '
        '"What do you know about {name}?"): the attributes no seed asks about'
    )
    default = False
    train = REPLAY

    def overrides(self, domain: Domain) -> dict:
        entities = super().overrides(domain)
        return {"expand": {**entities["expand"], "open_forms": list(OPEN_FORMS)}}


@register
class FollowOpenAgreement(Arm):
    name = "follow_open_agreement"
    description = "follow_agreement with each name found also asked the open questions of entities_open_replay"
    default = False

    def overrides(self, domain: Domain) -> dict:
        expand = {**EVERY_NAME, "strategy": "follow", "open_forms": list(OPEN_FORMS)}
        return {"expand": expand, "select": {"rule": "agreement"}}


def _check_pools() -> None:
    """An arm trains on no pool (its pairs come from elsewhere) or on one that an arm grows."""
    for arm in REGISTRY.values():
        if arm.pool is not None and REGISTRY.get(arm.pool, Arm).pool != arm.pool:
            raise TypeError(f"arm {arm.name}: pool {arm.pool} is grown by no arm")


_check_pools()
ARMS = tuple(REGISTRY)
# What `just transfer-bench` runs on the world: the paper's configuration (full), its controls, the ceiling, and the
# strategies and rules this toolkit adds; the others on request (--arms).
DEFAULT_ARMS = tuple(name for name, arm in REGISTRY.items() if arm.default)
# The pools, in the order the arms first train on them
POOLS = tuple(dict.fromkeys(arm.pool for arm in REGISTRY.values() if arm.pool is not None))


def pools_of(arms: list[str]) -> list[str]:
    """The pools the given arms train on, in POOLS' order."""
    wanted = {REGISTRY[arm].pool for arm in arms}
    return [pool for pool in POOLS if pool in wanted]


def help_text(width: int = 100) -> str:
    """The arms as `--help` lists them."""
    column = max(map(len, REGISTRY)) + 5
    lines = ["arms (* = run by default):"]
    for name, arm in REGISTRY.items():
        head = f"  {name:<{column - 5}} {'*' if arm.default else ' '} "
        lines += textwrap.wrap(arm.description, width, initial_indent=head, subsequent_indent=" " * column)
    return "\n".join(lines)


def readme_table() -> str:
    """The table of the arms in docs/benchmark.md."""
    columns = (Column("arm", lambda a: a.name), Column("the target is trained on", lambda a: a.description))
    return "\n".join(table(columns, list(REGISTRY.values()))) + "\n"
