"""The store's schema as an ordered list of named steps (the way simonw's `llm` keeps its migrations.py).

A store records the steps it has taken in `_migrations`; opening it for writing takes the missing ones, in order,
in one transaction. Stores made before this list existed have no `_migrations` table: every step is written so
that it finds what such a store already has and adds only what it lacks, so they take the same path.
A schema change is one new function at the end of this file, never an edit of an earlier one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlite_utils

SCHEMA_VERSION = 1  # the meta row that marks a database as a tskd-lite store (every release has written it)

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the steps db has not taken (the caller holds the transaction); returns their names."""
    db["_migrations"].create({"name": str, "applied_at": float}, pk="name", if_not_exists=True)
    done = {row["name"] for row in db["_migrations"].rows}
    applied = []
    for step in MIGRATIONS:
        if step.__name__ not in done:
            step(db)
            db["_migrations"].insert({"name": step.__name__, "applied_at": time.time()})
            applied.append(step.__name__)
    return applied


def _add_columns(table: sqlite_utils.db.Table, columns: dict[str, type]) -> None:
    for name, kind in columns.items():
        if name not in table.columns_dict:
            table.add_column(name, kind)


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    """The first release's tables: runs, prompts, answers, scores, selections and the per-round marks."""
    db["meta"].insert({"key": "schema_version", "value": SCHEMA_VERSION}, pk="key", ignore=True)
    db["runs"].create(
        {
            "id": int,
            "created": float,
            "recipe_path": str,
            "recipe_text": str,
            "recipe_json": str,
            "recipe_hash": str,
            "unit": str,
            "status": str,
            "message": str,
            "elapsed_s": float,
        },
        pk="id",
        if_not_exists=True,
    )
    db["prompts"].create(
        {
            "id": int,
            "run_id": int,
            "round": int,
            "idx": int,
            "text": str,
            "norm": str,
            "source": str,
            "fewshot_ids": str,
            "status": str,
            "dup_of": int,
            "gen_tokens": int,
            "gen_seconds": float,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
        if_not_exists=True,
    )
    db["prompts"].create_index(["run_id", "round", "idx"], unique=True, if_not_exists=True)
    db["answers"].create(
        {"prompt_id": int, "text": str, "n_tokens": int, "finish_reason": str, "seconds": float},
        pk="prompt_id",
        foreign_keys=[("prompt_id", "prompts", "id")],
        if_not_exists=True,
    )
    db["scores"].create(
        {
            "prompt_id": int,
            "unit": str,
            "n_units": int,
            "n_tokens": int,
            "teacher_nll": float,
            "base_nll": float,
            "gap": float,
            "teacher_ppl": float,
            "base_ppl": float,
            "teacher_logprobs": str,
            "base_logprobs": str,
            "decoded_tokens": int,
            "seconds": float,
        },
        pk="prompt_id",
        foreign_keys=[("prompt_id", "prompts", "id")],
        if_not_exists=True,
    )
    db["selections"].create(
        {"prompt_id": int, "run_id": int, "round": int, "kept": int, "reason": str},
        pk="prompt_id",
        foreign_keys=[("prompt_id", "prompts", "id")],
        if_not_exists=True,
    )
    _round_marks(db, "rounds")


def _round_marks(db: sqlite_utils.Database, table: str) -> None:
    """One completion mark per round and stage, each stage selected once."""
    db[table].create(
        {"run_id": int, "round": int, "n_kept": int, "selected_at": float},
        pk=("run_id", "round"),
        if_not_exists=True,
    )


@migration
def m002_paraphrases(db: sqlite_utils.Database) -> None:
    """Paraphrase augmentation: the kept prompt each paraphrase rewrites, and the paraphrase stage's marks."""
    _add_columns(db["prompts"], {"parent_id": int})
    _round_marks(db, "paraphrase_rounds")


@migration
def m003_strategies(db: sqlite_utils.Database) -> None:
    """Generation strategies: which one wrote a prompt, and from what (an entity, an opening)."""
    _add_columns(db["prompts"], {"strategy": str, "inputs": str})


@migration
def m004_contrasts(db: sqlite_utils.Database) -> None:
    """The contrast keep rule's measure per scored pair."""
    db["contrasts"].create(
        {"prompt_id": int, "contrast": float, "swapped": str, "seconds": float},
        pk="prompt_id",
        foreign_keys=[("prompt_id", "prompts", "id")],
        if_not_exists=True,
    )


@migration
def m005_model_identities(db: sqlite_utils.Database) -> None:
    """The size and hash of every model file a run was made with (a replaced file is refused on resume)."""
    _add_columns(db["runs"], {"models": str})


@migration
def m006_score_byte_ends(db: sqlite_utils.Database) -> None:
    """Where each scored answer token ends in the answer's bytes (token-level selection, the contrast rule)."""
    _add_columns(db["scores"], {"teacher_byte_ends": str})


# The keep rule's threshold as the run recorded it: tau, or the share for the top_fraction rule (flatten() keys
# are dotted, hence the quoted JSON path labels).
_SELECT_KEY = "json_extract(r.recipe_json, '$.\"select.{}\"')"

KEPT_PAIRS_VIEW = f"""
select p.run_id, p.round, p.id as prompt_id, coalesce(p.strategy, p.source) as strategy, p.source,
       p.text as prompt, a.text as answer, s.gap, s.unit, s.base_ppl / s.teacher_ppl as ppl_ratio,
       s.teacher_ppl, s.base_ppl, {_SELECT_KEY.format("rule")} as rule,
       case {_SELECT_KEY.format("rule")} when 'top_fraction' then {_SELECT_KEY.format("top_fraction")}
            else {_SELECT_KEY.format("tau")} end as threshold,
       sel.reason
from prompts p join selections sel on sel.prompt_id = p.id and sel.kept = 1
join answers a on a.prompt_id = p.id join scores s on s.prompt_id = p.id join runs r on r.id = p.run_id
order by p.run_id, p.round, p.idx
"""

# Every prompt of a round once (each joined table has one row per prompt at most), so the counts add up.
ROUND_SUMMARY_VIEW = """
select p.run_id, p.round, count(*) as candidates, sum(p.source = 'paraphrase') as paraphrases,
       sum(p.status = 'new') as new, sum(p.status = 'duplicate') as duplicates, sum(p.status = 'empty') as empty,
       sum(p.status = 'drifted') as drifted, count(a.prompt_id) as answered, count(s.prompt_id) as scored,
       coalesce(sum(sel.kept), 0) as kept, avg(s.gap) as mean_gap, max(s.gap) as max_gap
from prompts p left join answers a on a.prompt_id = p.id left join scores s on s.prompt_id = p.id
left join selections sel on sel.prompt_id = p.id
group by p.run_id, p.round
order by p.run_id, p.round
"""


@migration
def m007_audit_views(db: sqlite_utils.Database) -> None:
    """Views for reading a store with SQL or Datasette: the kept pairs in words, and each round's funnel."""
    db.create_view("kept_pairs", KEPT_PAIRS_VIEW, ignore=True)
    db.create_view("round_summary", ROUND_SUMMARY_VIEW, ignore=True)
