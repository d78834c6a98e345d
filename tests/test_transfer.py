"""The transfer benchmark's --quick mode on tiny models: every arm trains and is scored, pools differ as designed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import recipe_dict, write_recipe
from tinymodels import write_tiny_llama

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import transfer  # noqa: E402

RAW = "{{ messages[0]['content'] }}"


def _domain(folder: Path, generator: Path) -> Path:
    folder.mkdir()
    facts = [(f"What is {a} plus {b}?", f"{a + b}") for a in range(6) for b in range(4)]
    with (folder / "train.jsonl").open("w") as f:
        for q, a in facts[:16]:
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}))
            f.write("\n")
    with (folder / "test.jsonl").open("w") as f:
        for q, a in facts[16:]:
            f.write(json.dumps({"prompt": q.replace("What is", "Tell me"), "answer": a}) + "\n")
    (folder / "seeds.txt").write_text("\n".join(q for q, _ in facts[:5]) + "\n")
    with (folder / "facts.jsonl").open("w") as f:
        for a in range(6):
            for b in range(4):
                f.write(json.dumps({"entity": f"{a} plus {b}", "attribute": "sum", "value": str(a + b)}) + "\n")
    # the entity list: names only (a entity is "a plus b" here), for the entities arm
    (folder / "entities.txt").write_text("".join(f"{a} plus {b}\n" for a in range(6) for b in range(4)))
    # the domain's own settings: prompts written by continuing the list, as bench/evals_domain.py sets it up
    own = {"generator": {"model": generator, "chat_template": RAW}, "expand": {"instruction": "{examples}\n-"}}
    write_recipe(folder / "recipe.toml", own)
    return folder


def test_quick_mode_runs_every_arm_and_resumes_from_its_cache(tiny, tmp_path):
    raw = recipe_dict(tiny, tmp_path / "unused.db")
    raw["select"] = {"rule": "ppl_ratio", "tau": 1.01}
    raw["respond"] = {"max_answer_tokens": 12, "temperature": 0.0}
    raw["target"] = {"model": write_tiny_llama(tmp_path / "target.gguf", seed=5)}
    raw["train"] = {"rank": 4, "alpha": 8, "batch_size": 4, "max_seq_len": 64, "learning_rate": 1e-2}
    raw["eval"] = {"file": tmp_path / "placeholder.jsonl", "max_answer_tokens": 6}
    (tmp_path / "placeholder.jsonl").write_text('{"prompt": "p", "answer": "a"}\n')
    recipe = write_recipe(tmp_path / "transfer.toml", raw)
    args = ["--quick", "--quiet", "--recipe", str(recipe), "--work", str(tmp_path / "work")]
    domain_dir = _domain(tmp_path / "sums", tiny["base"])
    args += ["--domain", f"sums={domain_dir}", "--arms", *transfer.ARMS]
    settings = {"eval_limit": 16, "quick": False, "teacher_epochs": 2, "teacher_patience": 1, "teacher_lr": 1e-3}
    loaded = transfer.Domain("sums", domain_dir, recipe, tmp_path / "work", settings, False).recipe
    assert loaded.generator.chat_template == RAW and loaded.expand.instruction == "{examples}\n-"
    assert loaded.generator.model == tiny["base"]
    bad = _domain(tmp_path / "bad", tiny["base"])
    (bad / "recipe.toml").write_text("[expand]\nrounds = -1\n")
    with pytest.raises(SystemExit, match=r"domain bad \(.*bad\): .*transfer.toml: expand.rounds: expected"):
        transfer.Domain("bad", bad, recipe, tmp_path / "work", settings, False)
    (bad / "recipe.toml").write_text("[expand\n")
    with pytest.raises(SystemExit, match=r"bad/recipe.toml: not valid TOML"):
        transfer.Domain("bad", bad, recipe, tmp_path / "work", settings, False)

    results = transfer.main(args)

    (domain,) = results["domains"]
    assert set(domain["arms"]) == set(transfer.ARMS)
    for arm, row in domain["arms"].items():
        assert len(row["contains"]["values"]) == 1, arm
        assert 0.0 <= row["contains"]["mean"] <= 1.0
        assert row["nll_per_byte"]["mean"] > 0
    assert domain["arms"]["seeds_only"]["pairs"] == [5]
    assert domain["arms"]["oracle"]["pairs"] == [transfer.QUICK["pairs"]]
    refs = domain["references"]
    assert {"teacher", "base", "target_before", "chance"} <= set(refs)
    assert len(refs["teacher"]["predictions"]) == 8  # the test file's 8 items (under the quick limit of 16)

    (pools,) = domain["pools"]
    rounds, candidates = transfer.QUICK["rounds"], transfer.QUICK["candidates"]
    assert all(r["kept_fraction"] == 1.0 for r in pools["no_selection"]["rounds"])
    assert [r["round"] for r in pools["one_round"]["rounds"]] == [0, 1]
    assert pools["one_round"]["rounds"][1]["candidates"] == rounds * candidates
    assert [r["candidates"] for r in pools["full"]["rounds"][1:]] == [candidates] * rounds
    # the augmented arms: paraphrases written in the pool, and the oracle's pairs plus its paraphrases' pairs
    assert sum(r["paraphrases"] for r in pools["full_aug"]["rounds"]) > 0
    assert not any(r["paraphrases"] for r in pools["full"]["rounds"])
    assert domain["arms"]["oracle_aug"]["pairs"][0] >= domain["arms"]["oracle"]["pairs"][0]
    # templates x entities: the seeds' form asked about other listed names, at most the round's candidates, each
    # new to the run; the seeds name 5 of the 24 entities, the list all of them
    entities = [r["candidates"] for r in pools["entities"]["rounds"][1:]]
    assert entities and all(0 < n <= candidates for n in entities)
    assert domain["reachable"]["entity list"] == 1.0
    assert domain["reachable"]["seeds"] < domain["reachable"]["entities pool"]
    md = (tmp_path / "work" / "transfer-results.md").read_text()
    assert "target: full" in md and "chance" in md and "Recovered" in md
    # the headline, per seed, from the references: (arm - floor) / (teacher - floor)
    floor = max(refs["chance"]["contains"], refs["target_before"]["contains"])
    oracle = domain["arms"]["oracle"]
    if refs["teacher"]["contains"] > floor:
        expected = (oracle["contains"]["mean"] - floor) / (refs["teacher"]["contains"] - floor)
        assert oracle["recovered"]["mean"] == pytest.approx(expected)
    else:
        assert oracle["recovered"] is None and domain["advantage_too_small"]
    # fact-level measures of the oracle's pairs: its answers are the ground truth, so every named pair is right;
    # this domain's test items ask other sums than its training data, so none of them is covered
    facts = oracle["facts"]
    assert facts["precision"] == 1.0 and facts["wrong_rate"] == 0.0 and facts["coverage"] == 0.0
    assert all("facts" in r for r in pools["full"]["rounds"])
    assert domain["teacher"]["steps"] > 0 and domain["teacher"]["held_out_loss"]

    again = transfer.main(args)  # every step is cached: the same numbers, nothing recomputed
    assert again["domains"][0]["arms"] == domain["arms"]

    curve = transfer.main([*args, "--curve"])
    (points,) = [d["points"] for d in curve["domains"]]
    grid = {(p["settings"]["pairs"], p["settings"]["steps"]) for p in points}
    assert grid == {(p, s) for p in transfer.QUICK["curve_pairs"] for s in transfer.QUICK["curve_steps"]}
    # the quick oracle arm at (16 pairs, 4 steps) is the same cached training as above
    same = next(p for p in points if p["settings"]["pairs"] == 16 and p["settings"]["steps"] == 4)
    assert same["contains"]["mean"] == oracle["contains"]["mean"]
    assert curve["choice"]["budget"] in {p["budget"] for p in points}
    assert "Chosen budget" in (tmp_path / "work" / "transfer-curve.md").read_text()


def test_choose_budget_takes_the_cheapest_that_meets_the_aim_on_every_domain():
    def point(pairs, steps, value):
        b = transfer.Budget(pairs, steps, 16, 1e-3)
        return {"budget": b.key, "settings": transfer.dataclasses.asdict(b), "recovered": {"mean": value}}

    world = {"points": [point(48, 24, 0.9), point(96, 24, 0.95), point(48, 72, 0.95)]}
    dates = {"points": [point(48, 24, 0.5), point(96, 24, 0.85), point(48, 72, 0.9)]}
    choice = transfer.choose_budget([world, dates], 0.8)
    assert choice["met"] and choice["settings"]["pairs"] == 96 and choice["settings"]["steps"] == 24
    missed = transfer.choose_budget([world, dates], 0.99)
    assert not missed["met"] and missed["worst_domain"] == 0.9 and missed["settings"]["steps"] == 72


def test_fact_measures_tell_true_wrong_and_unnamed_pairs_apart(tmp_path):
    from facts import Fact, FactIndex, measures

    from tskd_lite.evaluate import EvalItem

    facts = [Fact("Ada Lin", "town", "Brora"), Fact("Ada Lin", "pet", "cat"), Fact("Bo Kra", "town", "Zell")]
    items = [EvalItem("Which town is home to Ada Lin?", "Brora"), EvalItem("Where is Bo Kra from?", "Zell")]
    index = FactIndex(facts, items)
    pairs = [
        ("Where does Ada Lin live?", "Ada Lin lives in Brora."),  # true, a held-out fact
        ("What pet does Ada Lin have?", "Ada Lin has a cat."),  # true, not asked by the test items
        ("Where does Bo Kra live?", "Bo Kra lives in Brora."),  # a wrong town: confident guessing
        ("Where does Quin Dar live?", "Quin Dar lives in Zell."),  # an invented name answered in the world's style
        ("What is the weather like?", "Sunny."),  # nothing of the domain
    ]
    m = measures(pairs, index)
    assert m["naming_an_entity"] == 3 and m["stating_a_true_fact"] == 2 and m["facts_stated"] == 2
    assert m["coverage"] == 0.5 and m["precision"] == pytest.approx(2 / 3) and m["wrong_rate"] == pytest.approx(2 / 5)


def test_evals_domain_splits_a_registry_task_without_overlap(tmp_path):
    import zipfile

    import evals_domain

    system = {"role": "system", "content": "Convert the date."}
    rows = [
        {"input": [system, {"role": "user", "content": f"2001-01-{d:02d}"}], "ideal": f"January {d}, 2001."}
        for d in range(1, 21)
    ]
    rows.append(rows[0])  # a repeated sample counts once
    wheel = tmp_path / "evals-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("evals/registry/data/dates/samples.jsonl", "\n".join(json.dumps(r) for r in rows))
    evals_domain.write(wheel, "dates", tmp_path / "d", n_train=12, n_test=8, seed=0)

    train = [json.loads(line)["messages"] for line in (tmp_path / "d" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (tmp_path / "d" / "test.jsonl").read_text().splitlines()]
    seeds = (tmp_path / "d" / "seeds.txt").read_text().split()
    assert len(train) == 12 and len(test) == 8
    assert [m["role"] for m in train[0]] == ["user", "assistant"]  # the system message is dropped
    train_prompts = {m[0]["content"] for m in train}
    assert train_prompts.isdisjoint(t["prompt"] for t in test)
    assert len(train_prompts | {t["prompt"] for t in test}) == 20
    assert len(seeds) == 5 and set(seeds) <= train_prompts
    for t in test:
        assert t["answer"] == f"January {int(t['prompt'][-2:])}, 2001."
