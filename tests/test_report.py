"""The run report: its warnings appear exactly when their conditions hold, it names the keep rule's τ, and its plots
are written (one gap panel per round, the threshold drawn). Runs are made up in a store, no model is run."""

from __future__ import annotations

import copy
import json
import math

import pytest

from tskd_lite import caveats, plots, report
from tskd_lite.evaluate import EvalItem, _row, chance_row
from tskd_lite.store import Store

ITEMS = [
    EvalItem("Which town is home to Ann Lee?", "Paris"),
    EvalItem("Which town is home to Bob Ray?", "Paris"),
    EvalItem("What is the profession of Ann Lee?", "baker"),
    EvalItem("What is the profession of Bob Ray?", "tailor"),
]

# Sentences around the answers (exact match 0 everywhere), the target worse after training and two items lost.
TROUBLED = {
    "teacher": ["Ann Lee lives in Paris.", "Bob Ray lives in Paris.", "Ann Lee is a baker.", "Bob Ray is a tailor."],
    "base": ["I do not know."] * 4,
    "target before": ["She lives in Paris.", "He is in Rome.", "She is a baker.", "No idea."],
    "target after": ["Ann Lee lives in Rome.", "Bob Ray lives in Paris.", "Ann Lee is a tailor.", "A potter."],
}
# Bare answers, the target better after training and nothing lost.
HEALTHY = {
    "teacher": ["Paris", "Paris", "baker", "tailor"],
    "base": ["Lyon"] * 4,
    "target before": ["Rome", "Rome", "cook", "cook"],
    "target after": ["Paris", "Paris", "baker", "cook"],
}


def _evaluation(replies: dict[str, list[str]]) -> dict:
    rows = [_row(name, "made up", ITEMS, predictions, [1.0] * len(ITEMS)) for name, predictions in replies.items()]
    return {"items": [it.__dict__ for it in ITEMS], "rows": [*rows, chance_row(ITEMS)], "fingerprint": "x"}


def _train(last_loss: float) -> dict:
    curve = [{"step": s, "loss": 1.0 / s} for s in range(1, 9)]
    curve[3] |= {"val_loss": 0.5, "epoch": 1.0}
    curve[-1] = {"step": 8, "loss": last_loss, "val_loss": 0.45, "epoch": 2.0}
    return {
        "mode": "LoRA (fp32) on the CPU",
        "device": "cpu",
        "template": "plain template",
        "n_train": 30,
        "n_val": 3,
        "steps": 8,
        "best_step": None,
        "answer_tokens": 400,
        "seconds": 2.0,
        "tokens_per_s": 200.0,
        "curve": curve,
    }


def _made_up_run(tmp_path, pairs: list[tuple[int, float, bool]], replies: dict, last_loss: float, tau: float = 1.5):
    """A run folder and its store: scored pairs as (round, gap, kept), the evaluation's replies, a training curve."""
    recipe = {
        "select.rule": "ppl_ratio",
        "select.tau": tau,
        "select.min_answer_tokens": 3,
        "select.top_fraction": 1.0,
        "teacher.model": "/models/teacher.gguf",
        "teacher.lora": "/models/teacher-lora.gguf",
        "base.model": "/models/teacher.gguf",
        "target.model": "/models/target.gguf",
        "expand.strategy": "entities",
        "train.epochs": 2,
        "seed": 0,
    }
    with Store.open(tmp_path / "pool.db") as store:
        run_id = store.new_run(str(tmp_path / "r.toml"), "", recipe, "abc123")
        for round_ in sorted({r for r, _, _ in pairs}):
            mine = [(i, gap, kept) for i, (r, gap, kept) in enumerate(pairs) if r == round_]
            store.insert_prompts(
                {"id": i + 1, "run_id": run_id, "round": round_, "idx": k, "text": f"Where does person {i} live?"}
                | {"source": "seed" if round_ == 0 else "generated", "status": "new"}
                for k, (i, _, _) in enumerate(mine)
            )
            store.add_answers([{"prompt_id": i + 1, "text": f"Person {i} lives in Town {i}."} for i, _, _ in mine])
            store.add_scores(
                [
                    {"prompt_id": i + 1, "unit": "token", "n_tokens": 6, "gap": gap, "teacher_ppl": 2.0}
                    | {"base_ppl": 2.0 * math.exp(gap)}
                    for i, gap, _ in mine
                ]
            )
            decisions = [
                {"prompt_id": i + 1, "run_id": run_id, "round": round_, "kept": int(kept)}
                | {"reason": f"PPL ratio {math.exp(gap):.3g} {'>=' if kept else '<'} tau {tau:g}"}
                for i, gap, kept in mine
            ]
            store.record_selection(run_id, round_, decisions)
        store.update_run(run_id, status="done", unit="token")
    run_dir = tmp_path / "pool"
    (run_dir / "train").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"db": "../pool.db", "run_id": run_id}))
    (run_dir / "eval.json").write_text(json.dumps(_evaluation(replies)))
    (run_dir / "train" / "train.json").write_text(json.dumps(_train(last_loss)))
    return run_dir


