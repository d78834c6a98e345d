from __future__ import annotations

import math

import numpy as np
import pytest

from tskd_lite.dedup import Pool, normalise
from tskd_lite.recipe import Select
from tskd_lite.score import gap
from tskd_lite.select import decide


def test_gap_on_hand_computed_numbers():
    # teacher: mean NLL (0.1 + 0.3 + 0.2) / 3 = 0.2; base: (1.0 + 0.5 + 0.9) / 3 = 0.8
    row = gap([-0.1, -0.3, -0.2], [-1.0, -0.5, -0.9], "token", n_bytes=12)
    assert row["teacher_nll"] == pytest.approx(0.2)
    assert row["base_nll"] == pytest.approx(0.8)
    assert row["gap"] == pytest.approx(0.6)
    assert row["teacher_ppl"] == pytest.approx(math.exp(0.2))
    assert row["base_ppl"] / row["teacher_ppl"] == pytest.approx(math.exp(0.6))
    assert row["n_units"] == row["n_tokens"] == 3


def test_per_byte_gap_spreads_each_models_total_over_the_bytes():
    # teacher tokenised the answer into 2 tokens, base into 4; totals 0.6 and 2.4 nats over 12 bytes
    row = gap([-0.2, -0.4], [-0.6, -0.6, -0.6, -0.6], "byte", n_bytes=12)
    assert row["teacher_nll"] == pytest.approx(0.05)
    assert row["base_nll"] == pytest.approx(0.2)
    assert row["gap"] == pytest.approx(0.15)
    assert row["n_units"] == 12 and row["n_tokens"] == 2


def _rows(*gaps, ppl=2.0, n=10):
    return [{"gap": g, "teacher_ppl": ppl, "n_tokens": n} for g in gaps]


def test_ppl_ratio_rule_keeps_ratio_at_or_above_tau():
    tau = 1.5
    rows = _rows(math.log(1.49), math.log(1.5) + 1e-12, math.log(3.0), -0.2)
    kept = [k for k, _ in decide(rows, Select(rule="ppl_ratio", tau=tau))]
    assert kept == [False, True, True, False]


def test_top_fraction_caps_and_filters():
    rows = _rows(0.1, 0.9, 0.5, 0.7)
    assert [k for k, _ in decide(rows, Select(rule="top_fraction", top_fraction=0.5))] == [False, True, False, True]
    # with ppl_ratio, 0.9, 0.5 and 0.7 pass tau (log 1.5 = 0.405); the round's top quarter (one pair) keeps 0.9
    sel = Select(rule="ppl_ratio", tau=1.5, top_fraction=0.25)
    assert [k for k, _ in decide(rows, sel)] == [False, True, False, False]


def test_caps_on_teacher_ppl_and_answer_length():
    rows = [
        {"gap": 2.0, "teacher_ppl": 50.0, "n_tokens": 10},
        {"gap": 2.0, "teacher_ppl": 3.0, "n_tokens": 2},
        {"gap": 2.0, "teacher_ppl": 3.0, "n_tokens": 10},
    ]
    decisions = decide(rows, Select(max_teacher_ppl=20.0, min_answer_tokens=5))
    assert [k for k, _ in decisions] == [False, False, True]
    assert "max_teacher_ppl" in decisions[0][1] and "min_answer_tokens" in decisions[1][1]


def test_normalise_and_near_duplicates():
    assert normalise("  What IS the  capital, of France?? ") == "what is the capital of france"
    pool = Pool(near_threshold=0.5)
    pool.add(1, normalise("What is the capital of France?"))
    pool.add(2, normalise("How many legs does a spider have?"))
    assert pool.duplicate_of(normalise("what is the capital of france")) == 1  # exact after normalising
    assert pool.duplicate_of(normalise("What is the capital city of France?")) == 1  # near
    assert pool.duplicate_of(normalise("Name a prime number above 100.")) is None
    assert Pool(near_threshold=1.0).duplicate_of("anything") is None


def test_minhash_estimates_jaccard():
    from tskd_lite.dedup import SHINGLE, signature

    a, b = normalise("the quick brown fox jumps over the lazy dog"), normalise("the quick brown fox leaps over a dog")
    grams = [{s[i : i + SHINGLE] for i in range(len(s) - SHINGLE + 1)} for s in (a, b)]
    true = len(grams[0] & grams[1]) / len(grams[0] | grams[1])
    estimate = float(np.mean(signature(a) == signature(b)))
    assert abs(estimate - true) < 0.15


def test_clean_keeps_the_first_prompt_of_a_reply():
    from tskd_lite.expand import clean

    assert clean("  1. Where does Ana live?\n2. Where does Bo live?") == "Where does Ana live?"
    assert clean("Question: What is 2 + 2?") == "What is 2 + 2?"
    assert clean('"Name a river."\n\nHere is another: Name a lake.') == "Name a river."
    assert clean("-\n- A tortoise lives in X.\nA tortoise lives in X.") == "A tortoise lives in X."
    assert clean("  \n ") == ""


def test_token_gap_keeps_an_answer_whose_few_top_tokens_carry_the_lift():
    import json

    # 8 tokens: the whole answer's mean lift is 0.25 (< log 1.5 = 0.405), its top quarter's (2 tokens) is 1.0
    teacher = [-0.1] * 6 + [-0.1, -0.1]
    base = [-0.1] * 6 + [-1.1, -1.1]
    row = {
        "gap": 0.25,
        "teacher_ppl": 1.1,
        "n_tokens": 8,
        "unit": "token",
        "teacher_logprobs": json.dumps(teacher),
        "base_logprobs": json.dumps(base),
    }
    flat = dict(row, base_logprobs=json.dumps([-0.3] * 8), gap=0.2)  # the same mean spread evenly: no peak
    per_byte = dict(row, unit="byte")
    ratio = decide([dict(row), dict(flat)], Select(rule="ppl_ratio", tau=1.5))
    token = decide([dict(row), dict(flat), dict(per_byte)], Select(rule="token_gap", tau=1.5))
    assert [k for k, _ in ratio] == [False, False]
    assert [k for k, _ in token] == [True, False, False]
    assert "top-token lift 0.2 < log(tau)" in token[1][1] and "share a tokenizer" in token[2][1]
