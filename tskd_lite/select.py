"""The keep rule: which scored pairs of a round join the dataset."""

from __future__ import annotations

import math

import numpy as np

from tskd_lite.recipe import Select


def decide(scored: list[dict], rule: Select) -> list[tuple[bool, str]]:
    """Keep/drop with a reason for each scored row (keys: gap, teacher_ppl, n_tokens), in input order.

    gap = mean NLL_base - mean NLL_teacher = log(PPL_base / PPL_teacher), so the paper's ratio test
    PPL_base / PPL_teacher >= tau is gap >= log(tau).
    """
    decisions: list[tuple[bool, str] | None] = []
    eligible = []
    for i, row in enumerate(scored):
        if row["n_tokens"] < rule.min_answer_tokens:
            decisions.append((False, f"answer has {row['n_tokens']} tokens < min_answer_tokens"))
        elif rule.max_teacher_ppl is not None and row["teacher_ppl"] > rule.max_teacher_ppl:
            decisions.append((False, f"teacher PPL {row['teacher_ppl']:.3g} > max_teacher_ppl"))
        elif rule.rule == "ppl_ratio" and row["gap"] < math.log(rule.tau):
            decisions.append((False, f"PPL ratio {math.exp(row['gap']):.3g} < tau"))
        else:
            decisions.append(None)
            eligible.append(i)
    # The top fraction is taken of the whole round, so it means the same share whatever the other filters removed.
    n_top = math.ceil(rule.top_fraction * len(scored))
    ranked = sorted(eligible, key=lambda i: (-scored[i]["gap"], i))
    top = set(ranked[:n_top])
    for i in eligible:
        ratio = math.exp(scored[i]["gap"])
        if i in top:
            decisions[i] = (True, f"PPL ratio {ratio:.3g}")
        else:
            decisions[i] = (False, f"PPL ratio {ratio:.3g} outside the round's top_fraction")
    return decisions  # type: ignore[return-value]


def top_token_spans(
    teacher_logprobs: list[float], base_logprobs: list[float], byte_ends: list[int], fraction: float
) -> list[tuple[int, int]]:
    """Token-level selection (after TiTok, arXiv 2510.04682): the byte spans of the answer tokens where the
    teacher's log-prob exceeds the base's the most, the top `fraction` of each answer's tokens."""
    lift = np.asarray(teacher_logprobs) - np.asarray(base_logprobs)
    top = np.argsort(-lift, kind="stable")[: math.ceil(fraction * len(lift))]
    starts = [0, *byte_ends[:-1]]
    return [(starts[i], byte_ends[i]) for i in sorted(top.tolist())]
