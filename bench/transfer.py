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

Results (mean +- sd over seeds, the fraction of the teacher's advantage recovered, per-round pool statistics and the
wall time) go to --results .md and .json. Every step is cached under --work, keyed by the settings it depends on,
so an interrupted run resumes and a run with other training settings reuses the teacher and the pools.

    python bench/transfer.py --domain world=data/world --domain dates=data/dates
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

from tskd_lite import pipeline  # noqa: E402
from tskd_lite.dedup import normalise  # noqa: E402
from tskd_lite.errors import TskdError  # noqa: E402
from tskd_lite.evaluate import chance_row, eval_llama, eval_transformers, read_eval_file  # noqa: E402
from tskd_lite.recipe import Recipe, Train, load_recipe, merged  # noqa: E402
from tskd_lite.report import summary  # noqa: E402
from tskd_lite.store import Store  # noqa: E402
from tskd_lite.target import Formatter, hf_dir, quiet_transformers  # noqa: E402
from tskd_lite.train import make_teacher, read_pairs, train  # noqa: E402

ARMS = ("seeds_only", "no_selection", "one_round", "full", "token_level", "oracle")
POOLS = ("full", "no_selection", "one_round")
POOL_OF = {"seeds_only": "full", "token_level": "full"}  # arms that train on another arm's pool
TOKEN_TOP_FRACTION = 0.5
QUICK = {"pairs": 16, "steps": 4, "eval_limit": 16, "teacher_steps": 8, "rounds": 2, "candidates": 8}


def log(message: str) -> None:
    print(message, flush=True)


def pool_overrides(pool: str, recipe: Recipe) -> dict:
    """The recipe changes that make each pool; every pool generates the same number of prompts."""
    budget = {"target_kept": 1 << 30}  # run every round, whatever is kept, so the arms generate alike
    if pool == "full":
        return {"expand": budget}
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
        combined: dict = {}
        for layer in layers:
            combined = merged(combined, layer)
        return load_recipe(self.recipe_path, combined)

    # -- the teacher and the references --------------------------------------------------------------------

    def teacher(self) -> Path:
        adapter = self.work / f"teacher-s{self.s['teacher_steps']}-lr{self.s['teacher_lr']:g}" / "adapter.gguf"
        if not adapter.is_file():
            log(f"[{self.name}] fine-tuning the teacher on {self.folder / 'train.jsonl'}")
            cfg = Train(
                rank=16,
                alpha=32.0,
                dropout=0.0,
                learning_rate=self.s["teacher_lr"],
                max_steps=self.s["teacher_steps"],
                batch_size=8,
                max_seq_len=128,
                val_fraction=0.0,
            )
            make_teacher(
                self.folder / "train.jsonl", self.recipe.teacher.model, adapter.parent, cfg, progress=self.progress
            )
        return adapter

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

        return cached(self.work / f"references-n{self.s['eval_limit']}.json", compute)

    def target_dir(self) -> Path:
        return hf_dir(self.recipe.target, log)

    def formatter(self, tokenizer) -> Formatter:
        return Formatter.for_target(tokenizer, self.recipe.target)

    # -- pools and arms ---------------------------------------------------------------------------------------

    def pool(self, name: str, seed: int) -> Recipe:
        base = self.recipe
        db = self.work / f"seed{seed}" / name / "pool.db"
        recipe = self.with_teacher({"seed": seed, "output": {"db": str(db)}, **pool_overrides(name, base)})
        if not (db.parent / "run.json").is_file():
            log(f"[{self.name} seed {seed}] growing the {name} pool")
            pipeline.run(recipe, progress=self.progress, log=log)
        return recipe

    def arm_pairs(self, arm: str, seed: int) -> list:
        n = self.s["pairs"]
        if arm == "oracle":
            return sample(read_pairs(self.folder / "train.jsonl"), n, seed)
        pool = POOL_OF.get(arm, arm)
        recipe = self.pool(pool, seed)
        if arm == "seeds_only":
            store = Store.read(recipe.output.db)
            try:
                rows = store.db.execute(
                    "select p.text, a.text from prompts p join answers a on a.prompt_id = p.id "
                    "where p.run_id = ? and p.round = 0 and a.text != '' order by p.idx",
                    [store.get_run(None).id],
                ).fetchall()
                return [(prompt, answer, None) for prompt, answer in rows]
            finally:
                store.close()
        if arm == "token_level":
            token = dataclasses.replace(
                recipe, train=dataclasses.replace(recipe.train, token_top_fraction=TOKEN_TOP_FRACTION)
            )
            return sample(pipeline.token_selected_pairs(token, log), n, seed)
        return sample(read_pairs(recipe.output.export_path), n, seed)

    def arm(self, arm: str, seed: int) -> dict:
        def compute() -> dict:
            pairs = self.arm_pairs(arm, seed)
            out = self.work / f"seed{seed}" / arm / f"train-p{self.s['pairs']}-s{self.s['steps']}"
            cfg = dataclasses.replace(self.recipe.train, max_steps=self.s["steps"], val_fraction=0.0, seed=seed)
            target = dataclasses.replace(self.recipe.target, model=self.target_dir())
            log(f"[{self.name} seed {seed}] training the target on {arm}: {len(pairs)} pairs, {cfg.max_steps} steps")
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
            return score_row(row) | {"pairs": len(pairs), "steps": result.steps, "train_s": result.seconds}

        key = f"p{self.s['pairs']}-s{self.s['steps']}-n{self.s['eval_limit']}"
        return cached(self.work / f"seed{seed}" / arm / f"result-{key}.json", compute)

    def pool_stats(self, seed: int, pools: list[str]) -> dict:
        stats = {}
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
                            "near_duplicate_rate": r["duplicates"] / max(r["candidates"], 1),
                            "kept_fraction": (r["kept"] or 0) / max(r["scored"], 1),
                            "gap": r["gap"],
                            "distinct_2": distinct_2(texts),
                        }
                    )
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


