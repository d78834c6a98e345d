"""What a run did, read back from the store: per-round counts, the gap distribution, timings and throughput; and
the run report, gathered here from the store and the stage outputs (report_md.py writes it, plots.py draws it,
caveats.py says what to worry about)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tskd_lite import atomic, caveats, report_md
from tskd_lite.errors import TskdError
from tskd_lite.evaluate import EvalItem, kept_and_lost, match, recovered
from tskd_lite.plots import write_plots
from tskd_lite.rundir import lock, run_info
from tskd_lite.store import Store


def summary(store: Store, run_id: int) -> dict:
    run = store.run_row(run_id)
    gaps = store.gaps_by_round(run_id)
    rounds = []
    for round_ in store.rounds_of(run_id):
        counts = store.status_counts(run_id, round_)
        selected = store.round_selected(run_id, round_)
        paraphrased = store.round_selected(run_id, round_, "paraphrases")
        kept = None if selected is None else selected["n_kept"] + (paraphrased["n_kept"] if paraphrased else 0)
        rounds.append(
            {
                "round": round_,
                "candidates": sum(counts.values()),
                "paraphrases": store.count_paraphrases(run_id, round_),
                "paraphrases_kept": None if paraphrased is None else paraphrased["n_kept"],
                "new": counts.get("new", 0),
                "duplicates": counts.get("duplicate", 0),
                "empty": counts.get("empty", 0),
                "drifted": counts.get("drifted", 0),
                "scored": len(gaps.get(round_, [])),
                "kept": kept,
                "gap": _quantiles(gaps.get(round_, [])),
            }
        )
    gen_tokens, gen_seconds = store.generation_totals(run_id)
    score_tokens, score_seconds = store.scoring_totals(run_id)
    return {
        "run_id": run_id,
        "status": run["status"],
        "message": run["message"],
        "unit": run["unit"],
        "elapsed_s": run["elapsed_s"],
        "pool": store.pool_size(run_id),
        "kept": sum(r["kept"] or 0 for r in rounds),
        "rounds": rounds,
        "generation": {"tokens": gen_tokens, "seconds": gen_seconds, "tokens_per_s": _rate(gen_tokens, gen_seconds)},
        "scoring": {
            "tokens": score_tokens,
            "seconds": score_seconds,
            "tokens_per_s": _rate(score_tokens, score_seconds),
        },
    }


def _rate(tokens: float, seconds: float) -> float | None:
    return tokens / seconds if seconds > 0 else None


def _quantiles(values: list[float]) -> dict | None:
    if not values:
        return None
    q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
    return dict(zip(("min", "p25", "median", "p75", "max"), (float(v) for v in q), strict=True))


def format_summary(s: dict) -> str:
    lines = [
        f"run {s['run_id']}: {s['status']}" + (f" ({s['message']})" if s["message"] else ""),
        f"pool {s['pool']} prompts, kept {s['kept']} pairs, gap unit: {s['unit'] or '-'}, "
        f"elapsed {s['elapsed_s']:.1f} s",
        "round  candidates  duplicates  empty  scored  kept   gap: min   median      max  (PPL ratio median)",
    ]
    paraphrasing = any(r["paraphrases"] for r in s["rounds"])
    for r in s["rounds"]:
        g = r["gap"]
        gap_cols = (
            f"{g['min']:10.3f} {g['median']:8.3f} {g['max']:8.3f}  ({math.exp(g['median']):.3g})" if g else "         -"
        )
        kept = "-" if r["kept"] is None else str(r["kept"])
        lines.append(
            f"{r['round']:>5}  {r['candidates']:>10}  {r['duplicates']:>10}  {r['empty']:>5}  {r['scored']:>6}  "
            f"{kept:>4}  {gap_cols}"
        )
        if paraphrasing:
            pk = "-" if r["paraphrases_kept"] is None else r["paraphrases_kept"]
            lines.append(f"       of which paraphrases: {r['paraphrases']} written, {pk} kept")
    for name in ("generation", "scoring"):
        t = s[name]
        rate = "-" if t["tokens_per_s"] is None else f"{t['tokens_per_s']:.0f} tokens/s"
        lines.append(f"{name}: {t['tokens']} tokens in {t['seconds']:.1f} s ({rate})")
    return "\n".join(lines)


# -- the run report: dataset, training and evaluation side by side ----------------------------------------


def write_report(run_dir: Path) -> Path:
    """Rebuild report.json, report.md and the PNG plots in run_dir from the store and the stage outputs."""
    if not (run_dir / "run.json").is_file():
        raise TskdError(f"{run_dir}: not a run folder (no run.json; `tskd-lite run` writes it)")
    with lock(run_dir):
        return _write_report(run_dir, *run_info(run_dir)[:2])


def _write_report(run_dir: Path, db: Path, run_id: int | None) -> Path:
    with Store.read(db) as store:
        run = store.get_run(run_id)  # None: the latest (a folder trained before any `run`)
        dataset = summary(store, run.id)
        pairs = store.scored_pairs(run.id)
        row, identities = store.run_row(run.id), store.run_models(run.id)
    train = _read_json(run_dir / "train" / "train.json")
    evaluation = _read_json(run_dir / "eval.json")
    rows = [{k: v for k, v in r.items() if k != "predictions"} for r in (evaluation or {}).get("rows", [])]
    report = {
        "run": {"id": run.id, "recipe_path": row["recipe_path"], "recipe_hash": row["recipe_hash"]},
        "dataset": dataset,
        "selection": _selection(run.recipe, pairs, dataset["unit"]),
        "examples": _examples(pairs),
        "train": train,
        "eval": rows,
        "recovered": _recovered(rows),
        "kept_and_lost": _kept_and_lost(evaluation),
        "items": _items(evaluation),
        "models": _models(run.recipe, identities),
        "settings": _settings(run.recipe),
    }
    report["warnings"] = caveats.check(report)
    report["plots"] = write_plots(run_dir, report, pairs)
    atomic.write_text(run_dir / "report.json", json.dumps(report, indent=2))
    atomic.write_text(run_dir / "report.md", _markdown(report, report["plots"]))
    return run_dir / "report.md"


def _markdown(report: dict, plots: list[str]) -> str:
    return report_md.markdown(report, plots, format_summary(report["dataset"]))


def _selection(recipe: dict, pairs: list[dict], unit: str | None) -> dict:
    """The keep rule as the run recorded it, its threshold on the gap axis, and what it decided."""
    rule, tau = recipe.get("select.rule", "ppl_ratio"), recipe.get("select.tau")
    decided = [p for p in pairs if p["kept"] is not None]
    kept = sum(bool(p["kept"]) for p in decided)
    return {
        "rule": rule,
        "tau": None if rule == "top_fraction" else tau,
        # ppl_ratio, contrast and agreement keep gap >= ln tau; token_gap compares ln tau with another measure
        "gap_threshold": math.log(tau) if rule in ("ppl_ratio", "contrast", "agreement") and tau else None,
        "top_fraction": recipe.get("select.top_fraction"),
        "min_answer_tokens": recipe.get("select.min_answer_tokens"),
        "max_teacher_ppl": recipe.get("select.max_teacher_ppl"),
        "min_contrast": recipe.get("select.min_contrast"),
        "min_agreement": recipe.get("select.min_agreement"),
        "agreement_samples": recipe.get("select.agreement_samples"),
        "unit": unit,
        "scored": len(pairs),
        "decided": len(decided),
        "kept": kept,
        "rejected": len(decided) - kept,
        "lowest_gap": min((p["gap"] for p in decided), default=None),
    }


def _examples(pairs: list[dict]) -> dict:
    """Three kept and three rejected pairs each: the highest gap, the middle one and the lowest."""
    out = {}
    for kind, want in (("kept", 1), ("rejected", 0)):
        chosen = sorted((p for p in pairs if p["kept"] == want), key=lambda p: (-p["gap"], p["round"], p["idx"]))
        picks = sorted({0, len(chosen) // 2, len(chosen) - 1}) if chosen else []
        out[kind] = [
            {k: chosen[i][k] for k in ("round", "gap", "prompt", "answer", "reason")}
            | {"ppl_ratio": math.exp(chosen[i]["gap"])}
            for i in picks
        ]
    return out


OUTCOME_ORDER = ("lost", "gained", "not transferred", "kept", "")


def _items(evaluation: dict | None, n: int = 6) -> list[dict] | None:
    """A handful of held-out items with the teacher's and the target's replies: up to two of each outcome (lost
    first), then the first others, in item order."""
    rows = {r["name"]: r for r in (evaluation or {}).get("rows", [])}
    names = [m for m in ("teacher", "target before", "target after") if m in rows]
    if not evaluation or not evaluation.get("items") or "teacher" not in names:
        return None
    items = [EvalItem(i["prompt"], i["answer"], tuple(i.get("aliases") or ())) for i in evaluation["items"]]
    right = {m: [match(p, it)[1] for p, it in zip(rows[m]["predictions"], items, strict=True)] for m in names}
    outcomes = [_outcome(right, i) for i in range(len(items))]
    chosen = [i for o in OUTCOME_ORDER for i in [k for k, x in enumerate(outcomes) if x == o][:2]]
    chosen = sorted((chosen + [i for i in range(len(items)) if i not in chosen])[:n])
    return [
        {
            "index": i,
            "prompt": items[i].prompt,
            "answer": items[i].answer,
            "outcome": outcomes[i],
            "replies": {m: {"text": rows[m]["predictions"][i], "contains": right[m][i]} for m in names},
        }
        for i in chosen
    ]


def _outcome(right: dict[str, list[bool]], i: int) -> str:
    if "target after" not in right or "target before" not in right:
        return ""
    before, after, teacher = right["target before"][i], right["target after"][i], right["teacher"][i]
    if before:
        return "kept" if after else "lost"
    return "gained" if after else "not transferred" if teacher else ""


def _models(recipe: dict, identities: dict | None) -> dict:
    """Each role's model as the recipe named it (path or served model), with the size and hash the run recorded."""
    out = {}
    for role in ("teacher", "base", "target"):
        fields = {}
        for key in ("backend", "model", "lora", "url", "served_model"):
            value = recipe.get(f"{role}.{key}")
            if value is not None:
                fields[key] = value
        for key in ("model", "lora"):
            if (identities or {}).get(f"{role}.{key}"):
                fields[f"{key} size:hash"] = identities[f"{role}.{key}"]
        if fields:
            out[role] = fields
    return out


