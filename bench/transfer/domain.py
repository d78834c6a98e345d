"""One domain: its recipe, its teacher and references, its pools and its arms' trainings, each cached."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import tomllib
from pathlib import Path

from bench.facts import index_for
from tskd_lite import pipeline
from tskd_lite.errors import TskdError
from tskd_lite.evaluate import eval_transformers, evaluate, read_eval_file
from tskd_lite.recipe import Recipe, load_recipe, merged
from tskd_lite.target import Formatter, hf_dir
from tskd_lite.train import make_teacher, read_pairs, teacher_settings, train
from tskd_lite.train.replay import replay_count, replay_prompts

from .arms import REGISTRY
from .cache import Layout, cached
from .settings import Budget, Settings

# evaluation's row names, as the references are keyed
REFERENCES = {"teacher": "teacher", "base": "base", "target before": "target_before", "chance": "chance"}


def log(message: str) -> None:
    print(message, flush=True)


def score_row(row: dict) -> dict:
    return {k: row[k] for k in ("n", "exact_match", "contains", "nll_per_byte")} | {"predictions": row["predictions"]}


class Domain:
    """A folder with train.jsonl (the teacher's private chat pairs), test.jsonl (held out) and seeds.txt (what the
    pipeline sees), an optional recipe.toml (the domain's own settings over the shared recipe), entities.txt (for
    the entities arms) and facts.jsonl (for fact-level measures)."""

    log = staticmethod(log)

    def __init__(self, name: str, folder: Path, recipe_path: Path, work: Path, settings: Settings, progress: bool):
        self.name, self.folder, self.work, self.settings, self.progress = name, folder, work / name, settings, progress
        for f in ("train.jsonl", "test.jsonl", "seeds.txt"):
            if not (folder / f).is_file():
                raise SystemExit(f"{folder}: domain {name} needs {f}")
        self.recipe_path = recipe_path
        own = folder / "recipe.toml"
        try:
            self.own = tomllib.loads(own.read_text()) if own.is_file() else {}
        except tomllib.TOMLDecodeError as e:
            raise SystemExit(f"{own}: not valid TOML: {e}") from None
        self.candidates = settings.candidates  # prompts per round of every pool; sized below where unset
        try:
            self.recipe = self.load({})  # without the teacher's adapter: the base settings every arm starts from
            self.size = len(read_pairs(folder / "train.jsonl"))
        except TskdError as e:
            raise SystemExit(f"domain {name} ({folder}): {e}") from None
        self.pairs = settings.pairs or self.size
        if self.candidates is None:  # as many prompts over a pool's rounds as there are pairs to train on
            self.candidates = max(self.recipe.expand.candidates_per_round, -(-self.pairs // self.recipe.expand.rounds))
            self.recipe = self.load({})
        self.layout = Layout(self.work, settings, self.candidates)
        self.items = read_eval_file(folder / "test.jsonl", "test.jsonl")[: settings.eval_limit or None]

    def load(self, overrides: dict) -> Recipe:
        domain = {
            "seeds": {"prompts": [], "file": str(self.folder / "seeds.txt")},
            "eval": {"file": str(self.folder / "test.jsonl"), "limit": self.settings.eval_limit},
        }
        layers = [domain, self.own, overrides]
        if self.settings.quick:
            layers.insert(1, {"expand": {"rounds": self.settings.rounds, "candidates_per_round": self.candidates}})
        elif self.candidates:
            layers.insert(1, {"expand": {"candidates_per_round": self.candidates}})
        combined: dict = {}
        for layer in layers:
            combined = merged(combined, layer)
        return load_recipe(self.recipe_path, combined)

    # -- the teacher and the references --------------------------------------------------------------------

    def teacher(self) -> Path:
        """Fine-tuned by epochs on train.jsonl, stopped when a held-out tenth of it (never the test file) stops
        improving: a fixed step count leaves a large domain's teacher half-trained."""
        adapter = self.layout.teacher_adapter
        if not adapter.is_file():
            log(f"[{self.name}] fine-tuning the teacher on {self.folder / 'train.jsonl'}")
            # make-teacher's settings, but for the sequence length (128, not 256) and a held-out tenth always:
            # what the cached teachers under --work were trained with
            cfg = teacher_settings(
                learning_rate=self.settings.teacher_lr,
                epochs=self.settings.teacher_epochs,
                patience=self.settings.teacher_patience,
                max_seq_len=128,
                val_fraction=0.1,
            )
            result = make_teacher(
                self.folder / "train.jsonl", self.recipe.teacher.model, adapter.parent, cfg, progress=self.progress
            )
            log(f"[{self.name}] teacher: {result.steps} steps, kept step {result.best_step}")
        return adapter

    def teacher_training(self) -> dict:
        info = json.loads((self.teacher().parent / "train.json").read_text())
        epochs = [p for p in info["curve"] if p.get("val_loss") is not None]
        return {
            "steps": info["steps"],
            "best_step": info.get("best_step"),
            "epochs_run": epochs[-1]["epoch"] if epochs else None,
            "held_out_loss": [p["val_loss"] for p in epochs],
            "train_s": info["seconds"],
        }

    def with_teacher(self, overrides: dict) -> Recipe:
        return self.load({"teacher": {"lora": str(self.teacher())}, **overrides})

    def references(self) -> dict:
        """Teacher, base and the untouched target on the held-out items, and the chance row: evaluation's own
        rows (tskd_lite.evaluate.evaluate), its eval.json written to a scratch folder (this cache keeps them)."""

        def compute() -> dict:
            with tempfile.TemporaryDirectory(prefix="transfer-references-") as scratch:
                # the domain's test items as Domain.items holds them, whatever the domain's recipe.toml says
                items = {"file": str(self.folder / "test.jsonl"), "limit": self.settings.eval_limit}
                recipe = self.with_teacher({"eval": items, "output": {"dir": scratch}})
                rows = evaluate(recipe, train_dir=None, progress=self.progress, log=log)["rows"]
            return {REFERENCES[row["name"]]: score_row(row) for row in rows}

        return cached(self.layout.references, compute)

    def target_dir(self) -> Path:
        return hf_dir(self.recipe.target, log)

    def formatter(self, tokenizer) -> Formatter:
        return Formatter.for_target(tokenizer, self.recipe.target)

    # -- pools and arms ---------------------------------------------------------------------------------------

    def pool(self, name: str, seed: int) -> Recipe:
        """The pool the arm `name` grows (arms.py: its overrides), grown for this seed unless it is."""
        db = self.layout.pool_db(name, seed)
        overrides = REGISTRY[name].overrides(self)
        output = {"db": str(db), "export": str(db.with_suffix(".jsonl"))}
        recipe = self.with_teacher({"seed": seed, "output": output, **overrides})
        return self.grown(recipe, name, seed)

    def grown(self, recipe: Recipe, name: str, seed: int) -> Recipe:
        if not (recipe.output.run_dir / "run.json").is_file():
            log(f"[{self.name} seed {seed}] growing the {name} pool")
            pipeline.run(recipe, progress=self.progress, log=log)
        return recipe

    def arm_pairs(self, arm: str, seed: int, n: int) -> list:
        return REGISTRY[arm].pairs(self, seed, n)

    def arm(self, arm: str, seed: int, budget: Budget) -> dict:
        """The target trained on the arm's pairs and scored on the held-out items (cached)."""
        pairs = self.arm_pairs(arm, seed, budget.pairs)
        cfg = self.train_settings(arm)
        replayed = replay_count(cfg, len(pairs), len(replay_prompts(cfg))) if pairs else 0
        budget = self.resolved(dataclasses.replace(budget, replay=replayed), len(pairs))
        return cached(self.layout.result(arm, seed, budget), lambda: self._train(arm, seed, budget, pairs))

    def train_settings(self, arm: str):
        """The recipe's [train] with the arm's keys laid over it (arms.py: replay only where the arm says so)."""
        return dataclasses.replace(self.recipe.train, **REGISTRY[arm].train)

    def resolved(self, budget: Budget, n: int) -> Budget:
        """The budget with its steps: the fixed ones, else the domain's (Settings.epochs over its pairs) capped at
        Settings.max_passes over the n pairs the arm drew, so that a one-phrasing pool gets the exposures the
        teacher's data gets and an arm of five pairs is not trained as long as one of hundreds (which erased what
        the target knew); without max_passes, Settings.epochs over the n pairs. Replayed answers ride beside, as
        the product's epochs count them: the steps grow by (n + replayed) / n, so the arm's own pairs get the
        exposures they get without replay."""
        if budget.steps is not None or budget.patience:
            return budget
        per_step = self.recipe.train.batch_size * self.recipe.train.grad_accum
        examples = self.settings.epochs * n
        if self.settings.max_passes:  # the domain's budget, capped by passes over the arm's own pairs
            examples = min(self.settings.epochs * budget.pairs, self.settings.max_passes * n)
        if n:
            examples *= (n + budget.replay) / n
        return dataclasses.replace(budget, steps=max(1, math.ceil(examples / per_step)))

    def _train(self, arm: str, seed: int, budget: Budget, pairs: list) -> dict:
        if not pairs:  # a pool that kept nothing leaves the target as it was
            log(f"[{self.name} seed {seed}] {arm}: no pairs to train on; the target stays untouched")
            untouched = {k: v for k, v in self.references()["target_before"].items() if k != "compute_s"}
            return untouched | {"pairs": 0, "steps": 0, "train_s": 0.0, "answer_tokens": 0}
        out = self.layout.train_dir(arm, seed, budget)
        if budget.patience:  # up to budget.epochs, stopped on a held-out tenth of the arm's own pairs
            length = {"epochs": math.ceil(budget.epochs), "max_steps": 0, "val_fraction": 0.1}
        else:
            length = {"max_steps": budget.steps, "val_fraction": 0.0}
        cfg = dataclasses.replace(
            self.train_settings(arm),
            **length,
            patience=budget.patience,
            rank=budget.rank,
            alpha=2.0 * budget.rank,
            learning_rate=budget.lr,
            seed=seed,
        )
        target = dataclasses.replace(self.recipe.target, model=self.target_dir())
        log(f"[{self.name} seed {seed}] training the target on {arm}: {len(pairs)} pairs, {budget}")
        result = train(target, cfg, out, pairs, progress=self.progress, log=log)
        row = eval_transformers(
            f"{arm} s{seed}",
            out / "merged",
            self.formatter,
            self.items,
            self.recipe.eval.max_answer_tokens,
            self.progress,
        )
        shutil.rmtree(out / "merged")  # a full copy of the target per arm; the adapter stays
        return score_row(row) | {
            "pairs": len(pairs),
            "steps": result.steps,
            "best_step": result.best_step,  # the step whose weights were kept, where held-out loss chose one
            "replayed": result.n_replay,
            "train_s": result.seconds,
            "answer_tokens": result.answer_tokens,
        }

    def facts(self):
        return index_for(self.folder, self.items)

    def entities(self) -> Path | None:
        path = self.folder / "entities.txt"
        return path if path.is_file() else None

    def applicable(self, arms: list[str]) -> list[str]:
        """The arms this domain can run: the entities arms need the domain's list of names."""
        skipped = [a for a in arms if REGISTRY[a].needs_entities and self.entities() is None]
        if skipped:
            log(f"[{self.name}] no entities.txt: no {', '.join(skipped)} arm")
        return [a for a in arms if a not in skipped]
