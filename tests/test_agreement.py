"""The agreement keep rule: which words of an answer are its claims, how samples agree with them, and that the
pipeline samples once per scored pair and resumes."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
from conftest import recipe_dict, write_recipe
from test_pipeline import kill_resume_compare

from tskd_lite import agreement, pipeline, select
from tskd_lite.errors import TskdError
from tskd_lite.recipe import Select, load_recipe


@pytest.mark.parametrize(
    ("prompt", "answer", "said"),
    [
        ("Where does Ada Lin work?", "Ada Lin works at Orvan Labs.", ["orvan", "labs"]),
        ("When was Tessa born?", "Tessa was born in 1987.", ["1987"]),
        ("Who founded Orvan Labs?", "It was founded by Ada Lin in Brora.", ["ada", "lin", "brora"]),
        ("Name three primary colours.", "They are red, blue and yellow.", ["red", "blue", "yellow"]),  # no name
        ("What colour is the sky?", "Blue.", ["blue"]),  # a capital that opens the answer counts as a name
        ("Where does Ada Lin work?", "Ada Lin.", []),  # nothing beyond the prompt
    ],
)
def test_claims_are_the_names_and_numbers_the_answer_adds(prompt, answer, said):
    assert agreement.claims(prompt, answer) == said


def test_agreement_is_the_mean_share_of_claims_each_sample_repeats():
    prompt, answer = "Where does Ada Lin work?", "Ada Lin works at Orvan Labs in Brora."
    samples = ["She works at Orvan Labs, Brora.", "At Orvan Labs.", "Ada Lin works at Kest Mills in Tarn."]
    # claims orvan, labs, brora: 3/3, 2/3, 0/3
    assert agreement.agreement(prompt, answer, samples) == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert agreement.agreement(prompt, answer, [answer]) == 1.0
    assert agreement.agreement(prompt, "Ada Lin.", samples) is None
    assert agreement.agreement(prompt, answer, []) is None


def _row(gap, a, n=10):
    return {"gap": gap, "teacher_ppl": 2.0, "n_tokens": n, "agreement": a}


def test_the_agreement_rule_drops_scattered_answers_and_keeps_the_ratio_test():
    rule = Select(rule="agreement", tau=1.5, min_agreement=0.5)
    rows = [_row(1.0, 0.75), _row(1.0, 0.25), _row(1.0, None), _row(0.1, 1.0), _row(2.0, 0.5)]
    decisions = select.decide(rows, rule)
    assert [keep for keep, _ in decisions] == [True, False, False, False, True]
    assert "agreement 0.25 < min_agreement 0.5" in decisions[1][1]
    assert "claims no name" in decisions[2][1]
    assert "< tau" in decisions[3][1]  # full agreement does not excuse a failed ratio test
    assert decisions[0][1] == f"PPL ratio {math.exp(1.0):.3g} >= tau 1.5, agreement 0.75 >= min_agreement 0.5"


def test_a_bad_agreement_setting_is_one_line(tiny, tmp_path):
    raw = recipe_dict(tiny, tmp_path / "run.db")
    raw["select"] = {"rule": "agreement", "min_agreement": 1.5}
    with pytest.raises(TskdError, match=r"select\.min_agreement") as err:
        load_recipe(write_recipe(tmp_path / "run.toml", raw))
    assert "\n" not in str(err.value)


def _with_agreement(raw):
    raw["seeds"]["prompts"] = [
        "Where does Ada Lin live?",
        "What is 12 times 7?",
        "Which town is home to Bo Kra?",
        "Name three primary colours.",
    ]
    raw["select"] = {"rule": "agreement", "tau": 1.0001, "min_agreement": 0.0, "agreement_samples": 2}


def test_the_pipeline_samples_each_scored_pair_once_and_stores_the_samples(tiny, tmp_path):
    raw = recipe_dict(tiny, tmp_path / "run.db")
    _with_agreement(raw)
    loaded = load_recipe(write_recipe(tmp_path / "run.toml", raw))
    pipeline.run(loaded, progress=False, log=lambda _: None)
    con = sqlite3.connect(loaded.output.db)
    scored = {pid for (pid,) in con.execute("select prompt_id from scores")}
    rows = con.execute(
        "select g.prompt_id, g.agreement, g.samples, p.text, a.text from agreements g "
        "join prompts p on p.id = g.prompt_id join answers a on a.prompt_id = g.prompt_id"
    ).fetchall()
    assert {r[0] for r in rows} == scored
    reasons = dict(con.execute("select prompt_id, reason from selections").fetchall())
    for pid, value, samples, prompt, answer in rows:
        samples = json.loads(samples)
        assert len(samples) == 2
        assert value == agreement.agreement(prompt, answer, samples)  # the stored figure is the stored samples'
        if value is None:
            assert reasons[pid].startswith("the answer claims no name")
    # a sampled answer differs from the greedy one somewhere (temperature 1 on a random model)
    assert any(s != a for _, _, ss, _, a in rows for s in json.loads(ss))


def test_a_killed_run_with_the_agreement_rule_resumes_to_the_same_pool(tiny, tmp_path):
    points = [
        "select count(*) from agreements g join prompts p on p.id = g.prompt_id where p.round = 1",
        "select count(*) from agreements g join prompts p on p.id = g.prompt_id where p.round = 2",
    ]
    kill_resume_compare(tiny, tmp_path, _with_agreement, points, at_least=1, min_kills=1)
    con = sqlite3.connect(tmp_path / "killed.db")
    assert (
        con.execute("select count(*) from agreements").fetchone()[0]
        == con.execute("select count(*) from scores").fetchone()[0]
    )