def recovered(after: float, before: float, teacher: float, base: float) -> float | None:
    """(target after - target before) / (teacher - base); None when the teacher has no advantage."""
    return (after - before) / (teacher - base) if teacher != base else None


def aggregate(name: str, refs: dict, arms: dict[str, list[dict]], pools: list[dict], seconds: float) -> dict:
    before = refs["target_before"]
    table = {}
    for arm, results in arms.items():
        acc = [r["contains"] for r in results]
        nll = [r["nll_per_byte"] for r in results]
        table[arm] = {
            "contains": mean_sd(acc),
            "nll_per_byte": mean_sd(nll),
            "recovered_contains": recovered(
                float(np.mean(acc)), before["contains"], refs["teacher"]["contains"], refs["base"]["contains"]
            ),
            # Lower NLL is better: the advantage is base - teacher and the gain before - after.
            "recovered_nll": recovered(
                -float(np.mean(nll)),
                -before["nll_per_byte"],
                -refs["teacher"]["nll_per_byte"],
                -refs["base"]["nll_per_byte"],
            ),
            "pairs": [r["pairs"] for r in results],
        }
    versus = None
    if {"full", "no_selection"} <= set(arms):
        # Paired by seed; NLL is negated so that a positive difference means full is better on both measures.
        versus = {
            key: mean_sd([sign * (f[key] - n[key]) for f, n in zip(arms["full"], arms["no_selection"], strict=True)])
            for key, sign in (("contains", 1), ("nll_per_byte", -1))
        }
    # Each cached step carries the seconds it took when it was computed, whichever invocation that was; steps
    # cached before that was recorded count their training time only, so the total is then a lower bound.
    steps = [refs, *(r for results in arms.values() for r in results)]
    compute_s = sum(r.get("compute_s", r.get("train_s", 0.0)) for r in steps)
    compute_s += sum(pool["elapsed_s"] for by_pool in pools for pool in by_pool.values())
    return {
        "domain": name,
        "references": refs,
        "arms": table,
        "full_vs_no_selection": versus,
        "pools": pools,
        "compute_s": compute_s,
        "compute_s_complete": all("compute_s" in r for r in steps),
        "wall_s": seconds,
    }


