"""Transfer benchmark: does the teacher's knowledge move into the target, and how much does selection matter?

A domain is a folder with train.jsonl (chat pairs: the teacher's private data), test.jsonl ({"prompt", "answer"},
held out) and seeds.txt (what the pipeline sees), plus an optional recipe.toml: the domain's own settings (how
new prompts are written, say) laid over the shared recipe, its relative paths resolved like the shared recipe's.
For each domain the script fine-tunes the teacher on train.jsonl (make-teacher, cached), evaluates the references
(teacher, base, target untouched, and a chance baseline), then for every seed grows three pools with the recipe
(full TuneShift-KD, no selection, one round of selection) and trains the target, for the same number of steps on
the same number of pairs, on each arm:

  seeds_only    the teacher's answers to the seed prompts
  no_selection  every generated pair, the pool grown from all of them (tau ~ 0)
  one_round     one round of rounds x candidates_per_round prompts, selected once
  full          iterative perplexity-gap selection (the recipe as written)
  token_level   the full pool's pairs, loss on the top tokens by teacher-over-base lift only
  oracle        the teacher's own training data (the ceiling a real user no longer has)
  full_aug      the full pool grown with paraphrase augmentation (expand.paraphrases = --paraphrases)
  entities      the pool grown by templates x entities (expand.strategy = "entities") from the domain's
                entities.txt (names only, no facts); a domain without that file has no such arm
  sample        the pool grown by the teacher writing its own user turns (expand.strategy = "sample", Magpie)
  full_contrast the full pool's recipe with the contrast keep rule (select.rule = "contrast")
  entities_contrast  the entities pool's recipe with the contrast keep rule
  follow_contrast    the pool grown by following names (expand.strategy = "follow": the seeds' and the answers'
                names, no list) with the contrast keep rule
  oracle_aug    the oracle's pairs plus the teacher's answers to paraphrases of their prompts, written and selected
                the way full_aug's are (a pool whose seeds are the oracle's prompts, no expansion rounds)

The teacher is trained by epochs and stopped on a held-out split of its own training data (never the test file);
its advantage over the floor on the test file is reported, with a warning when it is too small to measure.

The headline is the chance-adjusted recovered fraction (tskd_lite.evaluate.recovered): (arm - floor) /
(teacher - floor) on contains, floor = max(chance row, target before), per seed, then mean +- sd. A domain that
ships facts.jsonl also gets fact-level measures (bench/facts.py) of every arm's training pairs and every pool's
rounds: coverage of the held-out facts, precision, and the rate of confident wrong answers.

--curve is the learning-curve mode: the oracle arm over a grid of pairs x steps (x LoRA rank x learning rate),
on every domain, written to bench/transfer-curve.md/.json with the smallest budget at which the oracle recovers
at least --aim of the teacher's advantage on every domain: the budget the arms are then trained with (--pairs,
--steps).

Results (mean +- sd over seeds, per-round pool statistics and the wall time) go to --results .md and .json. Every
step is cached under --work, keyed by the settings it depends on (the teacher's included), so an interrupted run
resumes and a run with other training settings reuses the teacher and the pools.

    python bench/transfer.py --domain world=data/world --domain dates=data/dates
    python bench/transfer.py --curve --domain world=data/world --domain dates=data/dates
    python bench/transfer.py --quick ...     one seed, small settings, minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.facts import index_for, measures  # noqa: E402
from tskd_lite import pipeline  # noqa: E402
from tskd_lite.dedup import normalise  # noqa: E402
from tskd_lite.errors import TskdError  # noqa: E402
from tskd_lite.evaluate import chance_row, eval_llama, eval_transformers, read_eval_file, recovered  # noqa: E402
from tskd_lite.recipe import Recipe, Train, load_recipe, merged  # noqa: E402
from tskd_lite.report import summary  # noqa: E402
from tskd_lite.store import Store  # noqa: E402
from tskd_lite.target import Formatter, hf_dir, quiet_transformers  # noqa: E402
from tskd_lite.train import make_teacher, read_pairs, train  # noqa: E402

ARMS = (
    "seeds_only",
    "no_selection",
    "one_round",
    "full",
    "token_level",
    "oracle",
    "full_aug",
    "oracle_aug",
    "entities",
    "sample",
    "full_contrast",
    "entities_contrast",
    "follow_contrast",
)
# What `just transfer-bench` runs on the world: the paper's configuration (full), its controls, the ceiling, and the
# strategies and rules this toolkit adds; sample, full_contrast, one_round, token_level and the paraphrase arms on
# request (--arms).
DEFAULT_ARMS = (
    "seeds_only",
    "no_selection",
    "full",
    "oracle",
    "entities",
    "entities_contrast",
    "follow_contrast",
)
POOLS = (
    "full",
    "no_selection",
    "one_round",
    "full_aug",
    "entities",
    "sample",
    "full_contrast",
    "entities_contrast",
    "follow_contrast",
)
POOL_OF = {"seeds_only": "full", "token_level": "full"}  # arms that train on another arm's pool
TOKEN_TOP_FRACTION = 0.5
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
class Budget:
    """What one arm's training gets: pairs drawn, optimiser steps, LoRA rank and learning rate."""

    pairs: int
    steps: int
    rank: int
    lr: float

    @property
    def key(self) -> str:
        return f"p{self.pairs}-s{self.steps}-r{self.rank}-lr{self.lr:g}"


