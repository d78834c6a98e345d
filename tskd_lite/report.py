"""What a run did, read back from the store: per-round counts, the gap distribution, timings and throughput."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tskd_lite import atomic
from tskd_lite.errors import TskdError
from tskd_lite.evaluate import EvalItem, kept_and_lost, recovered
from tskd_lite.rundir import lock
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
                "duplicates": counts.get("duplicate", 0),
                "empty": counts.get("empty", 0),
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
    info_path = run_dir / "run.json"
    if not info_path.is_file():
        raise TskdError(f"{run_dir}: not a run folder (no run.json; `tskd-lite run` writes it)")
    with lock(run_dir):
        return _write_report(run_dir, json.loads(info_path.read_text()))


def _write_report(run_dir: Path, info: dict) -> Path:
    with Store.read(Path(info["db"])) as store:
        run_id = store.get_run(info.get("run_id")).id  # None: the latest (a folder trained before any `run`)
        dataset = summary(store, run_id)
        gaps = store.gaps_by_round(run_id)
    train = _read_json(run_dir / "train" / "train.json")
    evaluation = _read_json(run_dir / "eval.json")
    rows = [{k: v for k, v in r.items() if k != "predictions"} for r in (evaluation or {}).get("rows", [])]
    report = {"dataset": dataset, "train": train, "eval": rows, "recovered": _recovered(rows)}
    report["kept_and_lost"] = _kept_and_lost(evaluation)
    atomic.write_text(run_dir / "report.json", json.dumps(report, indent=2))
    plots = _plots(run_dir, gaps, dataset["unit"], train)
    atomic.write_text(run_dir / "report.md", _markdown(report, plots))
    return run_dir / "report.md"


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


def _plots(run_dir: Path, gaps: dict[int, list[float]], unit: str | None, train: dict | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    if gaps:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        every = [g for values in gaps.values() for g in values]
        bins = np.linspace(min(every), max(every), 25) if max(every) > min(every) else 10
        for round_, values in gaps.items():
            ax.hist(values, bins=bins, alpha=0.5, label=f"round {round_}")
        ax.set_xlabel(f"gap = log PPL_base - log PPL_teacher (per {unit or 'token'})")
        ax.set_ylabel("pairs")
        ax.legend()
        fig.tight_layout()
        with atomic.replacing(run_dir / "gap_hist.png", "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        plt.close(fig)
        names.append("gap_hist.png")
    if train and train.get("curve"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        curve = train["curve"]
        ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], label="train")
        val = [p for p in curve if p.get("val_loss") is not None]
        if val:
            ax.plot([p["step"] for p in val], [p["val_loss"] for p in val], "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("answer-token loss (nats)")
        ax.legend()
        fig.tight_layout()
        with atomic.replacing(run_dir / "loss.png", "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        plt.close(fig)
        names.append("loss.png")
    return names


def _markdown(report: dict, plots: list[str]) -> str:
    d, t = report["dataset"], report["train"]
    out = ["# tskd-lite run report", "", "## Evaluation (held-out items, greedy decoding)", ""]
    if report["eval"]:
        out += [
            "| model | runtime | items | exact match | contains | reference NLL (nats/byte) |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        out += [
            f"| {r['name']} | {r['runtime']} | {r['n']} | {r['exact_match']:.3f} | {r['contains']:.3f} | "
            f"{'-' if r['nll_per_byte'] is None else format(r['nll_per_byte'], '.4f')} |"
            for r in report["eval"]
        ]
        share = report.get("recovered")
        if share is not None:
            out += [
                "",
                f"**Recovered: {share:.0%}** of the teacher's advantage on contains, chance-adjusted: "
                "(target after - floor) / (teacher - floor), floor = max(chance, target before).",
            ]
        harm = report.get("kept_and_lost")
        if harm is not None:
            out += [
                "",
                f"**What the target knew:** right before training on {harm['known_before']} items; kept "
                f"{harm['kept']}, **lost {harm['lost']}** (right before, wrong after); gained {harm['gained']}.",
            ]
    else:
        out.append("No evaluation yet (the recipe has no [eval] table, or `tskd-lite eval` has not run).")
    out += ["", "## Dataset", "", "```", format_summary(d), "```", ""]
    if t:
        last_val = [p["val_loss"] for p in t["curve"] if p.get("val_loss") is not None]
        out += [
            "## Training",
            "",
            f"- mode: {t['mode']} ({t['device']}); target rendered with the {t['template']}",
            f"- {t['n_train']} training and {t['n_val']} validation pairs, {t['steps']} steps, "
            f"{t['answer_tokens']} answer tokens in {t['seconds']:.1f} s ({t['tokens_per_s']:.0f} answer tokens/s)"
            + (f"; {t['n_replay']} of the pairs are the target's own replayed answers" if t.get("n_replay") else ""),
            f"- loss: first step {t['curve'][0]['loss']:.3f}, last step {t['curve'][-1]['loss']:.3f}"
            + (f"; validation after each epoch: {', '.join(f'{v:.3f}' for v in last_val)}" if last_val else ""),
        ]
        if t.get("gguf_check"):
            g = t["gguf_check"]
            out.append(
                f"- GGUF LoRA adapter `{Path(t['gguf_adapter']).name}` on the target GGUF in llama.cpp vs the "
                f"merged model in transformers: max |Δ log p| {g['max_abs_diff']:.4f}, mean "
                f"{g['mean_abs_diff']:.4f} over {g['tokens']} tokens (the same comparison without the adapter, "
                f"i.e. the two runtimes on the GGUF's quantized weights: max {g['base_max_abs_diff']:.4f}, mean "
                f"{g['base_mean_abs_diff']:.4f})"
            )
        out.append("")
    out += [f"![{name}]({name})" for name in plots]
    return "\n".join(out) + "\n"
