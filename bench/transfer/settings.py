"""What one invocation of the benchmark is set to (the command line as a dataclass) and one arm's training budget."""

from __future__ import annotations

import dataclasses

# --quick: one seed and small settings, minutes on tiny models (tests/test_transfer.py)
QUICK = {
    "pairs": 16,
    "steps": 4,
    "eval_limit": 16,
    "teacher_epochs": 2,
    "rounds": 2,
    "candidates": 8,
    "curve_pairs": [8, 16],
    "curve_steps": [2, 4],
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The design every domain of one invocation shares; the field order is the order of results' "settings"."""

    seeds: list[int]
    # Budgets follow the domain: an arm trains on up to `pairs` pairs (None: as many as the teacher's own data,
    # the domain's train.jsonl), for the domain's step budget capped by `max_passes` over what it drew (None steps)
    # or a fixed `steps`; each pool writes as many prompts over its rounds as there are pairs to train on. Fixed
    # budgets set for the world (144 pairs, 72 steps) asked a fifth of a 747-pair domain, and 72 steps on 5 pairs
    # erased what the target knew.
    pairs: int | None = None
    steps: int | None = None
    eval_limit: int = 48  # held-out items per domain (0: all)
    teacher_epochs: int = 12  # at most; stopped on held-out loss
    teacher_patience: int = 2
    teacher_lr: float = 1e-3
    quick: bool = False
    curve_pairs: list[int] = dataclasses.field(default_factory=lambda: [48, 96, 144])
    curve_steps: list[int] = dataclasses.field(default_factory=lambda: [24, 48, 72])
    aim: float = 0.8  # recovered fraction the chosen budget must reach on every domain
    paraphrases: int = 2  # rewrites per kept prompt in the _aug arms
    candidates: int | None = None  # prompts per round in every pool (None: the recipe's); such pools are cached apart
    rounds: int | None = None  # expansion rounds of every pool: --quick only (None: the recipe's)
    rank: int | None = None  # the target's LoRA rank: --rank, else the domain's recipe (set per domain)
    lr: float | None = None  # the target's learning rate: --lr, else the domain's recipe (set per domain)
    # --curve's grid beyond pairs x steps (None: rank, lr); not recorded in the results
    curve_ranks: list[int] | None = dataclasses.field(default=None, metadata={"recorded": False})
    curve_lrs: list[float] | None = dataclasses.field(default=None, metadata={"recorded": False})
    # passes over the domain's pairs, every arm's step budget where steps is None (--curve's 72 steps x 8 over the
    # world's 144 pairs); over the arm's own pairs with max_passes 0
    epochs: float = 4.0
    # > 0: every arm trains up to `epochs` epochs and stops once the loss on a held-out tenth of its own pairs (other
    # phrasings of the same facts, never the test file) has not improved for this many epochs, keeping the best
    # epoch (Gekhman et al. 2024); 0: exactly `epochs` epochs
    patience: int = 0
    # An arm trains the domain's step budget (`epochs` over the domain's pairs), at most this many passes over its
    # own pairs (None or 0: `epochs` over its own pairs): a pool that states each fact once gets the exposures the
    # teacher's data gets (world, entities, 3 seeds: 15% recovered at 4 epochs over its 72 pairs, 96% at this
    # budget, 8 passes), a pool of a handful of pairs no more than 8 passes (72 steps on 5 pairs erased what the
    # target knew; on countries 12 passes over the 18 pairs of the full pool lost more of it than 4). The product's
    # train.epochs default is the same 8 passes.
    max_passes: float | None = 8.0

    def quick_mode(self) -> Settings:
        return dataclasses.replace(self, **QUICK, quick=True, seeds=self.seeds[:1])

    def as_json(self) -> dict:
        """The settings as results record them; rounds only where --quick set it."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("recorded", True)}
        if self.rounds is None:
            del out["rounds"]
        return out


@dataclasses.dataclass(frozen=True)
class Budget:
    """What one arm's training gets: pairs drawn, optimiser steps, LoRA rank and learning rate, and the target's
    own replayed answers trained beside its pairs."""

    pairs: int
    steps: int | None  # None: the domain's budget capped by passes over the arm's pairs (Domain.resolved sets it)
    rank: int
    lr: float
    epochs: float | None = None  # with patience: at most this many epochs, steps left None
    patience: int = 0  # > 0: stopped on held-out loss (Settings.patience)
    replay: int = 0  # replayed answers beside the arm's pairs (train.replay, train.replay_min; Domain.arm sets it)

    @property
    def key(self) -> str:
        replayed = f"-rp{self.replay}" if self.replay else ""  # keys without replay read as they always have
        if self.patience:
            return f"p{self.pairs}-e{self.epochs:g}-stop{self.patience}-r{self.rank}-lr{self.lr:g}{replayed}"
        if self.steps is None:
            raise ValueError("a budget's steps are resolved for the arm's pairs before it is a cache key")
        return f"p{self.pairs}-s{self.steps}-r{self.rank}-lr{self.lr:g}{replayed}"
