"""The numbers: per-pool and per-round measures read from the stores, and the aggregation over seeds."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from bench.facts import measures
from tskd_lite.dedup import normalise
from tskd_lite.evaluate import kept_and_lost, recovered
from tskd_lite.report import summary
from tskd_lite.store import Store

if TYPE_CHECKING:
    from .domain import Domain
    from .settings import Budget

# -- what the pools and the arms' pairs hold ---------------------------------------------------------------------


def distinct_2(texts: list[str]) -> float | None:
    """Distinct word bigrams over all bigrams of the texts: 1.0 when no bigram repeats."""
    bigrams = [tuple(w[i : i + 2]) for w in (normalise(t).split() for t in texts) for i in range(len(w) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else None


def pool_stats(domain: Domain, seed: int, pools: list[str]) -> dict:
    """Per pool: each round's candidates, kept fraction, gap, near-duplicates and distinct bigrams, and (where the
    domain ships facts) the fact-level measures of the pairs kept up to and including each round."""
    stats = {}
    index = domain.facts()
    for name in pools:
        with Store.read(domain.pool(name, seed).output.db) as store:
            run = store.get_run(None)
            s = summary(store, run.id)
            prompts = store.prompts(run.id)
            kept = store.kept_pairs(run.id)
        rounds = []
        for r in s["rounds"]:
            texts = [p["text"] for p in prompts if p["round"] == r["round"]]
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
        if index is not None:
            # the kept pairs up to and including each round: how coverage grows round by round
            for r in rounds:
                upto = [(k["prompt"], k["answer"]) for k in kept if k["round"] <= r["round"]]
                r["facts"] = measures(upto, index)
        stats[name] = {"rounds": rounds, "kept": s["kept"], "elapsed_s": s["elapsed_s"]}
    return stats


def reachable(domain: Domain, pools: list[str], seeds: list[int]) -> dict | None:
    """The reachable ceiling: the share of held-out facts whose entity the seeds name, the entity list names,
    or some prompt or answer of each pool (mean over seeds) names: no pool can cover more than that."""
    index = domain.facts()
    if index is None:
        return None

    def share(texts: list[str]) -> float:
        named = {e for t in texts for e in index.entities(t)}
        return sum(f.entity in named for f in index.asked) / len(index.asked)

    out = {"seeds": share(list(domain.recipe.seeds.prompts))}
    if domain.entities() is not None:
        out["entity list"] = share(domain.entities().read_text().splitlines())
    for name in pools:
        per_seed = []
        for seed in seeds:
            with Store.read(domain.pool(name, seed).output.db) as store:
                run = store.get_run(None)
                prompts = store.prompts(run.id)
                texts = [p["text"] for p in prompts]
                texts += [a for r in {p["round"] for p in prompts} for _, a in store.answered_pairs(run.id, r)]
            per_seed.append(share(texts))
        out[f"{name} pool"] = float(np.mean(per_seed))
    return out


def arm_facts(domain: Domain, arm: str, seed: int, n: int) -> dict | None:
    """Fact-level measures of the pairs the arm trains on."""
    index = domain.facts()
    if index is None:
        return None
    return measures([(p, a) for p, a, _ in domain.arm_pairs(arm, seed, n)], index)


# -- aggregation over seeds --------------------------------------------------------------------------------------


def mean_sd(values: list[float]) -> dict:
    a = np.array(values, dtype=float)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "values": values}


def noise_line(n: int) -> float:
    """Two standard errors of a proportion at p = 0.5 on n items."""
    return 2 * 0.5 / np.sqrt(n)


def too_small(advantage: float, n: int) -> bool:
    """An advantage within two standard errors of a proportion at p = 0.5 on n items cannot be told from noise."""
    return advantage < noise_line(n)


def floor_of(refs: dict) -> float:
    return max(refs["chance"]["contains"], refs["target_before"]["contains"])


def head(name: str, refs: dict, teacher: dict) -> dict:
    """What every domain's results start with: the references, the teacher's training, its advantage."""
    advantage = refs["teacher"]["contains"] - floor_of(refs)
    return {
        "domain": name,
        "references": refs,
        "teacher": teacher,
        "floor": floor_of(refs),
        "advantage": advantage,
        "advantage_too_small": bool(too_small(advantage, refs["teacher"]["n"])),
    }


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
    keys = ("in_domain", "coverage", "precision", "wrong_rate", "facts_stated")
    values = {k: [m[k] for m in per_seed if m.get(k) is not None] for k in keys}
    return {k: float(np.mean(v)) if v else None for k, v in values.items()}  # None, not NaN: NaN != NaN


def harm(results: list[dict], refs: dict, items: list) -> dict:
    """Do no harm, over the seeds: the held-out items the untouched target got right, and of those the mean
    number each seed's trained target got wrong (lost) and the mean it newly got right (gained)."""
    before = refs["target_before"]["predictions"]
    per_seed = [kept_and_lost(items, before, r["predictions"]) for r in results]
    return {
        "known_before": per_seed[0]["known_before"],
        "lost": float(np.mean([h["lost"] for h in per_seed])),
        "gained": float(np.mean([h["gained"] for h in per_seed])),
        "below_start": float(np.mean([r["contains"] for r in results])) < refs["target_before"]["contains"],
    }


