"""How a round writes its candidate prompts: one class per strategy, chosen by `expand.strategy`.

A strategy turns a round's item indices into Asks: a finished prompt (no model writes it) or text for a model to
continue, whose first line is the prompt, with what the ask was made from (recorded in the store). A strategy
reads only what the store held before its round began, so a round resumed halfway plans the same candidates.
Adding one means a class here registered under its name; the recipe and the pipeline's loop do not change.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from tskd_lite import expand
from tskd_lite.contrast import key_spans
from tskd_lite.dedup import normalise
from tskd_lite.errors import TskdError
from tskd_lite.registry import Registry

if TYPE_CHECKING:  # the recipe checks strategy names against STRATEGIES: no import of it here at run time
    from tskd_lite.recipe import Expand

STRATEGIES: Registry[type] = Registry("strategy")
MAX_CANDIDATES = 100_000  # prompts one round may write (expand.candidates_per_round's bound): "every candidate"


@dataclass(frozen=True)
class Ask:
    prompt: str | None = None  # a finished prompt
    rendered: str | None = None  # text the writer continues
    lead: str = ""  # words the prompt starts with, written before the writer's continuation
    sources: tuple[int, ...] = ()  # ids of the prompts it was made from
    inputs: dict = field(default_factory=dict)  # anything else it was made from (an entity, an opening)


@dataclass
class Round:
    """What a strategy may use: the settings, the run seed, the round, the few-shot pool (seeds and the prompts
    kept by earlier rounds), every prompt text of earlier rounds, and the writer's chat template."""

    cfg: Expand
    seed: int
    number: int
    pool: list[dict]
    answers: Callable[[], list[str]]  # the teacher's answers to the pool's prompts (read when asked)
    earlier: set[str]
    render: Callable[[str], str]
    user_prefix: Callable[[], str]


@STRATEGIES.register("fewshot")
class Fewshot:
    """The paper's: the generator, in its chat template, is shown k examples and asked for a new prompt."""

    writer = "generator"

    def __init__(self, r: Round) -> None:
        self.r = r

    @classmethod
    def check(cls, cfg: Expand, where: str) -> None:
        """The strategy's own load-time check of [expand] (TskdError naming the key); most need none."""

    @classmethod
    def sized(cls, cfg: Expand) -> dict:
        """The budget keys a recipe leaves unset: a writing strategy has nothing to size from but its seeds, so
        a round of 32 prompts and a stop at 64 kept pairs (the settings every committed result was made with)."""
        return {"candidates_per_round": 32, "target_kept": 64}

    @classmethod
    def budget_line(cls, cfg: Expand) -> str:
        return f"up to {cfg.candidates_per_round} prompts a round, stopping at {cfg.target_kept} kept pairs"

    def count(self) -> int:
        return self.r.cfg.candidates_per_round

    def examples(self, idx: int) -> list[dict]:
        return expand.pick_examples(
            self.r.pool, self.r.cfg.few_shot, expand.item_seed(self.r.seed, "fewshot", self.r.number, idx)
        )

    def ask(self, idx: int) -> Ask:
        examples = self.examples(idx)
        text = expand.instruction(self.r.cfg.instruction, examples)
        return Ask(rendered=self.r.render(text), sources=_ids(examples))


@STRATEGIES.register("continue")
class Continue(Fewshot):
    """The generator continues a plain-text list of k examples: no chat template, no request to follow, so an
    instruct model small enough to answer a request instead of following it still writes one more item."""

    def ask(self, idx: int) -> Ask:
        examples = self.examples(idx)
        return Ask(rendered="".join(f"- {ex['text']}\n" for ex in examples) + "-", sources=_ids(examples))


@STRATEGIES.register("sample")
class Sample(Fewshot):
    """The teacher writes a user turn itself from its bare chat template (Magpie, Xu et al. 2025): what it was
    tuned on is what it is likely to ask. Half the items start with nothing; the others with the first one to
    three words of a prompt from the few-shot pool, which holds the sampling to the domain's kinds of question."""

    writer = "teacher"

    def ask(self, idx: int) -> Ask:
        rng = np.random.default_rng(expand.item_seed(self.r.seed, "sample", self.r.number, idx))
        prefix = self.r.user_prefix()
        if idx % 2 == 0:
            return Ask(rendered=prefix, inputs={"opening": ""})
        example = self.r.pool[int(rng.integers(len(self.r.pool)))]
        lead = " ".join(example["text"].split()[: int(rng.integers(1, 4))])
        return Ask(rendered=prefix + lead, lead=lead, sources=(example["id"],), inputs={"opening": lead})


