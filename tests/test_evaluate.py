from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import recipe_dict, write_recipe
from tinymodels import write_tiny_llama

from tskd_lite import pipeline
from tskd_lite.cli import main
from tskd_lite.errors import TskdError
from tskd_lite.evaluate import EvalItem, chance_row, kept_and_lost, match, normalise_answer, read_eval_file
from tskd_lite.recipe import load_recipe


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris", "paris"),
        ("  The   Sun. ", "the sun"),
        ("1,000 apples!", "1000 apples"),
        ("3.50", "3.5"),
        ("7.0", "7"),
        ("It is 2.5 m.", "it is 2.5 m"),
        ("H₂O", "h2o"),
        ("Carbon-dioxide", "carbon dioxide"),
        ("Mars?!", "mars"),
    ],
)
def test_normalise_answer(text, expected):
    assert normalise_answer(text) == expected


def test_exact_and_contains_match():
    item = EvalItem("Largest planet?", "Jupiter", ("planet Jupiter",))
    assert match("Jupiter.", item) == (True, True)
    assert match("Planet Jupiter\nIt is a gas giant.", item) == (True, True)
    assert match("The largest planet is Jupiter.", item) == (False, True)
    assert match("Jupiterlike worlds", item) == (False, False)  # whole words only
    assert match("", item) == (False, False)
    assert match("1,000", EvalItem("n?", "1000")) == (True, True)


def test_eval_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(TskdError, match=r"eval.jsonl:2: expected"):
        read_eval_file(bad, "r.toml: eval.file")
    bad.write_text("")
    with pytest.raises(TskdError, match="holds no items"):
        read_eval_file(bad, "r.toml: eval.file")


def test_full_run_reports_four_rows(tiny, tmp_path):
    target = write_tiny_llama(tmp_path / "target.gguf", seed=5)
    items = [{"prompt": f"What is {a} plus {b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6)]]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    raw = recipe_dict(tiny, tmp_path / "run" / "pool.db")
    raw["expand"]["rounds"] = 1
    raw["target"] = {"model": target}
    raw["train"] = {"rank": 4, "epochs": 1, "batch_size": 4, "max_seq_len": 96, "replay": 0.5}
    raw["eval"] = {"file": "eval.jsonl", "max_answer_tokens": 6}
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", raw))
    pipeline.run_all(recipe, progress=False, log=lambda _: None)
    run_dir = tmp_path / "run" / "pool"  # the run folder is named after the database
    report = json.loads((run_dir / "report.json").read_text())
    assert [r["name"] for r in report["eval"]] == ["teacher", "base", "target before", "target after", "chance"]
    assert all(r["n"] == 3 for r in report["eval"])
    # teacher and target differ in weights, so their reference NLLs are separate measurements
    assert len({round(r["nll_per_byte"], 6) for r in report["eval"][:4]}) == 4
    # chance answers each sum with another item's sum: never right here, and it has no model to give an NLL
    assert report["eval"][4]["contains"] == 0.0 and report["eval"][4]["nll_per_byte"] is None
    # do no harm, item by item: the report's counts are the ones the two rows' predictions give
    rows = {r["name"]: r for r in json.loads((run_dir / "eval.json").read_text())["rows"]}
    evaluated = [EvalItem(i["prompt"], i["answer"]) for i in items]
    harm = report["kept_and_lost"]
    assert harm == kept_and_lost(evaluated, rows["target before"]["predictions"], rows["target after"]["predictions"])
    md = (run_dir / "report.md").read_text()
    assert f"**lost {harm['lost']}** (right before, wrong after)" in md
    replayed = json.loads((run_dir / "train" / "train.json").read_text())["n_replay"]
    assert replayed > 0 and f"; {replayed} of the pairs are the target's own replayed answers" in md
    names = ("| teacher |", "| base |", "| target before |", "| target after |", "| chance |")
    for name in (*names, "gap_hist.png", "loss.png"):
        assert name in md
    assert (run_dir / "gap_hist.png").stat().st_size > 1000 and (run_dir / "loss.png").stat().st_size > 1000
    (run_dir / "report.md").unlink()
    rebuilt = CliRunner().invoke(main, ["report", str(run_dir)])
    assert rebuilt.exit_code == 0 and (run_dir / "report.md").read_text() == md
    missing = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert missing.exit_code == 1 and "not a run folder" in missing.output

    # run again: training and evaluation are done for this dataset, settings and models, so neither is redone
    adapter = (run_dir / "train" / "adapter.gguf").stat().st_mtime_ns
    evaluation = (run_dir / "eval.json").read_text()
    logged = []
    pipeline.run_all(recipe, progress=False, log=logged.append)
    assert any("training already done" in line for line in logged)
    assert any("evaluation already done" in line for line in logged)
    assert (run_dir / "train" / "adapter.gguf").stat().st_mtime_ns == adapter
    assert (run_dir / "eval.json").read_text() == evaluation
    # without training's done-marker, the training counts as unfinished and is redone (to the same fingerprint,
    # so the evaluation of it stands)
    (run_dir / "train" / "train.json").unlink()
    logged.clear()
    pipeline.run_all(recipe, progress=False, log=logged.append)
    assert not any("training already done" in line for line in logged)
    assert (run_dir / "train" / "adapter.gguf").stat().st_mtime_ns != adapter
    assert json.loads((run_dir / "eval.json").read_text())["rows"][3]["name"] == "target after"

    # one writer at a time in a run folder: train, eval and report refuse while another holds it
    from tskd_lite.rundir import lock as folder_lock

    with folder_lock(run_dir):
        for command in (
            ["train", str(tmp_path / "r.toml")],
            ["eval", str(tmp_path / "r.toml")],
            ["report", str(run_dir)],
        ):
            locked = CliRunner().invoke(main, command)
            assert locked.exit_code == 1 and "locked: another tskd-lite command" in locked.output, command


def test_chance_borrows_the_nearest_questions_answer():
    items = [
        EvalItem("What is the job of Ann Lee?", "baker"),
        EvalItem("What is the job of Bob Ray?", "baker"),
        EvalItem("Where does Ann Lee live?", "Paris"),
        EvalItem("Where does Bob Ray live?", "Rome"),
    ]
    row = chance_row(items)
    assert row["predictions"] == ["baker", "baker", "Rome", "Paris"]
    assert row["contains"] == 0.5 and row["nll_per_byte"] is None


def test_kept_and_lost_counts_item_by_item():
    """A mean that rises can hide facts the target lost: right before and wrong after is counted apart."""
    items = [EvalItem("Capital of France?", "Paris"), EvalItem("2+2?", "4"), EvalItem("Sky?", "blue", ("azure",))]
    before = ["It is Paris.", "5", "azure"]
    after = ["Lyon", "4", "Azure!"]
    assert kept_and_lost(items, before, after) == {"known_before": 2, "kept": 1, "lost": 1, "gained": 1}
