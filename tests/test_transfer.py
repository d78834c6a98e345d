"""The transfer benchmark's --quick mode on tiny models: every arm trains and is scored, pools differ as designed."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import recipe_dict, write_recipe
from tinymodels import write_tiny_llama

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # facts, evals_domain
sys.path.insert(0, str(ROOT))
from bench import transfer  # noqa: E402
from bench.transfer import arms  # noqa: E402
from bench.transfer.cache import Layout  # noqa: E402
from tskd_lite.recipe import OPEN_FORMS  # noqa: E402

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
    settings = transfer.Settings(seeds=[0], eval_limit=16, teacher_epochs=2, teacher_patience=1, teacher_lr=1e-3)
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
    # the replay arms train on their pool's pairs and the target's own answers, 0.25 per pair and at least 32
    for arm, pool in (("entities_replay", "entities"), ("full_replay", "full"), ("seeds_replay", "seeds_only")):
        row, plain = domain["arms"][arm], domain["arms"][pool]
        assert row["pairs"] == plain["pairs"] and row["replayed"] == [max(32, round(0.25 * plain["pairs"][0]))], arm
        assert plain["replayed"] == [0]
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
    # templates x entities: every form asked about every other listed name in the first round, whatever the other
    # pools' prompt budget, and nothing new after it; the seeds name 5 of the 24 entities, the list all of them
    entities = [r["candidates"] for r in pools["entities"]["rounds"][1:]]
    assert len(entities) == 1 and entities[0] > candidates
    assert domain["reachable"]["entity list"] == 1.0
    assert domain["reachable"]["seeds"] < domain["reachable"]["entities pool"]
    md = (tmp_path / "work" / "transfer-results.md").read_text()
    assert md.startswith("# Transfer benchmark\n\n`python -m bench.transfer --quick --quiet --recipe ")
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
        return {"budget": b.key, "settings": dataclasses.asdict(b), "recovered": {"mean": value}}

    world = {"points": [point(48, 24, 0.9), point(96, 24, 0.95), point(48, 72, 0.95)]}
    dates = {"points": [point(48, 24, 0.5), point(96, 24, 0.85), point(48, 72, 0.9)]}
    choice = transfer.choose_budget([world, dates], 0.8)
    assert choice["met"] and choice["settings"]["pairs"] == 96 and choice["settings"]["steps"] == 24
    missed = transfer.choose_budget([world, dates], 0.99)
    assert not missed["met"] and missed["worst_domain"] == 0.9 and missed["settings"]["steps"] == 72


def test_each_arm_is_one_registered_entry_and_the_readme_and_help_are_made_from_them():
    # the arms, the defaults and the pools' order as they were before the registry (results and caches rely on them)
    assert transfer.ARMS == (
        "seeds_only", "no_selection", "one_round", "full", "token_level", "oracle", "full_aug", "oracle_aug",
        "entities", "sample", "full_contrast", "full_token_gap", "entities_contrast", "follow_contrast",
        "entities_replay", "full_replay", "seeds_replay", "follow_agreement",
        "entities_open_replay", "follow_open_agreement",
    )  # fmt: skip
    assert transfer.DEFAULT_ARMS == (
        "seeds_only", "no_selection", "full", "oracle", "entities", "entities_contrast", "follow_contrast",
        "entities_replay",
    )  # fmt: skip
    assert transfer.POOLS == (
        "full", "no_selection", "one_round", "full_aug", "entities", "sample", "full_contrast", "full_token_gap",
        "entities_contrast", "follow_contrast", "follow_agreement",
        "entities_open_replay", "follow_open_agreement",
    )  # fmt: skip
    assert {a: arms.REGISTRY[a].pool for a in ("seeds_only", "token_level", "oracle", "oracle_aug")} == {
        "seeds_only": "full", "token_level": "full", "oracle": None, "oracle_aug": None,
    }  # fmt: skip
    assert arms.pools_of(["oracle", "entities", "seeds_only"]) == ["full", "entities"]
    needing = [a for a in transfer.ARMS if arms.REGISTRY[a].needs_entities]
    assert needing == ["entities", "entities_contrast", "entities_replay", "entities_open_replay"]
    benchmark_page = (ROOT / "docs" / "benchmark.md").read_text()
    assert arms.readme_table() in benchmark_page, (
        "docs/benchmark.md's arms table is out of date; it should read:\n" + arms.readme_table()
    )
    # --help from the repository root, the way the justfile runs the benchmark
    help_text = subprocess.run(
        [sys.executable, "-m", "bench.transfer", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert arms.help_text() in help_text


def test_pool_overrides_and_cache_paths_are_those_the_cached_runs_were_made_with(tmp_path):
    """Every pool's recipe changes and every cache path, as bench/transfer.py computed them: runs/transfer holds
    hours of steps found by these paths, and a pool's changes are part of what its store resumes against."""
    expand = SimpleNamespace(rounds=3, candidates_per_round=16)
    domain = SimpleNamespace(
        recipe=SimpleNamespace(expand=expand), settings=transfer.Settings(seeds=[0]), folder=tmp_path / "world"
    )
    every = {"target_kept": 1 << 30}
    every_name = {**every, "candidates_per_round": 100_000}
    entities = {**every_name, "strategy": "entities", "entities_file": str(tmp_path / "world" / "entities.txt")}
    contrast = {"select": {"rule": "contrast"}}
    expected = {
        "full": {"expand": every},
        "no_selection": {"expand": every, "select": {"rule": "ppl_ratio", "tau": 1e-9, "top_fraction": 1.0}},
        "one_round": {"expand": {**every, "rounds": 1, "candidates_per_round": 48}},
        "full_aug": {"expand": {**every, "paraphrases": 2}},
        "entities": {"expand": entities},
        "sample": {"expand": {**every, "strategy": "sample"}},
        "full_contrast": {"expand": every} | contrast,
        "full_token_gap": {"expand": every, "select": {"rule": "token_gap"}},
        "entities_contrast": {"expand": entities} | contrast,
        "follow_contrast": {"expand": {**every_name, "strategy": "follow"}} | contrast,
        "follow_agreement": {"expand": {**every_name, "strategy": "follow"}, "select": {"rule": "agreement"}},
        "entities_open_replay": {"expand": {**entities, "open_forms": list(OPEN_FORMS)}},
        "follow_open_agreement": {
            "expand": {**every_name, "strategy": "follow", "open_forms": list(OPEN_FORMS)},
            "select": {"rule": "agreement"},
        },
    }
    assert {pool: arms.REGISTRY[pool].overrides(domain) for pool in transfer.POOLS} == expected
    with pytest.raises(NotImplementedError):
        arms.REGISTRY["oracle"].overrides(domain)

    budget = transfer.Budget(144, 72, 16, 1e-3)
    root = Path("runs/transfer/world/teacher-e12-p2-lr0.001")
    plain = Layout(Path("runs/transfer/world"), transfer.Settings(seeds=[0]))
    assert plain.teacher_adapter == root / "teacher" / "adapter.gguf"
    assert plain.references == root / "references-n48.json"
    assert plain.pool_db("full", 1) == root / "seed1" / "full" / "pool.db"
    assert plain.oracle_pool(2, 144) == root / "seed2" / "oracle_aug-p144"
    assert plain.train_dir("oracle", 0, budget) == root / "seed0" / "oracle" / "train-p144-s72-r16-lr0.001"
    assert plain.result("oracle", 0, budget) == root / "seed0" / "oracle" / "result-p144-s72-r16-lr0.001-n48.json"
    c24 = Layout(Path("runs/transfer/world"), transfer.Settings(seeds=[0], candidates=24))
    assert c24.pool_db("entities", 0) == root / "seed0" / "entities-c24" / "pool.db"
    assert c24.result("entities", 0, budget) == root / "seed0" / "entities-c24" / "result-p144-s72-r16-lr0.001-n48.json"
    quick = Layout(Path("w/sums"), transfer.Settings(seeds=[0, 1]).quick_mode())
    assert quick.root == Path("w/sums/teacher-e2-p2-lr0.001") and quick.variant == "-c8"
    # the settings as results record them: rounds only with --quick, the curve's extra grid never
    assert list(transfer.Settings(seeds=[0]).as_json()) == [
        "seeds", "pairs", "steps", "eval_limit", "teacher_epochs", "teacher_patience", "teacher_lr", "quick",
        "curve_pairs", "curve_steps", "aim", "paraphrases", "candidates", "rank", "lr", "epochs", "patience",
        "max_passes",
    ]  # fmt: skip
    assert transfer.Settings(seeds=[0, 1]).quick_mode().as_json()["rounds"] == 2