def log(message: str) -> None:
    print(message, flush=True)


def pool_overrides(pool: str, recipe: Recipe, paraphrases: int, folder: Path) -> dict:
    """The recipe changes that make each pool; every pool generates the same number of prompts (entities: at
    most that many, as many as there are new names to ask about)."""
    budget = {"target_kept": 1 << 30}  # run every round, whatever is kept, so the arms generate alike
    if pool == "full":
        return {"expand": budget}
    if pool.endswith("_contrast"):
        return pool_overrides(pool.removesuffix("_contrast"), recipe, paraphrases, folder) | {
            "select": {"rule": "contrast"}
        }
    if pool == "entities":
        return {"expand": {**budget, "strategy": "entities", "entities_file": str(folder / "entities.txt")}}
    if pool in ("sample", "follow"):
        return {"expand": {**budget, "strategy": pool}}
    if pool == "full_aug":
        return {"expand": {**budget, "paraphrases": paraphrases}}
    if pool == "no_selection":
        return {"expand": budget, "select": {"rule": "ppl_ratio", "tau": 1e-9, "top_fraction": 1.0}}
    if pool == "one_round":
        total = recipe.expand.rounds * recipe.expand.candidates_per_round
        return {"expand": {**budget, "rounds": 1, "candidates_per_round": total}}
    raise ValueError(pool)


def sample(pairs: list, n: int, seed: int) -> list:
    if len(pairs) <= n:
        return list(pairs)
    return [pairs[i] for i in sorted(random.Random(seed).sample(range(len(pairs)), n))]


def cached(path: Path, compute):
    """compute()'s dict, stored at path with the seconds it took (compute_s), or the stored one."""
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    value = compute() | {"compute_s": time.perf_counter() - t0}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)
    return value


def score_row(row: dict) -> dict:
    return {k: row[k] for k in ("n", "exact_match", "contains", "nll_per_byte")} | {"predictions": row["predictions"]}


