"""What a run did, read back from the store: per-round counts, the gap distribution, timings and throughput."""

from __future__ import annotations

import math

import numpy as np

from tskd_lite.store import Store


def summary(store: Store, run_id: int) -> dict:
    db = store.db
    run = db["runs"].get(run_id)
    rounds = []
    for (round_,) in db.execute("select distinct round from prompts where run_id = ? order by round", [run_id]):
        counts = dict(
            db.execute(
                "select status, count(*) from prompts where run_id = ? and round = ? group by status", [run_id, round_]
            ).fetchall()
        )
        gaps = [
            r[0]
            for r in db.execute(
                "select s.gap from scores s join prompts p on p.id = s.prompt_id where p.run_id = ? and p.round = ?",
                [run_id, round_],
            )
        ]
        selected = store.round_selected(run_id, round_)
        rounds.append(
            {
                "round": round_,
                "candidates": sum(counts.values()),
                "duplicates": counts.get("duplicate", 0),
                "empty": counts.get("empty", 0),
                "scored": len(gaps),
                "kept": None if selected is None else selected["n_kept"],
                "gap": _quantiles(gaps),
            }
        )
    gen = db.execute(
        """select coalesce(sum(gen_tokens), 0), coalesce(sum(gen_seconds), 0) from prompts where run_id = ?
           union all
           select coalesce(sum(a.n_tokens), 0), coalesce(sum(a.seconds), 0) from answers a
           join prompts p on p.id = a.prompt_id where p.run_id = ?""",
        [run_id, run_id],
    ).fetchall()
    score = db.execute(
        """select coalesce(sum(s.decoded_tokens), 0), coalesce(sum(s.seconds), 0) from scores s
           join prompts p on p.id = s.prompt_id where p.run_id = ?""",
        [run_id],
    ).fetchone()
    pool = db.execute("select count(*) from prompts where run_id = ? and status = 'new'", [run_id]).fetchone()[0]
    gen_tokens, gen_seconds = sum(g[0] for g in gen), sum(g[1] for g in gen)
    return {
        "run_id": run_id,
        "status": run["status"],
        "message": run["message"],
        "unit": run["unit"],
        "elapsed_s": run["elapsed_s"],
        "pool": pool,
        "kept": sum(r["kept"] or 0 for r in rounds),
        "rounds": rounds,
        "generation": {"tokens": gen_tokens, "seconds": gen_seconds, "tokens_per_s": _rate(gen_tokens, gen_seconds)},
        "scoring": {"tokens": score[0], "seconds": score[1], "tokens_per_s": _rate(score[0], score[1])},
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
    for name in ("generation", "scoring"):
        t = s[name]
        rate = "-" if t["tokens_per_s"] is None else f"{t['tokens_per_s']:.0f} tokens/s"
        lines.append(f"{name}: {t['tokens']} tokens in {t['seconds']:.1f} s ({rate})")
    return "\n".join(lines)