@STRATEGIES.register("entities")
class Entities:
    """Every prompt of the few-shot pool that names a listed entity, asked again about each other entity
    (templates x entities), and each entity asked the open questions of expand.open_forms: from a list of names
    only, without their facts, the pool reaches every entity the user can name, which few-shot writing does not (a
    fine-tuned teacher rarely writes names it only saw asked about). Candidates new to the run are shuffled by the
    run seed; a round takes up to candidates_per_round."""

    writer = None

    def __init__(self, r: Round) -> None:
        self.r = r

    @classmethod
    def check(cls, cfg: Expand, where: str) -> None:
        if len(cfg.entities) < 2:
            raise TskdError(
                f"{where}.entities: the entities strategy needs at least two names "
                "(expand.entities or expand.entities_file, one name per line)"
            )

    @classmethod
    def sized(cls, cfg: Expand) -> dict:
        """Every form x name, no stop short of the round limit: a cap set for a few dozen names asks about a
        fraction of a few hundred (41 of 249 at 48 prompts, seen on a real domain), and the names the pool never
        asks about are knowledge left behind. A recipe that sets either key caps it."""
        return {"candidates_per_round": MAX_CANDIDATES, "target_kept": 2**31 - 1}

    @classmethod
    def budget_line(cls, cfg: Expand) -> str:
        every = "every form x name" if "candidates_per_round" in cfg.sized_keys else None
        per_round = every or f"up to {cfg.candidates_per_round} prompts"
        stop = "" if "target_kept" in cfg.sized_keys else f", stopping at {cfg.target_kept} kept pairs"
        return f"{per_round} a round ({cls.names_note(cfg)}){stop}"

    @classmethod
    def names_note(cls, cfg: Expand) -> str:
        return f"{len(cfg.entities)} names"

    @property
    def names(self) -> tuple[str, ...]:
        return self.r.cfg.entities

    @cached_property
    def candidates(self) -> list[tuple[str, int | None, str]]:
        out: dict[str, tuple[str, int | None, str]] = {}
        names = self.names
        for form in self.r.cfg.open_forms:  # made from no prompt of the pool: source None
            for name in names:
                text = form.replace("{name}", name)
                norm = normalise(text)
                if norm not in self.r.earlier and norm not in out:
                    out[norm] = (text, None, name)
        for prompt in self.r.pool:
            for name in names:
                pattern = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")
                if not pattern.search(prompt["text"]):
                    continue
                for other in names:
                    text = pattern.sub(lambda _, o=other: o, prompt["text"])
                    norm = normalise(text)
                    if other != name and norm not in self.r.earlier and norm not in out:
                        out[norm] = (text, prompt["id"], other)
        found = list(out.values())
        order = np.random.default_rng(expand.item_seed(self.r.seed, "entities", self.r.number)).permutation(len(found))
        return [found[i] for i in order]

    def count(self) -> int:
        return min(self.r.cfg.candidates_per_round, len(self.candidates))

    def ask(self, idx: int) -> Ask:
        text, source, entity = self.candidates[idx]
        if source is None:
            return Ask(prompt=text, inputs={"entity": entity, "form": "open"})
        return Ask(prompt=text, sources=(source,), inputs={"entity": entity})


@STRATEGIES.register("follow")
class Follow(Entities):
    """Entities without a list, or beyond it: the names are found in the pool's prompts and in the teacher's
    answers to them (runs of capitalised words; tskd_lite/contrast.py's reading of a name), so each round asks
    the pool's questions about the people, places and things the last round's answers named. From the seeds
    alone it reaches every entity the seeds name, and, where facts name other entities, the entities those name,
    round by round. Names that are not the kind a form asks about ("Where does <a town> live?") make nonsense
    prompts: pair it with a keep rule that rejects guessing (select.rule = "contrast")."""

    @classmethod
    def check(cls, cfg: Expand, where: str) -> None:
        """A list is optional here: without one the names come from the pool and the answers."""

    @classmethod
    def names_note(cls, cfg: Expand) -> str:
        return "names found in answers" + (f", {len(cfg.entities)} listed" if cfg.entities else "")

    @property
    def names(self) -> tuple[str, ...]:
        found = [n for text in (*(p["text"] for p in self.r.pool), *self.r.answers()) for n in _names(text)]
        return tuple(dict.fromkeys([*self.r.cfg.entities, *found]))


def _names(text: str) -> list[str]:
    """Names in a prompt or an answer. An answer often starts with the name it is about, so a run of capitalised
    words at the start counts too, but not a lone first word: that is mostly a sentence's capital ("The", "Where")."""
    names = [k for k in key_spans("x " + text) if not k.isdigit()]
    if names and text.startswith(names[0]) and " " not in names[0]:
        names = names[1:]
    return names


def _ids(rows: list[dict]) -> tuple[int, ...]:
    return tuple(r["id"] for r in rows)
