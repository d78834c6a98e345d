"""The keep rule: which scored pairs of a round join the dataset."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tskd_lite.registry import Registry

if TYPE_CHECKING:  # the recipe checks rule names against RULES: no import of it here at run time
    from tskd_lite.recipe import Select


@dataclass(frozen=True)
class Rule:
    """A keep rule: why a scored row fails it (None: it passes), and the score a round's top_fraction ranks by."""

    fails: Callable[[dict, Select], str | None]
    rank: Callable[[dict], float]
    # measurements the pipeline takes before selecting, by name (pipeline.MEASUREMENTS: "contrast" is
    # tskd_lite/contrast.py's), beside the teacher and base scores every rule has
    needs: tuple[str, ...] = ()
    # an eligible row's reason; each rule names the thresholds it passed, so a reason reads alone in the store
    describe: Callable[[dict, Select], str] = lambda row, rule: f"PPL ratio {math.exp(row['gap']):.3g}"


def _ratio_fails(row: dict, rule: Select) -> str | None:
    if row["gap"] < math.log(rule.tau):
        return f"PPL ratio {math.exp(row['gap']):.3g} < tau {rule.tau:g}"
    return None


def _ratio_passes(row: dict, rule: Select) -> str:
    return f"PPL ratio {math.exp(row['gap']):.3g} >= tau {rule.tau:g}"


def _contrast_fails(row: dict, rule: Select) -> str | None:
    if row.get("contrast") is None:
        return "no name or number in the prompt to contrast"
    if row["contrast"] < rule.min_contrast:
        return f"contrast {row['contrast']:.3g} < min_contrast {rule.min_contrast:g}"
    return _ratio_fails(row, rule)


def _token_lift(row: dict) -> float:
    """Mean teacher-over-base log-prob lift of the answer's top quarter of tokens (TiTok's token-level gap): a
    fact is a few tokens of an answer, and the whole answer's mean dilutes them with the words around them."""
    if "token_lift" not in row:
        lift = np.asarray(json.loads(row["teacher_logprobs"])) - np.asarray(json.loads(row["base_logprobs"]))
        row["token_lift"] = float(np.sort(lift)[::-1][: math.ceil(len(lift) / 4)].mean())
    return row["token_lift"]


def _token_fails(row: dict, rule: Select) -> str | None:
    if row.get("unit") != "token":
        return "token_gap needs teacher and base to share a tokenizer"
    if _token_lift(row) < math.log(rule.tau):
        return f"top-token lift {_token_lift(row):.3g} < log(tau) {math.log(rule.tau):.3g}"
    return None


def _token_passes(row: dict, rule: Select) -> str:
    return f"top-token lift {_token_lift(row):.3g} >= log(tau) {math.log(rule.tau):.3g}"


def _agreement_fails(row: dict, rule: Select) -> str | None:
    if row.get("agreement") is None:
        return "the answer claims no name, number or word beyond the prompt's to check"
    if row["agreement"] < rule.min_agreement:
        return f"agreement {row['agreement']:.2f} < min_agreement {rule.min_agreement:g}"
    return _ratio_fails(row, rule)


RULES: Registry[Rule] = Registry("keep rule")
RULES.register("ppl_ratio")(Rule(_ratio_fails, lambda row: row["gap"], describe=_ratio_passes))
RULES.register("top_fraction")(Rule(lambda row, rule: None, lambda row: row["gap"]))
RULES.register("contrast")(
    Rule(
        _contrast_fails,
        lambda row: row["contrast"],
        needs=("contrast",),
        describe=lambda row, rule: (
            f"{_ratio_passes(row, rule)}, contrast {row['contrast']:.3g} >= min_contrast {rule.min_contrast:g}"
        ),
    )
)
RULES.register("token_gap")(Rule(_token_fails, _token_lift, describe=_token_passes))
RULES.register("agreement")(
    Rule(
        _agreement_fails,
        lambda row: row["gap"],
        needs=("agreement",),
        describe=lambda row, rule: (
            f"{_ratio_passes(row, rule)}, agreement {row['agreement']:.2f} >= min_agreement {rule.min_agreement:g}"
        ),
    )
)


def decide(scored: list[dict], rule: Select) -> list[tuple[bool, str]]:
    """Keep/drop with a reason for each scored row (keys: gap, teacher_ppl, n_tokens, contrast), in input order.

    gap = mean NLL_base - mean NLL_teacher = log(PPL_base / PPL_teacher), so the paper's ratio test
    PPL_base / PPL_teacher >= tau is gap >= log(tau). The shared filters run first, then the rule's own test.
    """
    keep = RULES[rule.rule]
    decisions: list[tuple[bool, str] | None] = []
    eligible = []
    for i, row in enumerate(scored):
        if row["n_tokens"] < rule.min_answer_tokens:
            decisions.append(
                (False, f"answer has {row['n_tokens']} tokens < min_answer_tokens {rule.min_answer_tokens}")
            )
        elif rule.max_teacher_ppl is not None and row["teacher_ppl"] > rule.max_teacher_ppl:
            decisions.append(
                (False, f"teacher PPL {row['teacher_ppl']:.3g} > max_teacher_ppl {rule.max_teacher_ppl:g}")
            )
        elif (why := keep.fails(row, rule)) is not None:
            decisions.append((False, why))
        else:
            decisions.append(None)
            eligible.append(i)
    # The top fraction is taken of the whole round, so it means the same share whatever the other filters removed.
    n_top = math.ceil(rule.top_fraction * len(scored))
    ranked = sorted(eligible, key=lambda i: (-keep.rank(scored[i]), i))
    top = set(ranked[:n_top])
    share = f"the round's top_fraction {rule.top_fraction:g}"
    for i in eligible:
        why = keep.describe(scored[i], rule)
        if i not in top:
            decisions[i] = (False, f"{why}, outside {share}")
        else:  # a fraction of 1 keeps every eligible row: nothing to say about it
            decisions[i] = (True, why if rule.top_fraction == 1.0 else f"{why}, within {share}")
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
