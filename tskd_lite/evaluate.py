"""Held-out evaluation of teacher, base, and target before and after training, on the same items.

Greedy decoding everywhere. Teacher and base run in llama.cpp on the teacher's chat template (as in scoring);
the target runs in transformers on its own template (as in training). Metrics: exact match of the answer's first
line and contains-match, both after normalisation, and the reference answer's NLL in nats per UTF-8 byte, the one
unit that compares across tokenizers.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path

import numpy as np

from tskd_lite import atomic
from tskd_lite.errors import TskdError
from tskd_lite.jsonl import EvalItem, read_eval_file  # noqa: F401 (evaluation's item type and reader)


def normalise_answer(text: str) -> str:
    """Case, punctuation, whitespace and number formatting folded: '1,000.50 Apples!' -> '1000.5 apples'."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"\d+\.\d+", lambda m: m.group().rstrip("0").rstrip("."), text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # full stops go, decimal points stay
    text = re.sub(r"[^\w\s.]", " ", text)
    return " ".join(text.split())


def match(prediction: str, item: EvalItem) -> tuple[bool, bool]:
    """(exact match of the first line, reference contained as whole words anywhere)."""
    refs = {normalise_answer(r) for r in (item.answer, *item.aliases)}
    lines = prediction.strip().splitlines()
    first = normalise_answer(lines[0]) if lines else ""
    whole = f" {normalise_answer(prediction)} "
    return first in refs, any(f" {r} " in whole for r in refs if r)


def _row(name: str, runtime: str, items: list[EvalItem], predictions: list[str], nll_bytes: list[float] | None) -> dict:
    matches = [match(p, it) for p, it in zip(predictions, items, strict=True)]
    return {
        "name": name,
        "runtime": runtime,
        "n": len(items),
        "exact_match": float(np.mean([m[0] for m in matches])),
        "contains": float(np.mean([m[1] for m in matches])),
        "nll_per_byte": None if nll_bytes is None else float(np.mean(nll_bytes)),
        "predictions": predictions,
    }


def chance_row(items: list[EvalItem]) -> dict:
    """Answer each item with the reference of the most similar other item (character trigram Jaccard of the
    prompts): what the answer format plus guessing among the domain's own answers scores, with no knowledge."""

    def grams(text: str) -> set[str]:
        t = normalise_answer(text)
        return {t[i : i + 3] for i in range(max(1, len(t) - 2))}

    shingles = [grams(it.prompt) for it in items]
    predictions = []
    for i, own in enumerate(shingles):
        sims = [len(own & other) / len(own | other) if j != i else -1.0 for j, other in enumerate(shingles)]
        predictions.append(items[int(np.argmax(sims))].answer if len(items) > 1 else "")
    return _row("chance", "nearest item", items, predictions, None)


def recovered(after: float, teacher: float, chance: float, before: float) -> float | None:
    """The share of the teacher's advantage that the target recovered, on a chance-adjusted scale:
    (after - floor) / (teacher - floor) with floor = max(chance, target before), so that guessing among the
    domain's answers or what the target already knew counts as nothing. None when the teacher is not above the
    floor (there is nothing to recover)."""
    floor = max(chance, before)
    return (after - floor) / (teacher - floor) if teacher > floor else None


def kept_and_lost(items: list[EvalItem], before: list[str], after: list[str]) -> dict:
    """Do no harm, item by item on contains: what the target knew before training (right before), how much of it it
    kept and lost (right before, wrong after), and what it gained (wrong before, right after). A fine-tune can
    raise the mean while it erases facts the target had; the mean alone does not show it."""
    right_before = [match(p, it)[1] for p, it in zip(before, items, strict=True)]
    right_after = [match(p, it)[1] for p, it in zip(after, items, strict=True)]
    pairs = list(zip(right_before, right_after, strict=True))
    return {
        "known_before": sum(right_before),
        "kept": sum(b and a for b, a in pairs),
        "lost": sum(b and not a for b, a in pairs),
        "gained": sum(a and not b for b, a in pairs),
    }


def eval_backend(name: str, engine, render_with, items: list[EvalItem], max_tokens: int, progress: bool) -> dict:
    """A teacher or base row: greedy replies to the items rendered by render_with's template (the teacher's for
    both, as in scoring), and the reference answers' NLL per byte."""
    from tqdm import tqdm

    predictions, nll = [], []
    for start in tqdm(
        range(0, len(items), engine.parallel), desc=f"eval {name}", disable=not progress, dynamic_ncols=True
    ):
        chunk = items[start : start + engine.parallel]
        rendered = [render_with.render(it.prompt) for it in chunk]
        gens = engine.generate(rendered, max_tokens=max_tokens, temperature=0.0, top_p=1.0, seeds=[0] * len(chunk))
        predictions += [g.text for g in gens]
        scored = engine.score_answers([(r, it.answer) for r, it in zip(rendered, chunk, strict=True)])
        nll += [-float(s.logprobs.sum()) / len(it.answer.encode()) for s, it in zip(scored, chunk, strict=True)]
    return _row(name, engine.runtime, items, predictions, nll)