def markdown(results: dict) -> str:
    lines = [
        "# Transfer benchmark",
        "",
        f"`{results['command']}`: {results['settings']['seeds']} seeds, {results['settings']['pairs']} training "
        f"pairs and {results['settings']['steps']} steps per arm; this invocation's wall time "
        f"{results['wall_s'] / 60:.1f} min (steps already cached are read, not recomputed).",
        "Accuracy: the reference answer contained in the model's answer (contains), on the held-out test items.",
        "Recovered: (target after - target before) / (teacher - base), for accuracy and for the reference NLL.",
    ]
    for d in results["domains"]:
        r = d["references"]
        lines += [
            "",
            f"## {d['domain']} ({r['teacher']['n']} held-out items)",
            "",
            f"Compute behind these results: {'' if d['compute_s_complete'] else 'at least '}"
            f"{d['compute_s'] / 60:.1f} min (the teacher, references, pools, training and evaluation, each timed "
            "when it was computed"
            f"{'' if d['compute_s_complete'] else '; some steps were cached before their time was recorded'}).",
            "",
            "| model | contains | NLL nats/byte | recovered (contains) | recovered (NLL) | pairs |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("teacher", "base", "target_before"):
            lines.append(f"| {name} | {r[name]['contains']:.3f} | {r[name]['nll_per_byte']:.3f} | | | |")
        lines.append(f"| chance (the most similar other question's answer) | {r['chance']['contains']:.3f} | - | | | |")
        for arm, a in d["arms"].items():
            rc, rn = a["recovered_contains"], a["recovered_nll"]
            lines.append(
                f"| target: {arm} | {a['contains']['mean']:.3f} ± {a['contains']['sd']:.3f} | "
                f"{a['nll_per_byte']['mean']:.3f} ± {a['nll_per_byte']['sd']:.3f} | "
                f"{'-' if rc is None else f'{rc:.0%}'} | {'-' if rn is None else f'{rn:.0%}'} | "
                f"{'/'.join(map(str, a['pairs']))} |"
            )
        if d["full_vs_no_selection"]:
            lines.append("")
            for key, what in (("contains", "contains"), ("nll_per_byte", "NLL nats/byte, lower is better")):
                v = d["full_vs_no_selection"][key]
                if len(v["values"]) < 2:
                    verdict = "one seed: no spread to compare with"
                else:
                    verdict = f"{'more' if v['mean'] > 2 * v['sd'] else 'not more'} than two standard deviations"
                lines.append(
                    f"Full over no selection, {what}: {v['mean']:+.3f} ± {v['sd']:.3f} (paired by seed); {verdict}.  "
                )
        lines += [
            "",
            "Pools per round (mean over seeds): kept fraction, median gap, near-duplicate rate, distinct word bigrams.",
            "",
            "| pool | round | candidates | kept fraction | median gap | near-duplicates | distinct-2 |",
            "|---|---|---|---|---|---|---|",
        ]
        for pool in d["pools"][0]:
            per_seed = [p[pool]["rounds"] for p in d["pools"]]
            for i, first in enumerate(per_seed[0]):
                rows = [rounds[i] for rounds in per_seed if i < len(rounds)]
                med = [x["gap"]["median"] for x in rows if x["gap"]]
                dist = [x["distinct_2"] for x in rows if x["distinct_2"] is not None]
                lines.append(
                    f"| {pool} | {first['round']} | {np.mean([x['candidates'] for x in rows]):.0f} | "
                    f"{np.mean([x['kept_fraction'] for x in rows]):.2f} | "
                    f"{np.mean(med) if med else float('nan'):.3f} | "
                    f"{np.mean([x['near_duplicate_rate'] for x in rows]):.2f} | "
                    f"{np.mean(dist) if dist else float('nan'):.2f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "transfer.toml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--pairs", type=int, default=32, help="training pairs per arm")
    parser.add_argument("--steps", type=int, default=16, help="training steps per arm")
    parser.add_argument("--eval-limit", type=int, default=48, help="held-out items per domain (0: all)")
    parser.add_argument("--teacher-steps", type=int, default=80)
    parser.add_argument("--teacher-lr", type=float, default=1e-3)
    parser.add_argument("--work", type=Path, help="caches (default runs/transfer, with --quick runs/transfer-quick)")
    parser.add_argument(
        "--results", type=Path, help="results .md/.json (default bench/transfer-results; --quick: in --work)"
    )
    parser.add_argument("--quick", action="store_true", help="one seed, small settings")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    settings = {
        "seeds": args.seeds,
        "pairs": args.pairs,
        "steps": args.steps,
        "eval_limit": args.eval_limit,
        "teacher_steps": args.teacher_steps,
        "teacher_lr": args.teacher_lr,
        "quick": args.quick,
    }
    if args.quick:
        settings |= QUICK | {"seeds": args.seeds[:1]}
    work = args.work or ROOT / "runs" / ("transfer-quick" if args.quick else "transfer")
    results_path = args.results or (work / "results" if args.quick else ROOT / "bench" / "transfer-results")
    quiet_transformers()
    started = time.perf_counter()
    domains = []
    for spec in args.domain:
        name, _, folder = spec.partition("=")
        if not name or not folder:
            raise SystemExit(f"--domain {spec!r}: expected NAME=DIR")
        t0 = time.perf_counter()
        domain = Domain(name, Path(folder).resolve(), args.recipe, work, settings, not args.quiet)
        refs = domain.references()
        by_seed = [{arm: domain.arm(arm, seed) for arm in args.arms} for seed in settings["seeds"]]
        arms = {arm: [results[arm] for results in by_seed] for arm in args.arms}
        used = [p for p in POOLS if any(POOL_OF.get(arm, arm) == p for arm in args.arms)]
        pools = [domain.pool_stats(seed, used) for seed in settings["seeds"]]
        domains.append(aggregate(name, refs, arms, pools, time.perf_counter() - t0))
    command = "python bench/transfer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"command": command, "settings": settings, "domains": domains, "wall_s": time.perf_counter() - started}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.with_suffix(".json").write_text(json.dumps(results, indent=1))
    results_path.with_suffix(".md").write_text(markdown(results))
    log(f"results: {results_path.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
