"""The contrast keep rule: what it swaps, how it aligns two versions of an answer, and that the pipeline runs it."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
from conftest import recipe_dict, write_recipe
from test_pipeline import kill_resume_compare

from tskd_lite import contrast, pipeline, select
from tskd_lite.recipe import Select, load_recipe


@pytest.mark.parametrize(
    ("prompt", "keys"),
    [
        ("Where does Ada Lin live?", ["Ada Lin"]),
        ("What is 12 times 7?", ["12", "7"]),
        ("2015-04-05", ["2015", "04", "05"]),
        ("Name three primary colours.", []),
        ("Ada Lin lives in Brora, says Bo.", ["Lin", "Brora", "Bo"]),  # the first word is never a name
        ("Is it true that I met Ada Lin in Brora?", ["Ada Lin", "Brora"]),  # "I" is one letter, not a name
    ],
)
def test_key_spans_are_the_names_and_numbers_of_a_prompt(prompt, keys):
    assert contrast.key_spans(prompt) == keys


def test_swapped_versions_share_every_word_but_the_names():
    (plan,) = contrast.plan("Where does Ada Lin live?", "Ada Lin lives in Brora.", seed=3, k=1)
    new_prompt, new_answer, old, new = plan
    invented = new_prompt.removeprefix("Where does ").removesuffix(" live?")
    assert invented != "Ada Lin" and len(invented.split()) == 2 and new_answer == f"{invented} lives in Brora."
    assert old == [(0, 7)] and new == [(0, len(invented.encode()))]
    assert contrast.plan("Where does Ada Lin live?", "x", seed=3, k=2) == contrast.plan(
        "Where does Ada Lin live?", "x", seed=3, k=2
    )
    assert contrast.invent("2015", np.random.default_rng(0)).isdigit()
    assert len(contrast.invent("2015", np.random.default_rng(0))) == 4


def test_contrast_sums_the_difference_on_the_tokens_both_answers_share():
    # "Ada Lin| lives| in| Brora|." against "Zu Ko| lives| in| Brora|.": the name token differs, the rest aligns
    real_ends = [7, 13, 16, 22, 23]
    real_lps = [-0.1, -0.2, -0.1, -0.5, -0.1]
    swap_ends = [5, 11, 14, 20, 21]
    swap_lps = [-9.0, -0.2, -0.1, -3.5, -0.2]
    value = contrast.contrast((real_lps, real_ends), [(swap_lps, swap_ends, [(0, 7)], [(0, 5)])])
    assert value == pytest.approx(0.0 + 0.0 + 3.0 + 0.1)
    # an answer that is nothing but the swapped name shares no token: no contrast to measure
    assert contrast.contrast(([-0.1], [7]), [([-2.0], [5], [(0, 7)], [(0, 5)])]) is None


def _row(gap, c, n=10):
    return {"gap": gap, "teacher_ppl": 2.0, "n_tokens": n, "contrast": c}


def test_the_contrast_rule_drops_guesses_and_ranks_by_contrast():
    rule = Select(rule="contrast", tau=1.5, min_contrast=1.0, top_fraction=0.3)
    rows = [_row(1.0, 5.0), _row(1.0, 0.01), _row(1.0, None), _row(0.1, 9.0), _row(1.0, 2.0), _row(1.0, 3.0)]
    decisions = select.decide(rows, rule)
    assert [keep for keep, _ in decisions] == [True, False, False, False, False, True]
    assert "contrast 0.01 < min_contrast" in decisions[1][1]
    assert "no name or number" in decisions[2][1]
    assert "< tau" in decisions[3][1]  # a large contrast does not excuse a failed ratio test
    assert "outside the round's top_fraction" in decisions[4][1]  # ceil(0.3 x 6) = 2 fit: 5.0 and 3.0, not 2.0
    assert decisions[0][1] == (
        f"PPL ratio {math.exp(1.0):.3g} >= tau 1.5, contrast 5 >= min_contrast 1, within the round's top_fraction 0.3"
    )


def _with_contrast(raw):
    raw["seeds"]["prompts"] = [
        "Where does Ada Lin live?",
        "What is 12 times 7?",
        "Which town is home to Bo Kra?",
        "Name three primary colours.",
    ]
    raw["select"] = {"rule": "contrast", "tau": 1.0001, "min_contrast": 0.0}


def test_the_pipeline_measures_contrast_once_per_scored_pair(tiny, tmp_path):
    raw = recipe_dict(tiny, tmp_path / "run.db")
    _with_contrast(raw)
    loaded = load_recipe(write_recipe(tmp_path / "run.toml", raw))
    pipeline.run(loaded, progress=False, log=lambda _: None)
    con = sqlite3.connect(loaded.output.db)
    scored = {pid for (pid,) in con.execute("select prompt_id from scores")}
    measured = dict(con.execute("select prompt_id, contrast from contrasts").fetchall())
    assert set(measured) == scored
    reasons = dict(con.execute("select prompt_id, reason from selections").fetchall())
    texts = dict(con.execute("select id, text from prompts").fetchall())
    for pid, value in measured.items():
        if value is None:  # nothing to swap in the prompt
            assert not contrast.key_spans(texts[pid]) and reasons[pid].startswith("no name or number")
        else:
            assert contrast.key_spans(texts[pid])
    assert any(v is not None for v in measured.values())


def test_a_killed_run_with_the_contrast_rule_resumes_to_the_same_pool(tiny, tmp_path):
    points = [
        "select count(*) from contrasts c join prompts p on p.id = c.prompt_id where p.round = 1",
        "select count(*) from contrasts c join prompts p on p.id = c.prompt_id where p.round = 2",
    ]
    kill_resume_compare(tiny, tmp_path, _with_contrast, points, at_least=1, min_kills=1)
    con = sqlite3.connect(tmp_path / "killed.db")
    assert (
        con.execute("select count(*) from contrasts").fetchone()[0]
        == con.execute("select count(*) from scores").fetchone()[0]
    )