ALL_KEPT = [(0, 1.2, True), (0, 2.5, True), (1, 0.9, True), (1, 1.7, True), (1, 3.1, True)]
SOME_REJECTED = [(0, 1.2, True), (0, 0.1, False), (1, 0.9, True), (1, 0.3, False), (1, -0.2, False), (1, 3.1, True)]
PLOTS = ("eval.png", "funnel.png", "gap_hist.png", "loss.png")


def test_a_troubled_run_says_what_to_worry_about(tmp_path):
    run_dir = _made_up_run(tmp_path, ALL_KEPT, TROUBLED, last_loss=0.002)
    md = report.write_report(run_dir).read_text()
    written = json.loads((run_dir / "report.json").read_text())
    assert [w["code"] for w in written["warnings"]] == [
        "all_kept",
        "memorised",
        "exact_match_useless",
        "harmed",
        "lost",
        "not_above_chance",
    ]
    for phrase in (
        "τ selected nothing: every one of the 5 scored pairs was kept",
        "The training loss reached 0.002",
        "Exact match is 0 for every model, while chance scores",
        "Training harmed the target**: contains fell from 0.500 before training to 0.250 after",
        "The target lost 2 of the 2 items it answered right before training",
        "“Which town is home to Ann Lee?” (reference “Paris”)",
        "The trained target is not above chance",
    ):
        assert phrase in md, phrase
    assert md.index("## Warnings") < md.index("## Evaluation")
    # τ named, and as the threshold on the gap axis
    assert "**τ = 1.5**" in md and "gap ≥ ln 1.5 = 0.405 nats per token" in md
    assert "### Example rejected pairs\n\nNone: no scored pair was rejected." in md
    for name in PLOTS:
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in md, name
    assert written["plots"] == list(PLOTS)


def test_a_healthy_run_has_no_warnings_and_shows_its_pairs_and_predictions(tmp_path):
    run_dir = _made_up_run(tmp_path, SOME_REJECTED, HEALTHY, last_loss=0.3)
    md = report.write_report(run_dir).read_text()
    written = json.loads((run_dir / "report.json").read_text())
    assert written["warnings"] == [] and "## Warnings\n\nNone of the checks fired" in md
    expected = {"rule": "ppl_ratio", "tau": 1.5, "decided": 6, "kept": 3, "rejected": 3}
    assert {k: written["selection"][k] for k in expected} == expected
    # three rejected pairs, the highest gap first, each with its reason
    rejected = written["examples"]["rejected"]
    assert [round(p["gap"], 3) for p in rejected] == [0.3, 0.1, -0.2]
    assert (
        "| 1 | 0.300 | 1.35 | Where does person 3 live? | Person 3 lives in Town 3. | PPL ratio 1.35 < tau 1.5 |" in md
    )
    # per-item predictions: the teacher's and the target's replies, each marked against the reference
    assert "| # | question | reference | teacher | target before | target after | outcome |" in md
    assert "| 4 | What is the profession of Bob Ray? | tailor | ✓ tailor | ✗ cook | ✗ cook | not transferred |" in md
    assert "- **teacher**: model `/models/teacher.gguf`, lora `/models/teacher-lora.gguf`" in md
    assert "- **select**: rule `ppl_ratio`, tau 1.5, min_answer_tokens 3\n" in md  # no top_fraction 1, no contrast
    # a rebuild from the same store and files is the same report
    assert report.write_report(run_dir).read_text() == md