KEY_SETTINGS = {
    "expand": ("strategy", "rounds", "candidates_per_round", "target_kept", "few_shot", "paraphrases", "entities"),
    "respond": ("max_answer_tokens", "temperature"),
    "select": (
        "rule",
        "tau",
        "min_answer_tokens",
        "max_teacher_ppl",
        "top_fraction",
        "min_contrast",
        "min_agreement",
        "agreement_samples",
    ),
    "train": ("rank", "alpha", "epochs", "learning_rate", "batch_size", "max_seq_len", "replay", "patience"),
    "eval": ("file", "limit", "max_answer_tokens"),
}


def _settings(recipe: dict) -> dict:
    """The recipe's settings a reader needs to read the run, by table (None and absent ones left out)."""
    out = {"run": {"seed": recipe["seed"]}} if recipe.get("seed") is not None else {}
    for section, keys in KEY_SETTINGS.items():
        values = {k: recipe[f"{section}.{k}"] for k in keys if recipe.get(f"{section}.{k}") is not None}
        if values:
            out[section] = values
    select, rule = out.get("select", {}), recipe.get("select.rule")
    for key, applies in (
        ("tau", rule != "top_fraction"),
        ("top_fraction", rule == "top_fraction" or recipe.get("select.top_fraction") != 1.0),
        ("min_contrast", rule == "contrast"),
        ("min_agreement", rule == "agreement"),
        ("agreement_samples", rule == "agreement"),
    ):
        if not applies:
            select.pop(key, None)
    return out


def _recovered(rows: list[dict]) -> float | None:
    by_name = {r["name"]: r["contains"] for r in rows}
    if not {"teacher", "chance", "target before", "target after"} <= set(by_name):
        return None
    return recovered(by_name["target after"], by_name["teacher"], by_name["chance"], by_name["target before"])


def _kept_and_lost(evaluation: dict | None) -> dict | None:
    """What the target knew before and lost after, item by item (None before a trained evaluation)."""
    by_name = {r["name"]: r for r in (evaluation or {}).get("rows", [])}
    if not {"target before", "target after"} <= set(by_name) or "items" not in evaluation:
        return None
    items = [EvalItem(i["prompt"], i["answer"], tuple(i.get("aliases") or ())) for i in evaluation["items"]]
    return kept_and_lost(items, by_name["target before"]["predictions"], by_name["target after"]["predictions"])


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