def eval_transformers(
    name: str,
    model_dir: Path,
    formatter_for,
    items: list[EvalItem],
    max_tokens: int,
    progress: bool,
    batch_size: int = 8,
) -> dict:
    import torch

    from tskd_lite.target import answer_logprobs, greedy_answers, load_fp32

    tokenizer, model = load_fp32(model_dir)
    fmt = formatter_for(tokenizer)
    prompts = [it.prompt for it in items]
    predictions = greedy_answers(
        model, tokenizer, fmt, prompts, max_tokens, batch_size=batch_size, progress=progress, desc=f"eval {name}"
    )
    nll = []
    with torch.no_grad():
        for item in items:
            # The reference as the target would write it after its prompt (the plain template's leading
            # space included), counting the answer's tokens only, not the end-of-turn marker.
            ids, labels = fmt.encode(item.prompt, item.answer, 1 << 20, template_loss=False)
            first = next(i for i, t in enumerate(labels) if t != -100)
            n = sum(t != -100 for t in labels)  # answer tokens are one run; only template tokens follow
            lp = answer_logprobs(model, ids[:first], ids[first : first + n])
            nll.append(-float(lp.sum()) / len(item.answer.encode()))
    return _row(name, "transformers", items, predictions, nll)


def evaluate(recipe, *, train_dir: Path | None, progress: bool = True, log=print) -> dict:
    """The four rows (teacher, base, target before, target after where trained) and the chance baseline;
    writes run_dir/eval.json."""
    from tskd_lite.backends import open_backend
    from tskd_lite.target import Formatter, hf_dir, quiet_transformers

    if recipe.eval is None or recipe.target is None:
        raise TskdError(f"{recipe.path}: eval: [eval] and [target] tables are needed to evaluate")
    quiet_transformers()
    cfg = recipe.eval
    items = read_eval_file(cfg.file, f"{recipe.path}: eval.file")
    items = items[: cfg.limit] if cfg.limit else items
    merged = train_dir / "merged" if train_dir is not None else None
    # train.json is training's done-marker: merged outputs without it are a training that did not finish
    trained = merged is not None and (merged / "config.json").is_file() and (train_dir / "train.json").is_file()
    fingerprint = _eval_fingerprint(recipe, items, train_dir if trained else None)
    out = recipe.output.run_dir / "eval.json"
    try:
        done = json.loads(out.read_text())
    except (OSError, ValueError):
        done = {}
    if done.get("fingerprint") == fingerprint:
        log(f"evaluation already done for these models and items: {out} (delete it to evaluate again)")
        return done
    log(f"evaluating on {len(items)} held-out items from {cfg.file.name}")
    rows = []
    teacher = open_backend(recipe.teacher, role="teacher", threads=recipe.threads, parallel=recipe.parallel)
    rows.append(eval_backend("teacher", teacher, teacher, items, cfg.max_answer_tokens, progress))
    base = open_backend(recipe.base, role="base", threads=recipe.threads, parallel=recipe.parallel)
    rows.append(eval_backend("base", base, teacher, items, cfg.max_answer_tokens, progress))
    teacher.close()
    base.close()

    def formatter_for(tokenizer):
        return Formatter.for_target(tokenizer, recipe.target)

    rows.append(
        eval_transformers(
            "target before", hf_dir(recipe.target, log), formatter_for, items, cfg.max_answer_tokens, progress
        )
    )
    if trained:
        rows.append(eval_transformers("target after", merged, formatter_for, items, cfg.max_answer_tokens, progress))
    rows.append(chance_row(items))
    result = {"items": [it.__dict__ for it in items], "rows": rows, "fingerprint": fingerprint}
    recipe.output.run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out, json.dumps(result, indent=2, default=list))
    return result


def _eval_fingerprint(recipe, items: list[EvalItem], train_dir: Path | None) -> str:
    """What an evaluation's rows depend on: the items, the settings, the models by content and the training."""
    from tskd_lite.backends import backend_class
    from tskd_lite.gguf_meta import identity

    ids = {}
    for role in ("teacher", "base"):
        spec = getattr(recipe, role)
        ids |= backend_class(spec).identities(spec, role)
    # in this order, so that an evaluation recorded before backends existed is still found done
    models = [ids["teacher.model"], ids["base.model"], identity(recipe.target.model)]
    models += [ids[key] for key in ("teacher.lora", "base.lora") if key in ids]
    parts = {
        "items": [it.__dict__ for it in items],
        "max_answer_tokens": recipe.eval.max_answer_tokens,
        "templates": [recipe.teacher.chat_template, recipe.base.chat_template, recipe.target.chat_template],
        "models": models,
        "training": json.loads((train_dir / "train.json").read_text()).get("fingerprint") if train_dir else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=list).encode()).hexdigest()[:16]