def test_an_arm_is_registered_with_its_name_description_and_default(monkeypatch):
    monkeypatch.setattr(arms, "REGISTRY", dict(arms.REGISTRY))  # a new arm here stays in this test

    @arms.register
    class SampleContrast(arms.Sample):
        name = "sample_contrast"
        description = "sample's recipe with the contrast keep rule"
        default = False

        def overrides(self, domain):
            return super().overrides(domain) | arms.CONTRAST

    assert arms.REGISTRY["sample_contrast"].pool == "sample_contrast"
    assert "| sample_contrast | sample's recipe with the contrast keep rule |" in arms.readme_table()
    with pytest.raises(TypeError, match="registered twice"):
        arms.register(SampleContrast)
    with pytest.raises(TypeError, match="states its default"):  # never inherited: each arm says whether it runs

        @arms.register
        class Undecided(arms.Full):
            name = "undecided"
            description = "full again"

    with pytest.raises(TypeError, match="trains on it"):

        @arms.register
        class Muddled(arms.Arm):
            name, description, default, pool = "muddled", "grows one pool, trains on another", False, "full"

            def overrides(self, domain):
                return {}

    with pytest.raises(TypeError, match="draws its own pairs"):

        @arms.register
        class Empty(arms.Arm):
            name, description, default = "empty", "no pool and no pairs", False


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


