"""Generation strategies: what each plans, that the pipeline records it, and that killed runs resume alike."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import recipe_dict, write_recipe
from test_pipeline import kill_resume_compare

from tskd_lite import pipeline, strategies
from tskd_lite.backends import open_backend
from tskd_lite.dedup import normalise
from tskd_lite.errors import TskdError
from tskd_lite.recipe import Expand, ModelSpec, load_recipe

ENTITIES = ["water", "milk", "olive oil", "spider", "ant", "French", "German"]


def _round(pool_texts, entities, seed=0, earlier=(), answers=(), open_forms=()):
    pool = [{"id": i + 1, "text": t} for i, t in enumerate(pool_texts)]
    return strategies.Round(
        cfg=Expand(strategy="entities", entities=tuple(entities), candidates_per_round=3, open_forms=open_forms),
        seed=seed,
        number=1,
        pool=pool,
        answers=lambda: list(answers),
        earlier={normalise(t) for t in (*pool_texts, *earlier)},
        render=lambda t: t,
        user_prefix=lambda: "",
    )


def test_entities_asks_each_form_about_every_other_name():
    pool = ["Where does Ada Lin live?", "What pet does Bo Kra keep?", "Name a colour.", "Is Ada Linley here?"]
    names = ["Ada Lin", "Bo Kra", "Cy Dee"]
    s = strategies.Entities(_round(pool, names, earlier=["Where does Cy Dee live?"]))
    texts = {text for text, _, _ in s.candidates}
    # "Ada Linley" is not "Ada Lin"; a text already in the run (here from an earlier round) is not asked again
    assert texts == {"Where does Bo Kra live?", "What pet does Ada Lin keep?", "What pet does Cy Dee keep?"}
    assert s.count() == 3
    ask = next(s.ask(i) for i in range(3) if s.ask(i).prompt == "What pet does Cy Dee keep?")
    assert ask.sources == (2,) and ask.inputs == {"entity": "Cy Dee"} and ask.rendered is None
    # the order is the run seed's, the same every time it is planned
    again = strategies.Entities(_round(pool, names, earlier=["Where does Cy Dee live?"]))
    assert again.candidates == s.candidates
    orders = {tuple(strategies.Entities(_round(pool, names, seed=k)).candidates) for k in range(8)}
    assert len(orders) > 1


def test_each_name_is_asked_the_open_forms_beside_the_pools_own():
    pool = ["Where does Ada Lin live?"]
    forms = ("Tell me about {name}.", "Who is {name}?")
    s = strategies.Entities(_round(pool, ["Ada Lin", "Bo Kra"], earlier=["Who is Bo Kra?"], open_forms=forms))
    # every name gets every open form, the one a seed names too; a text already in the run is not asked again
    assert {t for t, _, _ in s.candidates} == {
        "Where does Bo Kra live?", "Tell me about Ada Lin.", "Who is Ada Lin?", "Tell me about Bo Kra.",
    }  # fmt: skip
    asks = [s.ask(i) for i in range(len(s.candidates))]
    open_ask = next(a for a in asks if a.prompt == "Tell me about Bo Kra.")
    assert open_ask.sources == () and open_ask.inputs == {"entity": "Bo Kra", "form": "open"}
    assert Expand().open_forms == ()  # opt-in until the benchmark has measured it on every domain


def test_open_forms_without_a_name_slot_are_one_line(tiny, tmp_path):
    raw = recipe_dict(tiny, tmp_path / "r.db")
    raw["expand"]["open_forms"] = ["Tell me about it."]
    with pytest.raises(TskdError, match=r"expand\.open_forms: expected a list of texts each containing \{name\}"):
        load_recipe(write_recipe(tmp_path / "r.toml", raw))


def test_follow_asks_about_the_names_the_answers_bring_up():
    pool = ["Where does Ada Lin live?", "What is 12 times 7?"]
    answers = ["Ada Lin lives next door to Bo Kra, in Brora.", "84"]
    s = strategies.Follow(_round(pool, [], answers=answers))
    assert s.names == ("Ada Lin", "Bo Kra", "Brora")  # numbers are not names; the answer's first word counts
    assert {text for text, _, _ in s.candidates} == {"Where does Bo Kra live?", "Where does Brora live?"}
    listed = strategies.Follow(_round(pool, ["Cy Dee"], answers=answers))
    assert listed.names[0] == "Cy Dee" and "Where does Cy Dee live?" in {t for t, _, _ in listed.candidates}


def test_the_entities_strategy_needs_names(tiny, tmp_path):
    raw = recipe_dict(tiny, tmp_path / "r.db")
    raw["expand"]["strategy"] = "entities"
    with pytest.raises(TskdError, match=r"expand.entities: the entities strategy needs at least two names"):
        load_recipe(write_recipe(tmp_path / "r.toml", raw))
    raw["expand"]["entities_file"] = tmp_path / "missing.txt"
    with pytest.raises(TskdError, match=r"expand.entities_file: file not found"):
        load_recipe(write_recipe(tmp_path / "r.toml", raw))
    (tmp_path / "names.txt").write_text("\ufeffwater\n\nmilk\nwater\n")
    raw["expand"]["entities_file"] = tmp_path / "names.txt"
    loaded = load_recipe(write_recipe(tmp_path / "r.toml", raw))
    assert loaded.expand.entities == ("water", "milk")


def test_the_user_prefix_is_the_template_up_to_the_users_words(tiny):
    engine = open_backend(ModelSpec(model=tiny["teacher"], n_ctx=256), role="teacher", threads=1, parallel=2)
    try:
        prefix = engine.user_prefix()
        assert engine.render("Hello there").startswith(prefix + "Hello there")
        assert "Hello" not in prefix and prefix.endswith("user\n")
    finally:
        engine.close()


def _with(strategy):
    def mutate(raw):
        raw["expand"]["strategy"] = strategy
        raw["expand"]["entities"] = ENTITIES
        raw["select"] = {"rule": "top_fraction", "top_fraction": 1.0}

    return mutate


def _pool(tiny, tmp_path, strategy, name="run"):
    raw = recipe_dict(tiny, tmp_path / f"{name}.db")
    _with(strategy)(raw)
    loaded = load_recipe(write_recipe(tmp_path / f"{name}.toml", raw))
    result = pipeline.run(loaded, progress=False, log=lambda _: None)
    con = sqlite3.connect(loaded.output.db)
    rows = con.execute("select round, text, source, strategy, inputs, fewshot_ids, status from prompts").fetchall()
    return loaded, result, rows


def test_entities_pool_is_the_seed_forms_about_the_listed_names(tiny, tmp_path):
    loaded, result, rows = _pool(tiny, tmp_path, "entities")
    generated = [r for r in rows if r[2] == "generated"]
    assert generated and all(r[3] == "entities" for r in generated)
    seeds = {r[1] for r in rows if r[2] == "seed"}
    for _, text, _, _, inputs, fewshot, _ in generated:
        (form_id,) = json.loads(fewshot)
        entity = json.loads(inputs)["entity"]
        assert entity in text and text not in seeds
    # forms x names is finite: three seeds name a listed entity (water, spider, French), each asked about the 6
    # other names, 18 prompts over rounds of 12, so round 3 has nothing new: the run ends there, done, instead of
    # stopping as if selection had kept nothing
    assert len({r[1] for r in generated}) == len(generated) == 18
    assert result.status == "done" and "no new prompts" in result.message


def test_sample_prompts_are_the_teachers_own_user_turns(tiny, tmp_path):
    _, _, rows = _pool(tiny, tmp_path, "sample")
    generated = [r for r in rows if r[2] == "generated"]
    assert len(generated) == 3 * 12 and all(r[3] == "sample" for r in generated)
    openings = [json.loads(r[4])["opening"] for r in generated]
    assert "" in openings and any(openings)
    for (_, text, *_), opening in zip(generated, openings, strict=True):
        assert text.startswith(opening) or not text


@pytest.mark.parametrize("strategy", ["entities", "sample", "continue", "follow"])
def test_killed_runs_with_each_strategy_resume_to_the_same_pool(tiny, tmp_path, strategy):
    def longer(raw):
        _with(strategy)(raw)
        raw["expand"]["max_prompt_tokens"] = 48

    points = [
        "select count(*) from prompts where round = 1",
        "select count(*) from answers a join prompts p on p.id = a.prompt_id where p.round = 1",
        "select count(*) from scores s join prompts p on p.id = s.prompt_id where p.round = 2",
    ]
    kill_resume_compare(tiny, tmp_path, longer, points, at_least=2, min_kills=2)


def test_entities_asks_every_name_unless_the_recipe_caps_it(tiny, tmp_path):
    """Unset, the budget keys are sized by the strategy: entities takes every form x name in round 1 (no cap set
    for a few dozen names), a writing strategy keeps its 32 a round and its stop at 64; a key the recipe sets wins."""
    from click.testing import CliRunner

    from tskd_lite.cli import main

    raw = recipe_dict(tiny, tmp_path / "every.db")
    _with("entities")(raw)
    del raw["expand"]["candidates_per_round"], raw["expand"]["target_kept"]
    path = write_recipe(tmp_path / "every.toml", raw)
    loaded = load_recipe(path)
    assert loaded.expand.candidates_per_round == strategies.MAX_CANDIDATES
    assert loaded.expand.sized_keys == ("candidates_per_round", "target_kept")
    pipeline.run(loaded, progress=False, log=lambda _: None)
    con = sqlite3.connect(loaded.output.db)
    by_round = dict(con.execute("select round, count(*) from prompts where source = 'generated' group by round"))
    assert by_round == {1: 18}  # the three forms x the six other names, all in the first round
    shown = CliRunner().invoke(main, ["check", str(path)]).output
    assert "pool    entities: every form x name a round (7 names), 3 rounds at most" in shown
    assert "(sized by the strategy: expand.candidates_per_round, expand.target_kept unset)" in shown

    raw["expand"]["candidates_per_round"] = 5
    capped = load_recipe(write_recipe(tmp_path / "capped.toml", raw | {"output": {"db": str(tmp_path / "c.db")}}))
    assert (capped.expand.candidates_per_round, capped.expand.sized_keys) == (5, ("target_kept",))
    raw["expand"]["strategy"] = "fewshot"
    del raw["expand"]["candidates_per_round"]
    fewshot = load_recipe(write_recipe(tmp_path / "fewshot.toml", raw | {"output": {"db": str(tmp_path / "f.db")}}))
    assert (fewshot.expand.candidates_per_round, fewshot.expand.target_kept) == (32, 64)


def test_a_recipe_that_lists_names_and_sets_no_strategy_gets_entities(tiny, tmp_path):
    from click.testing import CliRunner

    from tskd_lite.cli import main

    raw = recipe_dict(tiny, tmp_path / "names.db")
    raw["expand"] = {"entities": ["Ada", "Bo"]}
    path = write_recipe(tmp_path / "names.toml", raw)
    loaded = load_recipe(path)
    assert (loaded.expand.strategy, loaded.expand.strategy_chosen) == ("entities", True)
    shown = CliRunner().invoke(main, ["check", str(path)]).output
    assert "(expand.strategy unset: entities, since the recipe lists names)" in shown
    raw["expand"]["strategy"] = "fewshot"  # set, it is kept, names or not
    assert load_recipe(write_recipe(tmp_path / "set.toml", raw)).expand.strategy == "fewshot"
    del raw["expand"]
    plain = load_recipe(write_recipe(tmp_path / "plain.toml", raw)).expand
    assert (plain.strategy, plain.strategy_chosen) == ("fewshot", False)
