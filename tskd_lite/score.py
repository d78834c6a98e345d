"""The perplexity gap: how much surer the teacher is of its own answer than the base is."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from tskd_lite.backends import Backend


def gap(teacher_logprobs: Sequence[float], base_logprobs: Sequence[float], unit: str, n_bytes: int) -> dict:
    """Mean NLL of the answer under each model and their difference.

    unit "token": both models share a tokenizer, so NLLs are averaged over the same answer tokens.
    unit "byte": tokenizers differ, so each model's total NLL is spread over the answer's UTF-8 bytes,
    the only length both agree on.
    """
    t_total, b_total = -float(np.sum(teacher_logprobs)), -float(np.sum(base_logprobs))
    n_units = len(teacher_logprobs) if unit == "token" else n_bytes
    if n_units == 0:
        raise ValueError("cannot score an empty answer")
    t, b = t_total / n_units, b_total / n_units
    return {
        "unit": unit,
        "n_units": n_units,
        "n_tokens": len(teacher_logprobs),
        "teacher_nll": t,
        "base_nll": b,
        "gap": b - t,
        "teacher_ppl": math.exp(t),
        "base_ppl": math.exp(b),
    }


def score_pairs(teacher: Backend, base: Backend, pairs: list[tuple[str, str]], unit: str) -> list[dict]:
    """Score (prompt, answer) pairs under teacher and base, batched; both see the teacher's rendering."""
    start = time.perf_counter()
    rendered = [(teacher.render(prompt), answer) for prompt, answer in pairs]
    t_scores = teacher.score_answers(rendered, byte_ends=True)
    # the base's own token ends only where its tokenizer is not the teacher's (the answer_tokens view cuts its
    # tokens by them; with one tokenizer the teacher's ends are the base's)
    b_scores = base.score_answers(rendered, byte_ends=unit == "byte")
    seconds = (time.perf_counter() - start) / len(pairs)  # the batch's time, shared evenly by its pairs
    rows = []
    for (_, answer), t, b in zip(pairs, t_scores, b_scores, strict=True):
        row = gap(t.logprobs, b.logprobs, unit, len(answer.encode("utf-8")))
        row.update(
            teacher_logprobs=_compact(t.logprobs),
            teacher_byte_ends=_ends(t.byte_ends),
            base_logprobs=_compact(b.logprobs),
            base_byte_ends=_ends(b.byte_ends) if unit == "byte" else None,
            decoded_tokens=t.n_tokens + b.n_tokens,
            seconds=seconds,
        )
        rows.append(row)
    return rows


def _compact(logprobs: Sequence[float]) -> str:
    return "[" + ",".join(f"{x:.5g}" for x in logprobs) + "]"


def _ends(byte_ends: Sequence[int]) -> str:
    return "[" + ",".join(map(str, byte_ends)) + "]"