def test_an_arms_steps_are_the_domains_budget_capped_by_passes_over_its_own_pairs():
    """By default the domain's 4 epochs over its pairs for every arm, at most 8 passes over the arm's own: the
    world's 72-pair entities pool gets the 72 steps its 144-pair oracle gets (4 epochs over 72 pairs recovered 15%,
    this 96%), five seed pairs get 5 (72 steps on them erased what the target knew). --max-passes 0: 4 epochs over
    the arm's own pairs; --steps fixes them for every arm."""
    train = SimpleNamespace(batch_size=8, grad_accum=1)
    domain = SimpleNamespace(recipe=SimpleNamespace(train=train), settings=transfer.Settings(seeds=[0]))
    world = transfer.Budget(144, None, 16, 1e-3)
    assert [transfer.Domain.resolved(domain, world, n).steps for n in (144, 72, 5, 0)] == [72, 72, 5, 1]
    sized = transfer.Budget(747, None, 16, 1e-3)
    assert [transfer.Domain.resolved(domain, sized, n).steps for n in (144, 5, 747)] == [144, 5, 374]
    assert transfer.Domain.resolved(domain, world, 72).key == "p144-s72-r16-lr0.001"
    # replayed answers ride beside: 8 passes over 13 pairs are 13 steps, over 13 + 32 replayed 45, keyed apart
    replayed = transfer.Budget(144, None, 16, 1e-3, replay=32)
    assert [transfer.Domain.resolved(domain, b, 13).steps for b in (world, replayed)] == [13, 45]
    assert transfer.Domain.resolved(domain, replayed, 13).key == "p144-s45-r16-lr0.001-rp32"
    fixed = transfer.Budget(144, 72, 16, 1e-3)
    assert transfer.Domain.resolved(domain, fixed, 5) is fixed
    domain.settings = transfer.Settings(seeds=[0], max_passes=0)  # epochs over the arm's own pairs
    assert [transfer.Domain.resolved(domain, sized, n).steps for n in (144, 5, 747, 0)] == [72, 3, 374, 1]
    with pytest.raises(ValueError, match="resolved"):
        _ = sized.key


def test_a_budget_stopped_on_held_out_loss_is_cached_apart_from_fixed_epochs():
    stopped = transfer.Budget(100, None, 16, 1e-3, epochs=12, patience=2)
    assert stopped.key == "p100-e12-stop2-r16-lr0.001"
    assert transfer.Budget(100, 50, 16, 1e-3).key == "p100-s50-r16-lr0.001"
    with pytest.raises(ValueError, match="resolved"):
        _ = transfer.Budget(100, None, 16, 1e-3).key


def test_the_results_say_how_every_arm_was_trained():
    """The header line names the rule the settings record, not the epochs alone (a --max-passes run once read as
    "4 epochs over the pairs it draws")."""
    from bench.transfer.tables import _training

    assert "at most 8 passes over the pairs it draws" in _training({"epochs": 4.0, "max_passes": 8.0})
    assert "stopped when the loss" in _training({"epochs": 12.0, "patience": 2, "max_passes": 12.0})
    assert _training({"epochs": 4.0, "max_passes": None}).startswith("every arm trains 4 epochs over the pairs")
    fixed = "every arm trains 72 steps on up to the domain's budget of pairs (below)"
    assert _training({"epochs": 4.0, "steps": 72}) == fixed
