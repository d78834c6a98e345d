"""What a reader of a run's report should worry about, in plain words: each check looks at the report's figures
and says something only when its condition holds, so a report without warnings has passed all of them."""

from __future__ import annotations

import math

# A training loss this low (nats per answer token) at the last step: the target reproduces its training answers
# nearly word for word, whatever it does on anything else.
MEMORISED_LOSS = 0.01


def check(report: dict) -> list[dict]:
    """[{"code", "text"}] of the checks whose condition holds, in the order a reader should take them."""
    found = []
    for code, test in (
        ("all_kept", _all_kept),
        ("memorised", _memorised),
        ("exact_match_useless", _exact_match_useless),
        ("harmed", _harmed),
        ("lost", _lost),
        ("not_above_chance", _not_above_chance),
    ):
        text = test(report)
        if text is not None:
            found.append({"code": code, "text": text})
    return found


def _all_kept(report: dict) -> str | None:
    s = report.get("selection") or {}
    if not s.get("decided") or s["kept"] < s["decided"]:
        return None
    rule = s["rule"] + (f", τ = {s['tau']:g}" if s.get("tau") is not None else "")
    lowest = s["lowest_gap"]
    return (
        f"**{'τ' if s.get('tau') is not None else 'The keep rule'} selected nothing: every one of the "
        f"{s['decided']} scored pairs was kept** (keep rule {rule}). "
        f"The dataset is every answer the teacher gave, not a selection of what it knows better than the base. "
        f"The lowest gap was {lowest:.3f} (a PPL ratio of {math.exp(lowest):.3g}); a τ above that would have "
        "dropped the weakest pairs."
    )


def _memorised(report: dict) -> str | None:
    curve = (report.get("train") or {}).get("curve") or []
    if not curve or curve[-1]["loss"] >= MEMORISED_LOSS:
        return None
    last = curve[-1]["loss"]
    val = [p["val_loss"] for p in curve if p.get("val_loss") is not None]
    versus = f", against a validation loss of {val[-1]:.3f}" if val else ""
    return (
        f"**The training loss reached {last:.3f}** nats per answer token at the last step{versus}: the target has "
        "memorised its training answers. What it learned beyond them shows in the evaluation, not in this loss; "
        "fewer epochs, a lower learning rate or `train.patience` (early stopping) train it less hard."
    )


def _rows(report: dict) -> dict[str, dict]:
    return {r["name"]: r for r in report.get("eval") or []}


def _exact_match_useless(report: dict) -> str | None:
    rows = _rows(report)
    chance = rows.pop("chance", None)
    if chance is None or not rows or chance["exact_match"] <= 0 or any(r["exact_match"] > 0 for r in rows.values()):
        return None
    return (
        f"**Exact match is 0 for every model, while chance scores {chance['exact_match']:.3f}**: exact match compares "
        "a reply's whole first line with the reference, so a reply that puts the answer in a sentence scores 0 (see "
        "the predictions); it tells the models nothing apart here. Read **contains**."
    )


def _harmed(report: dict) -> str | None:
    rows = _rows(report)
    if not {"target before", "target after"} <= set(rows):
        return None
    before, after = rows["target before"]["contains"], rows["target after"]["contains"]
    if after >= before:
        return None
    return (
        f"**Training harmed the target**: contains fell from {before:.3f} before training to {after:.3f} after. "
        "The dataset taught it less than it made it forget."
    )


def _lost(report: dict) -> str | None:
    harm = report.get("kept_and_lost")
    if not harm or harm["lost"] <= 0:
        return None
    text = (
        f"**The target lost {harm['lost']} of the {_items(harm['known_before'])} it answered right before training** "
        "(right before, wrong after), however its mean moved."
    )
    example = next((i for i in report.get("items") or [] if i["outcome"] == "lost"), None)
    if example is not None:
        replies = example["replies"]
        text += (
            f" For instance “{example['prompt']}” (reference “{example['answer']}”): before “"
            f"{_short(replies['target before']['text'])}”, after “{_short(replies['target after']['text'])}”."
        )
    return text


def _not_above_chance(report: dict) -> str | None:
    rows = _rows(report)
    if not {"target after", "chance"} <= set(rows) or rows["target after"]["contains"] > rows["chance"]["contains"]:
        return None
    return (
        f"**The trained target is not above chance** on contains ({rows['target after']['contains']:.3f} against "
        f"{rows['chance']['contains']:.3f}): guessing among the domain's own answers does as well."
    )


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