def arm_row(results: list[dict], facts: list[dict | None], refs: dict, items: list) -> dict:
    """One arm over the seeds."""
    nll = mean_sd([r["nll_per_byte"] for r in results])
    return {
        "harm": harm(results, refs, items),
        "contains": mean_sd([r["contains"] for r in results]),
        "recovered": recovered_per_seed(results, refs),
        "nll_per_byte": nll,
        "recovered_nll": nll_recovered(nll["mean"], refs),
        "pairs": [r["pairs"] for r in results],
        "steps": results[0]["steps"],
        # early stopping's kept step, and the replayed pairs trained beside the arm's own (absent in older caches)
        "best_step": [r.get("best_step") for r in results],
        "replayed": [r.get("replayed", 0) for r in results],
        "answer_tokens": float(np.mean([r["answer_tokens"] for r in results])),
        "train_s": float(np.mean([r["train_s"] for r in results])),
        "compute_s": float(np.mean([r.get("compute_s", r["train_s"]) for r in results])),
        "facts": mean_facts(facts),
    }


def aggregate(
    name: str,
    refs: dict,
    arms: dict[str, list[dict]],
    facts: dict[str, list[dict | None]],
    pools: list[dict],
    teacher: dict,
    seconds: float,
    items: list,
) -> dict:
    table = {arm: arm_row(results, facts.get(arm, []), refs, items) for arm, results in arms.items()}
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
    steps = [refs, *(r for results in arms.values() for r in results)]
    compute_s = sum(r.get("compute_s", r.get("train_s", 0.0)) for r in steps)
    compute_s += sum(pool["elapsed_s"] for by_pool in pools for pool in by_pool.values())
    return head(name, refs, teacher) | {
        "arms": table,
        "full_vs_no_selection": versus,
        "oracle_separates_from_seeds_only": separated,
        "pools": pools,
        "compute_s": compute_s,
        "compute_s_complete": all("compute_s" in r for r in steps),
        "wall_s": seconds,
    }


def pool_round_means(pools: list[dict]) -> list[dict]:
    """Every pool's rounds, each the mean over the seeds that ran it (pools: one {pool: stats} per seed)."""
    out = []
    for pool in pools[0]:
        per_seed = [p[pool]["rounds"] for p in pools]
        for i, first in enumerate(per_seed[0]):
            rows = [rounds[i] for rounds in per_seed if i < len(rounds)]
            med = [x["gap"]["median"] for x in rows if x["gap"]]
            dist = [x["distinct_2"] for x in rows if x["distinct_2"] is not None]
            out.append(
                {
                    "pool": pool,
                    "round": first["round"],
                    "candidates": np.mean([x["candidates"] for x in rows]),
                    "kept_fraction": np.mean([x["kept_fraction"] for x in rows]),
                    "median_gap": np.mean(med) if med else float("nan"),
                    "near_duplicate_rate": np.mean([x["near_duplicate_rate"] for x in rows]),
                    "distinct_2": np.mean(dist) if dist else float("nan"),
                    "facts": mean_facts([x.get("facts") for x in rows]),
                }
            )
    return out


# -- the learning curve ------------------------------------------------------------------------------------------


def curve_point(budget: Budget, results: list[dict], refs: dict) -> dict:
    """The oracle at one budget, over the seeds."""
    return {
        "budget": budget.key,
        "settings": dataclasses.asdict(budget),
        "pairs": [r["pairs"] for r in results],
        "contains": mean_sd([r["contains"] for r in results]),
        "recovered": recovered_per_seed(results, refs),
        "answer_tokens": float(np.mean([r["answer_tokens"] for r in results])),
        "train_s": float(np.mean([r["train_s"] for r in results])),
        "compute_s": float(np.sum([r.get("compute_s", r["train_s"]) for r in results])),
    }


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
