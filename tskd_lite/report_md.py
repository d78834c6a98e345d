"""report.md from the report's figures (report.py gathers them): warnings first, then the evaluation with per-item
predictions, the dataset with the keep rule and example pairs, the training, and the models and recipe used."""

from __future__ import annotations

import math
from pathlib import Path

from tskd_lite.plots import threshold_label

CAPTIONS = {
    "eval.png": "evaluation per model against chance",
    "funnel.png": "per-round funnel: candidates, new, scored, kept",
    "gap_hist.png": "gap of each scored pair by round, kept and rejected, with the threshold",
    "loss.png": "training and validation loss by epoch",
}


def markdown(report: dict, plots: list[str], dataset_text: str) -> str:
    run = report.get("run") or {}
    out = ["# tskd-lite run report", ""]
    if run:
        out += [f"Run {run['id']} ({report['dataset']['status']}), recipe `{run['recipe_path']}`.", ""]
    out += warnings(report["warnings"])
    out += evaluation(report, plots)
    out += dataset(report, plots, dataset_text)
    out += training(report["train"], plots)
    out += models_and_recipe(report)
    return "\n".join(out).rstrip("\n") + "\n"


def _figure(name: str, plots: list[str]) -> list[str]:
    return [f"![{CAPTIONS[name]}]({name})", ""] if name in plots else []


def cell(text: str | None, limit: int = 120) -> str:
    """Text fit for one table cell: on one line, pipes escaped, cut at `limit` characters."""
    text = " ".join((text or "").split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def warnings(found: list[dict]) -> list[str]:
    out = ["## Warnings", ""]
    if not found:
        return out + [
            "None of the checks fired (every pair kept, a training loss near 0, exact match 0 for every model, the "
            "target worse after training, items lost, the target not above chance), as far as the run got.",
            "",
        ]
    return out + [f"- ⚠ {w['text']}" for w in found] + [""]


def evaluation(report: dict, plots: list[str]) -> list[str]:
    out = ["## Evaluation (held-out items, greedy decoding)", ""]
    if not report["eval"]:
        return out + ["No evaluation yet (the recipe has no [eval] table, or `tskd-lite eval` has not run).", ""]
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
            f"**What the target knew:** right before training on {harm['known_before']} "
            f"item{'' if harm['known_before'] == 1 else 's'}; kept "
            f"{harm['kept']}, **lost {harm['lost']}** (right before, wrong after); gained {harm['gained']}.",
        ]
    return out + [""] + _figure("eval.png", plots) + predictions(report.get("items"), report["eval"][0]["n"])


def predictions(items: list[dict] | None, n_items: int) -> list[str]:
    """A handful of held-out items with each model's reply: lost, gained and untransferred items first."""
    if not items:
        return []
    names = list(items[0]["replies"])
    out = [
        f"### Per-item predictions ({len(items)} of {n_items} items)",
        "",
        "✓: the reply contains the reference (the contains measure); ✗: it does not. `outcome` is the item's "
        "fate in training: lost (right before, wrong after), gained (wrong before, right after), not transferred "
        "(the teacher right, the target wrong after), kept (right before and after).",
        "",
        "| # | question | reference | " + " | ".join(names) + " | outcome |",
        "| ---: | --- | --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    for it in items:
        replies = [("✓ " if it["replies"][m]["contains"] else "✗ ") + cell(it["replies"][m]["text"], 70) for m in names]
        out.append(
            f"| {it['index'] + 1} | {cell(it['prompt'], 80)} | {cell(it['answer'], 40)} | "
            + " | ".join(replies)
            + f" | {it['outcome'] or '-'} |"
        )
    return out + [""]


def keep_rule(s: dict) -> str:
    """The keep rule and its threshold in one sentence."""
    unit = s.get("unit") or "token"
    if s["rule"] == "top_fraction":
        text = f"**Keep rule:** top_fraction: each round keeps its top {s['top_fraction']:g} of pairs by gap"
    elif s["rule"] == "token_gap":
        text = (
            f"**Keep rule:** token_gap, **τ = {s['tau']:g}**: a pair is kept when the mean teacher-over-base "
            f"log-prob lift of its answer's top quarter of tokens is at least ln τ = {math.log(s['tau']):.3f}"
        )
    else:
        text = (
            f"**Keep rule:** {s['rule']}, **τ = {s['tau']:g}**: a pair is kept when PPL_base / PPL_teacher ≥ "
            f"{s['tau']:g}, i.e. gap ≥ ln {s['tau']:g} = {s['gap_threshold']:.3f} nats per {unit}"
        )
        if s["rule"] == "contrast":
            text += f", and its contrast ≥ min_contrast {s['min_contrast']:g}"
        if s["rule"] == "agreement":
            text += (
                f", and {s['agreement_samples']} sampled answers repeat at least {s['min_agreement']:g} of its names "
                "and numbers on average"
            )
    text += f"; answers shorter than {s['min_answer_tokens']} tokens are rejected"
    if s.get("max_teacher_ppl") is not None:
        text += f", as are those the teacher finds less likely than PPL {s['max_teacher_ppl']:g}"
    return (
        text + f". Of {s['decided']} scored pairs selected so far, {s['kept']} were kept and {s['rejected']} rejected."
    )


def dataset(report: dict, plots: list[str], dataset_text: str) -> list[str]:
    out = ["## Dataset", "", "```", dataset_text, "```", ""]
    s = report.get("selection")
    if s:
        out += [keep_rule(s), ""]
    out += _figure("funnel.png", plots) + _figure("gap_hist.png", plots)
    if report.get("selection", {}).get("gap_threshold") is not None and "gap_hist.png" in plots:
        out += [f"The dashed line is {threshold_label(s)}.", ""]
    examples = report.get("examples") or {}
    for kind in ("kept", "rejected"):
        chosen = examples.get(kind)
        if chosen is None:
            continue
        out += [f"### Example {kind} pairs", ""]
        if not chosen:
            out += [f"None: no scored pair was {kind}.", ""]
            continue
        out += ["| round | gap | PPL ratio | prompt | answer | reason |", "| ---: | ---: | ---: | --- | --- | --- |"]
        out += [
            f"| {p['round']} | {p['gap']:.3f} | {p['ppl_ratio']:.3g} | {cell(p['prompt'], 90)} | "
            f"{cell(p['answer'], 120)} | {cell(p['reason'], 70)} |"
            for p in chosen
        ]
        out.append("")
    return out


def training(t: dict | None, plots: list[str]) -> list[str]:
    if not t:
        return []
    last_val = [p["val_loss"] for p in t["curve"] if p.get("val_loss") is not None]
    out = [
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
    return out + [""] + _figure("loss.png", plots)


def models_and_recipe(report: dict) -> list[str]:
    models, settings, run = report.get("models"), report.get("settings"), report.get("run")
    if not (models or settings):
        return []
    out = ["## Models and recipe", ""]
    for role, m in (models or {}).items():
        out.append(f"- **{role}**: " + ", ".join(f"{k} `{v}`" for k, v in m.items()))
    if run:
        out.append(f"- **recipe**: `{run['recipe_path']}` (hash {run['recipe_hash']})")
    for section, values in (settings or {}).items():
        out.append(f"- **{section}**: " + ", ".join(f"{k} {_value(v)}" for k, v in values.items()))
    return out + [""]


def _value(v) -> str:
    if isinstance(v, list):
        return f"[{len(v)} items]" if len(v) > 4 else "[" + ", ".join(map(str, v)) + "]"
    return f"`{v}`" if isinstance(v, str) else f"{v:g}" if isinstance(v, float) else str(v)