def test_the_gap_plot_has_a_panel_per_round_and_the_threshold(tmp_path):
    pairs = [
        {"round": r, "gap": g, "kept": int(k), "source": "seed" if r == 0 else "generated"} for r, g, k in SOME_REJECTED
    ]
    selection = {"rule": "ppl_ratio", "tau": 1.5, "gap_threshold": math.log(1.5), "unit": "token"}
    plt = plots._pyplot()
    fig = plots.gaps_by_round(plt, pairs, selection)
    try:
        assert len(fig.axes) == 2  # round 0's two pairs in a panel of their own, not behind round 1's
        for ax, n in zip(fig.axes, (2, 4), strict=True):
            assert sum(patch.get_height() for patch in ax.patches) == n
            assert ax.lines[0].get_xdata()[0] == pytest.approx(math.log(1.5))
        assert fig.axes[0].get_title(loc="left") == "round 0 (the seed prompts): 2 scored; 1 kept, 1 rejected"
    finally:
        plt.close(fig)
    assert plots.gaps_by_round(plt, [], selection) is None
    assert plots.loss_by_epoch(plt, None) is None and plots.evaluation_bars(plt, []) is None


# -- each warning's condition, at its edge -------------------------------------------------------------------------


def _healthy() -> dict:
    rows = [
        {"name": "teacher", "exact_match": 0.5, "contains": 0.8},
        {"name": "target before", "exact_match": 0.0, "contains": 0.2},
        {"name": "target after", "exact_match": 0.0, "contains": 0.5},
        {"name": "chance", "exact_match": 0.1, "contains": 0.1},
    ]
    return {
        "selection": {"rule": "ppl_ratio", "tau": 1.5, "decided": 10, "kept": 9, "lowest_gap": 0.1},
        "train": {"curve": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": caveats.MEMORISED_LOSS}]},
        "eval": rows,
        "kept_and_lost": {"known_before": 2, "kept": 2, "lost": 0, "gained": 3},
        "items": [],
    }


def _set(path: str, value):
    def change(r: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            r = r[int(key)] if isinstance(r, list) else r[key]
        r[int(last) if isinstance(r, list) else last] = value

    return change


@pytest.mark.parametrize(
    ("change", "codes"),
    [
        (lambda r: None, []),
        (_set("selection.kept", 10), ["all_kept"]),
        (_set("selection.decided", 0), []),  # nothing selected yet: nothing to say
        (_set("train.curve.1.loss", 0.0099), ["memorised"]),
        (_set("train", None), []),
        (_set("eval.0.exact_match", 0.0), ["exact_match_useless"]),
        (lambda r: [_set("eval.0.exact_match", 0.0)(r), _set("eval.3.exact_match", 0.0)(r)], []),  # chance 0 too
        (_set("eval.2.contains", 0.19), ["harmed"]),
        (_set("eval.2.contains", 0.2), []),  # the same as before: not harmed
        (_set("kept_and_lost.lost", 1), ["lost"]),
        (_set("eval.2.contains", 0.1), ["harmed", "not_above_chance"]),
        (_set("eval", []), []),
    ],
)
def test_each_warning_appears_exactly_when_its_condition_holds(change, codes):
    r = copy.deepcopy(_healthy())
    change(r)
    assert [w["code"] for w in caveats.check(r)] == codes


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        (
            "ppl_ratio",
            "**τ = 2**: a pair is kept when PPL_base / PPL_teacher ≥ 2, i.e. gap ≥ ln 2 = 0.693 nats per byte",
        ),
        ("contrast", "gap ≥ ln 2 = 0.693 nats per byte, and its contrast ≥ min_contrast 1"),
        ("token_gap", "**τ = 2**: a pair is kept when the mean teacher-over-base log-prob lift"),
        ("top_fraction", "top_fraction: each round keeps its top 0.5 of pairs by gap"),
    ],
)
def test_the_keep_rule_is_named_with_its_threshold(rule, says):
    from tskd_lite.report_md import keep_rule

    recipe = {"select.rule": rule, "select.tau": 2.0, "select.top_fraction": 0.5, "select.min_contrast": 1.0}
    recipe["select.min_answer_tokens"] = 3
    selection = report._selection(recipe, [{"gap": 0.1, "kept": 0}, {"gap": 0.9, "kept": 1}], "byte")
    assert says in keep_rule(selection)
    assert (selection["gap_threshold"] is not None) == (rule in ("ppl_ratio", "contrast"))
    assert "Of 2 scored pairs selected so far, 1 were kept and 1 rejected." in keep_rule(selection)
