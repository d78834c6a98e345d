"""The results as markdown: every table from its column specs (a header and how a row's cell is written)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from .stats import noise_line, pool_round_means


@dataclasses.dataclass(frozen=True)
class Column:
    """One column: its header, its cell in a row, and its cell in a reference row (None: left blank)."""

    header: str
    cell: Callable[[Any], str]
    reference: Callable[[Any], str] | None = None


def _line(cells: Iterable[str]) -> str:
    return "|" + "".join(f" {c} |" if c else " |" for c in cells)


def header(columns: tuple[Column, ...]) -> list[str]:
    return [_line(c.header for c in columns), "|" + "---|" * len(columns)]


def rows(columns: tuple[Column, ...], items: Iterable, *, reference: bool = False) -> list[str]:
    """One line per item; reference rows take each column's reference cell, or leave it blank."""
    if reference:
        return [_line(c.reference(item) if c.reference else "" for c in columns) for item in items]
    return [_line(c.cell(item) for c in columns) for item in items]


def table(columns: tuple[Column, ...], items: Iterable) -> list[str]:
    return header(columns) + rows(columns, items)


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v:.0%}"


def _mean_sd_pct(v: dict | None) -> str:
    return "-" if v is None else f"{v['mean']:.0%} ± {v['sd']:.0%}"


def _mean_sd(v: dict) -> str:
    return f"{v['mean']:.3f} ± {v['sd']:.3f}"


def _harm(h: dict | None) -> str:
    """Items the target knew before and got wrong after (mean over seeds), over those it knew; bold when the
    arm ended below the target's own start."""
    if h is None:
        return ""
    text = f"{h['lost']:.1f} / {h['known_before']}"
    return f"**{text}**" if h["below_start"] else text


def _fact(key: str) -> Callable[[dict], str]:
    return lambda row: _pct((row["facts"] or {}).get(key))


# The arms table: one row per arm (its aggregate, named), under the reference rows (teacher, base, target before,
# chance: a name and an evaluation row each).
ARM_COLUMNS = (
    Column("model", lambda a: f"target: {a['name']}", lambda r: r["name"]),
    Column("contains", lambda a: _mean_sd(a["contains"]), lambda r: f"{r['contains']:.3f}"),
    Column("recovered", lambda a: _mean_sd_pct(a["recovered"])),
    Column(
        "NLL nats/byte",
        lambda a: _mean_sd(a["nll_per_byte"]),
        lambda r: "" if r["nll_per_byte"] is None else f"{r['nll_per_byte']:.3f}",
    ),
    Column("recovered (NLL)", lambda a: _pct(a["recovered_nll"])),
    Column("pairs", lambda a: "/".join(map(str, a["pairs"]))),
    Column("answer tokens", lambda a: f"{a['answer_tokens']:.0f}"),
    Column("train min", lambda a: f"{a['train_s'] / 60:.1f}"),
    Column("compute min", lambda a: f"{a['compute_s'] / 60:.1f}"),
    Column("lost / known before", lambda a: _harm(a.get("harm"))),
    Column("in-domain", _fact("in_domain")),
    Column("coverage", _fact("coverage")),
    Column("precision", _fact("precision")),
    Column("wrong rate", _fact("wrong_rate")),
)
REFERENCE_ROWS = (
    ("teacher", "teacher"),
    ("base", "base"),
    ("target_before", "target_before"),
    ("chance", "chance (the most similar other question's answer)"),
)
# The pools table: one row per pool and round, the mean over seeds (stats.pool_round_means)
POOL_COLUMNS = (
    Column("pool", lambda p: p["pool"]),
    Column("round", lambda p: f"{p['round']}"),
    Column("candidates", lambda p: f"{p['candidates']:.0f}"),
    Column("kept fraction", lambda p: f"{p['kept_fraction']:.2f}"),
    Column("median gap", lambda p: f"{p['median_gap']:.3f}"),
    Column("near-duplicates", lambda p: f"{p['near_duplicate_rate']:.2f}"),
    Column("distinct-2", lambda p: f"{p['distinct_2']:.2f}"),
    Column("in-domain", _fact("in_domain")),
    Column("coverage", _fact("coverage")),
    Column("precision", _fact("precision")),
    Column("wrong rate", _fact("wrong_rate")),
)
# The learning curve: one row per budget tried
CURVE_COLUMNS = (
    Column("budget", lambda p: p["budget"]),
    Column("pairs", lambda p: "/".join(map(str, p["pairs"]))),
    Column("steps", lambda p: f"{p['settings']['steps']}"),
    Column("rank", lambda p: f"{p['settings']['rank']}"),
    Column("lr", lambda p: f"{p['settings']['lr']:g}"),
    Column("contains", lambda p: _mean_sd(p["contains"])),
    Column("recovered", lambda p: _mean_sd_pct(p["recovered"])),
    Column("answer tokens", lambda p: f"{p['answer_tokens']:.0f}"),
    Column("train min", lambda p: f"{p['train_s'] / 60:.1f}"),
)


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
            f"**Warning: an advantage under {noise_line(r['teacher']['n']):.3f} on {r['teacher']['n']} "
            "items is within two standard errors of noise: recovered fractions on this domain measure little.**"
        )
    return lines