class Domain:
    def __init__(self, name: str, folder: Path, recipe_path: Path, work: Path, settings: dict, progress: bool) -> None:
        self.name, self.folder, self.work, self.s, self.progress = name, folder, work / name, settings, progress
        for f in ("train.jsonl", "test.jsonl", "seeds.txt"):
            if not (folder / f).is_file():
                raise SystemExit(f"{folder}: domain {name} needs {f}")
        self.recipe_path = recipe_path
        own = folder / "recipe.toml"
        try:
            self.own = tomllib.loads(own.read_text()) if own.is_file() else {}
        except tomllib.TOMLDecodeError as e:
            raise SystemExit(f"{own}: not valid TOML: {e}") from None
        try:
            self.recipe = self.load({})  # without the teacher's adapter: the base settings every arm starts from
        except TskdError as e:
            raise SystemExit(f"domain {name} ({folder}): {e}") from None
        self.items = read_eval_file(folder / "test.jsonl", "test.jsonl")[: settings["eval_limit"] or None]

    def load(self, overrides: dict) -> Recipe:
        domain = {
            "seeds": {"prompts": [], "file": str(self.folder / "seeds.txt")},
            "eval": {"file": str(self.folder / "test.jsonl"), "limit": self.s["eval_limit"]},
        }
        layers = [domain, self.own, overrides]
        if self.s["quick"]:
            layers.insert(1, {"expand": {"rounds": self.s["rounds"], "candidates_per_round": self.s["candidates"]}})
        elif self.s.get("candidates"):
            layers.insert(1, {"expand": {"candidates_per_round": self.s["candidates"]}})
        combined: dict = {}
        for layer in layers:
            combined = merged(combined, layer)
        return load_recipe(self.recipe_path, combined)

    # -- the teacher and the references --------------------------------------------------------------------

    @property
    def teacher_key(self) -> str:
        return f"teacher-e{self.s['teacher_epochs']}-p{self.s['teacher_patience']}-lr{self.s['teacher_lr']:g}"

    @property
    def variant(self) -> str:
        """Pools grown with another prompt budget (--candidates) are cached apart from the default ones."""
        return f"-c{self.s['candidates']}" if self.s.get("candidates") else ""

    @property
    def root(self) -> Path:
        """Everything that depends on the teacher: references, pools, arms."""
        return self.work / self.teacher_key

    def teacher(self) -> Path:
        """Fine-tuned by epochs on train.jsonl, stopped when a held-out tenth of it (never the test file) stops
        improving: a fixed step count leaves a large domain's teacher half-trained."""
        adapter = self.work / self.teacher_key / "teacher" / "adapter.gguf"
        if not adapter.is_file():
            log(f"[{self.name}] fine-tuning the teacher on {self.folder / 'train.jsonl'}")
            cfg = Train(
                rank=16,
                alpha=32.0,
                dropout=0.0,
                learning_rate=self.s["teacher_lr"],
                epochs=self.s["teacher_epochs"],
                patience=self.s["teacher_patience"],
                batch_size=8,
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
        def compute() -> dict:
            from tskd_lite.engine import Engine

            recipe = self.with_teacher({})
            cfg = recipe.eval
            teacher = Engine(recipe.teacher, role="teacher", threads=recipe.threads, parallel=recipe.parallel)
            rows = {
                "teacher": eval_llama("teacher", teacher, teacher, self.items, cfg.max_answer_tokens, self.progress)
            }
            base = Engine(recipe.base, role="base", threads=recipe.threads, parallel=recipe.parallel)
            rows["base"] = eval_llama("base", base, teacher, self.items, cfg.max_answer_tokens, self.progress)
            teacher.close()
            base.close()
            rows["target_before"] = eval_transformers(
                "target before", self.target_dir(), self.formatter, self.items, cfg.max_answer_tokens, self.progress
            )
            out = {name: score_row(row) for name, row in rows.items()}
            out["chance"] = score_row(chance_row(self.items))
            return out

        return cached(self.root / f"references-n{self.s['eval_limit']}.json", compute)

    def target_dir(self) -> Path:
        return hf_dir(self.recipe.target, log)

    def formatter(self, tokenizer) -> Formatter:
        return Formatter.for_target(tokenizer, self.recipe.target)

    # -- pools and arms ---------------------------------------------------------------------------------------

    def pool(self, name: str, seed: int) -> Recipe:
        base = self.recipe
        db = self.root / f"seed{seed}" / (name + self.variant) / "pool.db"
        overrides = pool_overrides(name, base, self.s["paraphrases"], self.folder)
        output = {"db": str(db), "export": str(db.with_suffix(".jsonl"))}
        recipe = self.with_teacher({"seed": seed, "output": output, **overrides})
        return self._grown(recipe, name, seed)

    def oracle_pool(self, seed: int, n: int) -> Recipe:
        """Paraphrases of the oracle sample's prompts, answered and selected as full_aug's are."""
        folder = self.root / f"seed{seed}" / f"oracle_aug-p{n}"
        seeds = folder / "seeds.txt"
        if not seeds.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            prompts = [p for p, _, _ in sample(read_pairs(self.folder / "train.jsonl"), n, seed)]
            seeds.write_text("".join(" ".join(p.split()) + "\n" for p in prompts))
        overrides = {
            "seed": seed,
            "output": {"db": str(folder / "pool.db"), "export": str(folder / "pool.jsonl")},
            "seeds": {"file": str(seeds)},
            "expand": {"rounds": 0, "target_kept": 1 << 30, "paraphrases": self.s["paraphrases"]},
        }
        return self._grown(self.with_teacher(overrides), "oracle_aug", seed)

    def _grown(self, recipe: Recipe, name: str, seed: int) -> Recipe:
        if not (recipe.output.run_dir / "run.json").is_file():
            log(f"[{self.name} seed {seed}] growing the {name} pool")
            pipeline.run(recipe, progress=self.progress, log=log)
        return recipe

    def arm_pairs(self, arm: str, seed: int, n: int) -> list:
        if arm == "oracle":
            return sample(read_pairs(self.folder / "train.jsonl"), n, seed)
        if arm == "oracle_aug":
            store = Store.read(self.oracle_pool(seed, n).output.db)
            try:
                rows = store.kept_pairs(store.get_run(None).id)
            finally:
                store.close()
            paraphrased = [(r["prompt"], r["answer"], None) for r in rows if r["source"] == "paraphrase"]
            return self.arm_pairs("oracle", seed, n) + paraphrased
        pool = POOL_OF.get(arm, arm)
        recipe = self.pool(pool, seed)
        if arm == "seeds_only":
            store = Store.read(recipe.output.db)
            try:
                return [(p, a, None) for p, a in store.answered_pairs(store.get_run(None).id, 0)]
            finally:
                store.close()
        if arm == "token_level":
            token = dataclasses.replace(
                recipe, train=dataclasses.replace(recipe.train, token_top_fraction=TOKEN_TOP_FRACTION)
            )
            return sample(pipeline.token_selected_pairs(token, log), n, seed)
        export = recipe.output.export_path
        if not export.read_text(encoding="utf-8").strip():  # the pool kept nothing
            return []
        return sample(read_pairs(export), n, seed)

    def arm(self, arm: str, seed: int, budget: Budget) -> dict:
        def compute() -> dict:
            pairs = self.arm_pairs(arm, seed, budget.pairs)
            if not pairs:  # a pool that kept nothing leaves the target as it was
                log(f"[{self.name} seed {seed}] {arm}: no pairs to train on; the target stays untouched")
                untouched = {k: v for k, v in self.references()["target_before"].items() if k != "compute_s"}
                return untouched | {"pairs": 0, "steps": 0, "train_s": 0.0, "answer_tokens": 0}
            out = self.root / f"seed{seed}" / (arm + self.variant) / f"train-{budget.key}"
            cfg = dataclasses.replace(
                self.recipe.train,
                max_steps=budget.steps,
                rank=budget.rank,
                alpha=2.0 * budget.rank,
                learning_rate=budget.lr,
                val_fraction=0.0,
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
                "train_s": result.seconds,
                "answer_tokens": result.answer_tokens,
            }

        key = f"{budget.key}-n{self.s['eval_limit']}"
        return cached(self.root / f"seed{seed}" / (arm + self.variant) / f"result-{key}.json", compute)

    def facts(self):
        return index_for(self.folder, self.items)

    def entities(self) -> Path | None:
        path = self.folder / "entities.txt"
        return path if path.is_file() else None

    def applicable(self, arms: list[str]) -> list[str]:
        """The arms this domain can run: entities needs the domain's list of names."""
        skipped = [a for a in arms if a.startswith("entities") and self.entities() is None]
        if skipped:
            log(f"[{self.name}] no entities.txt: no {', '.join(skipped)} arm")
        return [a for a in arms if a not in skipped]

    def reachable(self, pools: list[str], seeds: list[int]) -> dict | None:
        """The reachable ceiling: the share of held-out facts whose entity the seeds name, the entity list names,
        or some prompt or answer of each pool (mean over seeds) names: no pool can cover more than that."""
        index = self.facts()
        if index is None:
            return None

        def share(texts: list[str]) -> float:
            named = {e for t in texts for e in index.entities(t)}
            return sum(f.entity in named for f in index.asked) / len(index.asked)

        out = {"seeds": share(list(self.recipe.seeds.prompts))}
        if self.entities() is not None:
            out["entity list"] = share(self.entities().read_text().splitlines())
        for name in pools:
            per_seed = []
            for seed in seeds:
                store = Store.read(self.pool(name, seed).output.db)
                try:
                    run = store.get_run(None)
                    prompts = store.prompts(run.id)
                    texts = [p["text"] for p in prompts]
                    texts += [a for r in {p["round"] for p in prompts} for _, a in store.answered_pairs(run.id, r)]
                finally:
                    store.close()
                per_seed.append(share(texts))
            out[f"{name} pool"] = float(np.mean(per_seed))
        return out

    def arm_facts(self, arm: str, seed: int, n: int) -> dict | None:
        """Fact-level measures of the pairs the arm trains on."""
        index = self.facts()
        if index is None:
            return None
        return measures([(p, a) for p, a, _ in self.arm_pairs(arm, seed, n)], index)

    def pool_stats(self, seed: int, pools: list[str]) -> dict:
        stats = {}
        index = self.facts()
        for name in pools:
            recipe = self.pool(name, seed)
            store = Store.read(recipe.output.db)
            try:
                run = store.get_run(None)
                s = summary(store, run.id)
                rounds = []
                for r in s["rounds"]:
                    texts = [p["text"] for p in store.prompts(run.id, where="round = ?", params=[r["round"]])]
                    rounds.append(
                        {
                            "round": r["round"],
                            "candidates": r["candidates"],
                            "paraphrases": r["paraphrases"],
                            "near_duplicate_rate": r["duplicates"] / max(r["candidates"], 1),
                            "kept_fraction": (r["kept"] or 0) / max(r["scored"], 1),
                            "gap": r["gap"],
                            "distinct_2": distinct_2(texts),
                        }
                    )
                kept = store.kept_pairs(run.id)
                if index is not None:
                    # the kept pairs up to and including each round: how coverage grows round by round
                    for r in rounds:
                        upto = [(k["prompt"], k["answer"]) for k in kept if k["round"] <= r["round"]]
                        r["facts"] = measures(upto, index)
                stats[name] = {"rounds": rounds, "kept": s["kept"], "elapsed_s": s["elapsed_s"]}
            finally:
                store.close()
        return stats


def distinct_2(texts: list[str]) -> float | None:
    """Distinct word bigrams over all bigrams of the texts: 1.0 when no bigram repeats."""
    bigrams = [tuple(w[i : i + 2]) for w in (normalise(t).split() for t in texts) for i in range(len(w) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else None


# -- aggregation ------------------------------------------------------------------------------------------------


def mean_sd(values: list[float]) -> dict:
    a = np.array(values, dtype=float)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "values": values}


def too_small(advantage: float, n: int) -> bool:
    """An advantage within two standard errors of a proportion at p = 0.5 on n items cannot be told from noise."""
    return advantage < 2 * 0.5 / np.sqrt(n)


def floor_of(refs: dict) -> float:
    return max(refs["chance"]["contains"], refs["target_before"]["contains"])


def recovered_per_seed(results: list[dict], refs: dict) -> dict | None:
    """The headline: the chance-adjusted share of the teacher's advantage, per seed, then mean +- sd."""
    chance, before, teacher = (refs[k]["contains"] for k in ("chance", "target_before", "teacher"))
    values = [recovered(r["contains"], teacher, chance, before) for r in results]
    return None if None in values else mean_sd(values)


def nll_recovered(nll: float, refs: dict) -> float | None:
    """(target before - after) / (base - teacher) on the reference NLL, lower being better."""
    before, teacher, base = (refs[k]["nll_per_byte"] for k in ("target_before", "teacher", "base"))
    return (before - nll) / (base - teacher) if base != teacher else None


def mean_facts(per_seed: list[dict | None]) -> dict | None:
    if not per_seed or per_seed[0] is None:
        return None
    keys = ("coverage", "precision", "wrong_rate", "facts_stated")
    values = {k: [m[k] for m in per_seed if m[k] is not None] for k in keys}
    return {k: float(np.mean(v)) if v else None for k, v in values.items()}  # None, not NaN: NaN != NaN


def aggregate(
    name: str,
    refs: dict,
    arms: dict[str, list[dict]],
    facts: dict[str, list[dict | None]],
    pools: list[dict],
    teacher: dict,
    seconds: float,
) -> dict:
    table = {}
    for arm, results in arms.items():
        nll = mean_sd([r["nll_per_byte"] for r in results])
        table[arm] = {
            "contains": mean_sd([r["contains"] for r in results]),
            "recovered": recovered_per_seed(results, refs),
            "nll_per_byte": nll,
            "recovered_nll": nll_recovered(nll["mean"], refs),
            "pairs": [r["pairs"] for r in results],
            "steps": results[0]["steps"],
            "answer_tokens": float(np.mean([r["answer_tokens"] for r in results])),
            "train_s": float(np.mean([r["train_s"] for r in results])),
            "compute_s": float(np.mean([r.get("compute_s", r["train_s"]) for r in results])),
            "facts": mean_facts(facts.get(arm, [])),
        }
    versus = None
    if {"full", "no_selection"} <= set(arms):
        # Paired by seed; NLL is negated so that a positive difference means full is better on both measures.
        versus = {
            key: mean_sd([sign * (f[key] - n[key]) for f, n in zip(arms["full"], arms["no_selection"], strict=True)])
            for key, sign in (("contains", 1), ("nll_per_byte", -1))
        }
    separated = None
    if {"oracle", "seeds_only"} <= set(arms) and len(arms["oracle"]) > 1:
        o, z = table["oracle"]["contains"], table["seeds_only"]["contains"]
        separated = o["mean"] - 2 * o["sd"] > z["mean"] + 2 * z["sd"]
    advantage = refs["teacher"]["contains"] - floor_of(refs)
    steps = [refs, *(r for results in arms.values() for r in results)]
    compute_s = sum(r.get("compute_s", r.get("train_s", 0.0)) for r in steps)
    compute_s += sum(pool["elapsed_s"] for by_pool in pools for pool in by_pool.values())
    return {
        "domain": name,
        "references": refs,
        "teacher": teacher,
        "floor": floor_of(refs),
        "advantage": advantage,
        "advantage_too_small": bool(too_small(advantage, refs["teacher"]["n"])),
        "arms": table,
        "full_vs_no_selection": versus,
        "oracle_separates_from_seeds_only": separated,
        "pools": pools,
        "compute_s": compute_s,
        "compute_s_complete": all("compute_s" in r for r in steps),
        "wall_s": seconds,
    }


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v:.0%}"


def _mean_sd_pct(v: dict | None) -> str:
    return "-" if v is None else f"{v['mean']:.0%} ± {v['sd']:.0%}"


def teacher_lines(d: dict) -> list[str]:
    t, r = d["teacher"], d["references"]
    lines = [
        f"Teacher: trained {t['steps']} steps ({t['epochs_run']:.1f} epochs), stopped on a held-out tenth of its "
        f"training data, kept step {t['best_step']}; held-out loss per epoch "
        f"{', '.join(f'{v:.3f}' for v in t['held_out_loss'])}.",
        f"Advantage on the test file: teacher {r['teacher']['contains']:.3f} - floor {d['floor']:.3f} "
        f"(max of chance {r['chance']['contains']:.3f} and target before {r['target_before']['contains']:.3f}) "
        f"= {d['advantage']:+.3f}.",
    ]
    if d["advantage_too_small"]:
        lines.append(
            f"**Warning: an advantage under {2 * 0.5 / np.sqrt(r['teacher']['n']):.3f} on {r['teacher']['n']} "
            "items is within two standard errors of noise: recovered fractions on this domain measure little.**"
        )
    return lines


def markdown(results: dict) -> str:
    st = results["settings"]
    lines = [
        "# Transfer benchmark",
        "",
        f"`{results['command']}`: seeds {st['seeds']}; every arm trains {st['steps']} steps on up to {st['pairs']} "
        f"pairs (LoRA rank {st['rank']}, learning rate {st['lr']:g}); this invocation's wall time "
        f"{results['wall_s'] / 60:.1f} min (steps already cached are read, not recomputed).",
        "",
        "**Recovered** (the headline): (arm - floor) / (teacher - floor) on contains, floor = max(chance row, target "
        "before), per seed, mean ± sd. Contains: the reference answer inside the model's answer, on held-out items. "
        "Recovered (NLL): (target before - arm) / (base - teacher) on the reference NLL. Coverage, precision and "
        "wrong rate: fact-level measures of the pairs the arm trains on (bench/facts.py), where the domain ships "
        "facts.jsonl. Train min: CPU minutes of the arm's training; compute min: training plus evaluation.",
    ]
    for d in results["domains"]:
        r = d["references"]
        lines += ["", f"## {d['domain']} ({r['teacher']['n']} held-out items)", "", *teacher_lines(d), ""]
        if d.get("reachable"):
            lines += [
                "Reachable ceiling (share of the held-out facts whose entity is named by): "
                + ", ".join(f"{k} {v:.0%}" for k, v in d["reachable"].items())
                + ".",
                "",
            ]
        lines += [
            f"Compute behind these results: {'' if d['compute_s_complete'] else 'at least '}"
            f"{d['compute_s'] / 60:.1f} min (teacher references, pools, training and evaluation, each timed when "
            "it was computed).",
            "",
            "| model | contains | recovered | NLL nats/byte | recovered (NLL) | pairs | answer tokens | train min "
            "| compute min | coverage | precision | wrong rate |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in ("teacher", "base", "target_before"):
            lines.append(f"| {name} | {r[name]['contains']:.3f} | | {r[name]['nll_per_byte']:.3f} | | | | | | | | |")
        lines.append(
            f"| chance (the most similar other question's answer) | {r['chance']['contains']:.3f} |" + " |" * 10
        )
        for arm, a in d["arms"].items():
            f = a["facts"] or {}
            lines.append(
                f"| target: {arm} | {a['contains']['mean']:.3f} ± {a['contains']['sd']:.3f} | "
                f"{_mean_sd_pct(a['recovered'])} | {a['nll_per_byte']['mean']:.3f} ± {a['nll_per_byte']['sd']:.3f} | "
                f"{_pct(a['recovered_nll'])} | {'/'.join(map(str, a['pairs']))} | {a['answer_tokens']:.0f} | "
                f"{a['train_s'] / 60:.1f} | {a['compute_s'] / 60:.1f} | {_pct(f.get('coverage'))} | "
                f"{_pct(f.get('precision'))} | {_pct(f.get('wrong_rate'))} |"
            )
        lines.append("")
        if d["oracle_separates_from_seeds_only"] is not None:
            lines.append(
                "Oracle and seeds_only, mean ± 2 sd of contains: "
                f"{'separate' if d['oracle_separates_from_seeds_only'] else 'overlap'}.  "
            )
        if d["full_vs_no_selection"]:
            for key, what in (("contains", "contains"), ("nll_per_byte", "NLL nats/byte, lower is better")):
                v = d["full_vs_no_selection"][key]
                if len(v["values"]) < 2:
                    verdict = "one seed: no spread to compare with"
                else:
                    verdict = f"{'more' if v['mean'] > 2 * v['sd'] else 'not more'} than two standard deviations"
                lines.append(
                    f"Full over no selection, {what}: {v['mean']:+.3f} ± {v['sd']:.3f} (paired by seed); {verdict}.  "
                )
        has_facts = any("facts" in x for p in d["pools"] for pool in p.values() for x in pool["rounds"])
        lines += [
            "",
            "Pools per round (mean over seeds): kept fraction, median gap, near-duplicate rate, distinct word bigrams"
            + ("; coverage and precision of the pairs kept up to that round" if has_facts else "")
            + ".",
            "",
            "| pool | round | candidates | kept fraction | median gap | near-duplicates | distinct-2 | coverage "
            "| precision | wrong rate |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for pool in d["pools"][0]:
            per_seed = [p[pool]["rounds"] for p in d["pools"]]
            for i, first in enumerate(per_seed[0]):
                rows = [rounds[i] for rounds in per_seed if i < len(rounds)]
                med = [x["gap"]["median"] for x in rows if x["gap"]]
                dist = [x["distinct_2"] for x in rows if x["distinct_2"] is not None]
                facts = mean_facts([x.get("facts") for x in rows]) or {}
                lines.append(
                    f"| {pool} | {first['round']} | {np.mean([x['candidates'] for x in rows]):.0f} | "
                    f"{np.mean([x['kept_fraction'] for x in rows]):.2f} | "
                    f"{np.mean(med) if med else float('nan'):.3f} | "
                    f"{np.mean([x['near_duplicate_rate'] for x in rows]):.2f} | "
                    f"{np.mean(dist) if dist else float('nan'):.2f} | {_pct(facts.get('coverage'))} | "
                    f"{_pct(facts.get('precision'))} | {_pct(facts.get('wrong_rate'))} |"
                )
    return "\n".join(lines) + "\n"


# -- the learning curve ------------------------------------------------------------------------------------------


def choose_budget(curves: list[dict], aim: float) -> dict:
    """The smallest budget (fewest steps, then fewest pairs, rank, learning rate) at which the oracle's mean
    recovered fraction reaches the aim on every domain; failing that, the one with the best worst domain."""
    worst: dict[str, float] = {}
    settings: dict[str, dict] = {}
    for c in curves:
        for point in c["points"]:
            value = point["recovered"]["mean"] if point["recovered"] else float("-inf")
            worst[point["budget"]] = min(worst.get(point["budget"], float("inf")), value)
            settings[point["budget"]] = point["settings"]
    order = sorted(worst, key=lambda k: tuple(settings[k][f] for f in ("steps", "pairs", "rank", "lr")))
    met = [k for k in order if worst[k] >= aim]
    key = met[0] if met else max(order, key=lambda k: worst[k])
    return {"budget": key, "settings": settings[key], "met": bool(met), "worst_domain": worst[key]}


def curve_markdown(results: dict) -> str:
    st, choice = results["settings"], results["choice"]
    lines = [
        "# Transfer benchmark: learning curve of the oracle arm",
        "",
        f"`{results['command']}`: seeds {st['seeds']}; the oracle arm (the teacher's own training data, drawn at "
        "random) over pairs x steps x LoRA rank x learning rate. Recovered: (oracle - floor) / (teacher - floor) on "
        f"contains, mean ± sd over seeds. Wall time of this invocation {results['wall_s'] / 60:.1f} min.",
        "",
        f"**Chosen budget: {choice['budget']}**: "
        + (
            f"the smallest at which the oracle recovers at least {st['aim']:.0%} on every domain (worst domain "
            f"{choice['worst_domain']:.0%})."
            if choice["met"]
            else f"no budget tried reaches {st['aim']:.0%} on every domain; this one has the best worst domain "
            f"({choice['worst_domain']:.0%}). Aim not met."
        ),
    ]
    for c in results["domains"]:
        compute = (
            c["teacher"]["train_s"] + c["references"].get("compute_s", 0) + sum(p["compute_s"] for p in c["points"])
        )
        lines += ["", f"## {c['domain']}", "", *teacher_lines(c), ""]
        lines += [
            f"Compute behind this curve: {compute / 60:.1f} CPU min (the teacher's training, the references, every "
            "point's training and evaluation, each timed when it was computed).",
            "",
            "| budget | pairs | steps | rank | lr | contains | recovered | answer tokens | train min |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p in c["points"]:
            b = p["settings"]
            lines.append(
                f"| {p['budget']} | {'/'.join(map(str, p['pairs']))} | {b['steps']} | {b['rank']} | {b['lr']:g} | "
                f"{p['contains']['mean']:.3f} ± {p['contains']['sd']:.3f} | {_mean_sd_pct(p['recovered'])} | "
                f"{p['answer_tokens']:.0f} | {p['train_s'] / 60:.1f} |"
            )
    return "\n".join(lines) + "\n"


def run_curve(domain: Domain, refs: dict, seeds: list[int], grid: list[Budget]) -> dict:
    points = []
    for budget in grid:
        results = [domain.arm("oracle", seed, budget) for seed in seeds]
        points.append(
            {
                "budget": budget.key,
                "settings": dataclasses.asdict(budget),
                "pairs": [r["pairs"] for r in results],
                "contains": mean_sd([r["contains"] for r in results]),
                "recovered": recovered_per_seed(results, refs),
                "answer_tokens": float(np.mean([r["answer_tokens"] for r in results])),
                "train_s": float(np.mean([r["train_s"] for r in results])),
                "compute_s": float(np.sum([r.get("compute_s", r["train_s"]) for r in results])),
            }
        )
    return points


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "transfer.toml")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (--curve: 0)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(DEFAULT_ARMS))
    parser.add_argument("--pairs", type=int, default=144, help="training pairs per arm (from --curve)")
    parser.add_argument("--steps", type=int, default=72, help="training steps per arm (from --curve)")
    parser.add_argument("--rank", type=int, help="LoRA rank of the target (default: the recipe's)")
    parser.add_argument("--lr", type=float, help="the target's learning rate (default: the recipe's)")
    parser.add_argument("--eval-limit", type=int, default=48, help="held-out items per domain (0: all)")
    parser.add_argument("--teacher-epochs", type=int, default=12, help="at most; stopped on held-out loss")
    parser.add_argument("--teacher-patience", type=int, default=2)
    parser.add_argument("--teacher-lr", type=float, default=1e-3)
    parser.add_argument("--curve", action="store_true", help="learning-curve mode: the oracle over a budget grid")
    parser.add_argument("--curve-pairs", type=int, nargs="+", default=[48, 96, 144])
    parser.add_argument("--curve-steps", type=int, nargs="+", default=[24, 48, 72])
    parser.add_argument("--curve-ranks", type=int, nargs="+", help="default: --rank")
    parser.add_argument("--curve-lrs", type=float, nargs="+", help="default: --lr")
    parser.add_argument("--aim", type=float, default=0.8, help="recovered fraction the chosen budget must reach")
    parser.add_argument("--paraphrases", type=int, default=2, help="rewrites per kept prompt in the _aug arms")
    parser.add_argument(
        "--candidates", type=int, help="prompts per round in every pool (default: the recipe's); cached apart"
    )
    parser.add_argument("--work", type=Path, help="caches (default runs/transfer, with --quick runs/transfer-quick)")
    parser.add_argument(
        "--results",
        type=Path,
        help="results .md/.json (default bench/transfer-results, --curve: bench/transfer-curve; --quick: in --work)",
    )
    parser.add_argument("--quick", action="store_true", help="one seed, small settings")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    settings = {
        "seeds": args.seeds or ([0] if args.curve else [0, 1, 2]),
        "pairs": args.pairs,
        "steps": args.steps,
        "eval_limit": args.eval_limit,
        "teacher_epochs": args.teacher_epochs,
        "teacher_patience": args.teacher_patience,
        "teacher_lr": args.teacher_lr,
        "quick": args.quick,
        "curve_pairs": args.curve_pairs,
        "curve_steps": args.curve_steps,
        "aim": args.aim,
        "paraphrases": args.paraphrases,
        "candidates": args.candidates,
    }
    if args.quick:
        settings |= QUICK | {"seeds": settings["seeds"][:1]}
    work = args.work or ROOT / "runs" / ("transfer-quick" if args.quick else "transfer")
    default_name = "transfer-curve" if args.curve else "transfer-results"
    results_path = args.results or (work / default_name if args.quick else ROOT / "bench" / default_name)
    quiet_transformers()
    started = time.perf_counter()
    domains = []
    for spec in args.domain:
        name, _, folder = spec.partition("=")
        if not name or not folder:
            raise SystemExit(f"--domain {spec!r}: expected NAME=DIR")
        t0 = time.perf_counter()
        domain = Domain(name, Path(folder).resolve(), args.recipe, work, settings, not args.quiet)
        train_cfg = domain.recipe.train
        settings["rank"] = args.rank or train_cfg.rank
        settings["lr"] = args.lr or train_cfg.learning_rate
        refs = domain.references()
        teacher = domain.teacher_training()
        head = {"domain": name, "references": refs, "teacher": teacher, "floor": floor_of(refs)}
        head["advantage"] = refs["teacher"]["contains"] - head["floor"]
        head["advantage_too_small"] = bool(too_small(head["advantage"], refs["teacher"]["n"]))
        for line in teacher_lines(head):
            log(f"[{name}] {line}")
        if args.curve:
            grid = [
                Budget(p, s, r, lr)
                for s in settings["curve_steps"]
                for p in settings["curve_pairs"]
                for r in args.curve_ranks or [settings["rank"]]
                for lr in args.curve_lrs or [settings["lr"]]
            ]
            domains.append(head | {"points": run_curve(domain, refs, settings["seeds"], grid)})
            continue
        budget = Budget(settings["pairs"], settings["steps"], settings["rank"], settings["lr"])
        names = domain.applicable(args.arms)
        by_seed = [{arm: domain.arm(arm, seed, budget) for arm in names} for seed in settings["seeds"]]
        arms = {arm: [results[arm] for results in by_seed] for arm in names}
        facts = {arm: [domain.arm_facts(arm, seed, budget.pairs) for seed in settings["seeds"]] for arm in names}
        used = [p for p in POOLS if any(POOL_OF.get(arm, arm) == p for arm in names)]
        pools = [domain.pool_stats(seed, used) for seed in settings["seeds"]]
        row = aggregate(name, refs, arms, facts, pools, teacher, time.perf_counter() - t0)
        domains.append(row | {"reachable": domain.reachable(used, settings["seeds"])})
    command = "python bench/transfer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"command": command, "settings": settings, "domains": domains, "wall_s": time.perf_counter() - started}
    if args.curve:
        results["choice"] = choose_budget(domains, args.aim)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.with_suffix(".json").write_text(json.dumps(results, indent=1))
    results_path.with_suffix(".md").write_text(curve_markdown(results) if args.curve else markdown(results))
    log(f"results: {results_path.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
