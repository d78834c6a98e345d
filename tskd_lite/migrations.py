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


# ISO-8601 in UTC to the millisecond, the way SQLite reads an epoch float ('unixepoch'); the floats stay as written.
def _iso(column: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', {column}, 'unixepoch')"


RUNS_READABLE_VIEW = f"""
select id as run_id, {_iso("created")} as created_iso, created, status, unit, recipe_path, recipe_hash,
       elapsed_s, message
from runs
order by id
"""

# Every recorded moment of every run in order: a run made, each stage of each round selected, each schema step.
TIMELINE_VIEW = f"""
select * from (
  select id as run_id, null as round, 'run created' as event, created as at, {_iso("created")} as at_iso from runs
  union all
  select run_id, round, 'candidates selected', selected_at, {_iso("selected_at")} from rounds
  union all
  select run_id, round, 'paraphrases selected', selected_at, {_iso("selected_at")} from paraphrase_rounds
  union all
  select null, null, 'schema step ' || name, applied_at, {_iso("applied_at")} from _migrations
)
order by at, run_id, round
"""

# One row per answer token per model, beside its log-prob: the token's bytes are cut from the answer where the
# scoring recorded each token ends (teacher_byte_ends; base_byte_ends where the base has its own tokenizer, and
# the teacher's ends where both share one). A token that holds only part of a character (byte-level tokenizers
# split some) has no text of its own: `token` is null there and `token_hex` has its bytes.
_CUT = "substr(cast(a.text as blob), t.byte_start + 1, t.byte_end - t.byte_start)"
_CONTINUATION = "hex(substr(cast(a.text as blob), {} + 1, 1)) between '80' and 'BF'"
ANSWER_TOKENS_VIEW = f"""
with ends as (
  select prompt_id, 'teacher' as model, teacher_byte_ends as ends, teacher_logprobs as logprobs from scores
  union all
  select prompt_id, 'base', case unit when 'token' then teacher_byte_ends else base_byte_ends end, base_logprobs
  from scores
), tokens as (
  select ends.prompt_id, ends.model, e.key as i,
         case e.key when 0 then 0 else json_extract(ends.ends, '$[' || (e.key - 1) || ']') end as byte_start,
         e.value as byte_end,
         json_extract(ends.logprobs, '$[' || e.key || ']') as logprob
  from ends, json_each(ends.ends) e
)
select p.run_id, p.round, t.prompt_id, t.model, t.i,
       case when {_CONTINUATION.format("t.byte_start")} or {_CONTINUATION.format("t.byte_end")} then null
            else cast({_CUT} as text) end as token,
       hex({_CUT}) as token_hex, t.logprob, t.byte_start, t.byte_end
from tokens t join prompts p on p.id = t.prompt_id join answers a on a.prompt_id = t.prompt_id
order by p.run_id, p.round, p.idx, t.model desc, t.i
"""


@migration
def m008_readable_times_and_tokens(db: sqlite_utils.Database) -> None:
    """ISO times beside the epoch floats, and each answer token's text beside its log-prob.

    Views over what stores already hold, so nothing a run reads back changes; the one new column, the base's
    token ends where its tokenizer is not the teacher's, is filled by scoring from this version on (older rows
    have it null and the view shows their base log-probs without tokens)."""
    _add_columns(db["scores"], {"base_byte_ends": str})
    db.create_view("runs_readable", RUNS_READABLE_VIEW, ignore=True)
    db.create_view("timeline", TIMELINE_VIEW, ignore=True)
    db.create_view("answer_tokens", ANSWER_TOKENS_VIEW, ignore=True)


@migration
def m009_agreements(db: sqlite_utils.Database) -> None:
    """The agreement keep rule's measure per scored pair: the teacher's sampled answers and how far they repeat
    the kept answer's claims (tskd_lite/agreement.py)."""
    db["agreements"].create(
        {"prompt_id": int, "agreement": float, "samples": str, "seconds": float},
        pk="prompt_id",
        foreign_keys=[("prompt_id", "prompts", "id")],
        if_not_exists=True,
    )