def markdown(results: dict) -> str:
    st = results["settings"]
    lines = [
        "# Transfer benchmark",
        "",
        f"`{results['command']}`: seeds {st['seeds']}; {_training(st)} (LoRA rank {st['rank']}, learning rate "
        f"{st['lr']:g}); this invocation's wall time {results['wall_s'] / 60:.1f} min (steps already cached are "
        "read, not recomputed).",
        "",
        "**Recovered** (the headline): (arm - floor) / (teacher - floor) on contains, floor = max(chance row, target "
        "before), per seed, mean ± sd. Contains: the reference answer inside the model's answer, on held-out items. "
        "Recovered (NLL): (target before - arm) / (base - teacher) on the reference NLL. Coverage, precision and "
        "wrong rate: fact-level measures of the pairs the arm trains on (bench/facts.py), where the domain ships "
        "facts.jsonl. Train min: CPU minutes of the arm's training; compute min: training plus evaluation.",
    ]
    for d in results["domains"]:
        lines += _domain_head(d) + _arms_table(d) + [""] + _comparisons(d) + _pools_table(d)
    return "\n".join(lines) + "\n"


def _training(st: dict) -> str:
    """How every arm was trained, as the settings say (results from before budgets followed the domain have a
    fixed pairs and steps and no epochs)."""
    pairs = f"up to {st['pairs']} pairs" if st.get("pairs") else "up to the domain's budget of pairs (below)"
    if st.get("steps"):
        return f"every arm trains {st['steps']} steps on {pairs}"
    if st.get("patience"):
        return (
            f"every arm trains up to {st['epochs']:g} epochs over the pairs it draws, stopped when the loss on a "
            f"held-out tenth of them has not improved for {st['patience']} epochs, {pairs}"
        )
    if st.get("max_passes"):
        return (
            f"every arm trains the domain's budget ({st['epochs']:g} epochs over the domain's pairs), at most "
            f"{st['max_passes']:g} passes over the pairs it draws, {pairs}"
        )
    return f"every arm trains {st['epochs']:g} epochs over the pairs it draws, {pairs}"


def _domain_head(d: dict) -> list[str]:
    r = d["references"]
    lines = ["", f"## {d['domain']} ({r['teacher']['n']} held-out items)", "", *teacher_lines(d), ""]
    if d.get("budget"):
        b = d["budget"]
        lines += [
            f"Budget from the domain's size ({b['size']} training pairs of the teacher's): up to {b['pairs']} "
            f"pairs per arm; {b['candidates_per_round']} prompts a round in each written pool (entities and "
            "follow: every form x name).",
            "",
        ]
    if d.get("reachable"):
        lines += [
            "Reachable ceiling (share of the held-out facts whose entity is named by): "
            + ", ".join(f"{k} {v:.0%}" for k, v in d["reachable"].items())
            + ".",
            "",
        ]
    return lines + [
        f"Compute behind these results: {'' if d['compute_s_complete'] else 'at least '}"
        f"{d['compute_s'] / 60:.1f} min (teacher references, pools, training and evaluation, each timed when "
        "it was computed).",
        "",
    ]


def _arms_table(d: dict) -> list[str]:
    references = [{"name": label, **d["references"][key]} for key, label in REFERENCE_ROWS]
    arms = [{"name": arm, **a} for arm, a in d["arms"].items()]
    return header(ARM_COLUMNS) + rows(ARM_COLUMNS, references, reference=True) + rows(ARM_COLUMNS, arms)


def _comparisons(d: dict) -> list[str]:
    lines = []
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
    return lines


def _pools_table(d: dict) -> list[str]:
    has_facts = any("facts" in x for p in d["pools"] for pool in p.values() for x in pool["rounds"])
    return [
        "",
        "Pools per round (mean over seeds): kept fraction, median gap, near-duplicate rate, distinct word bigrams"
        + ("; coverage and precision of the pairs kept up to that round" if has_facts else "")
        + ".",
        "",
        *table(POOL_COLUMNS, pool_round_means(d["pools"])),
    ]


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
            *table(CURVE_COLUMNS, c["points"]),
        ]
    return "\n".join(lines) + "\n"
