"""TuneShift-KD, top to bottom: seeds -> (expand -> respond -> score -> select) per round -> dataset.

Every step asks the store what is still missing and commits each item as it finishes, and every random choice
is seeded by the run seed and the item's (round, index), so a run killed at any point and resumed produces the
same pool and dataset as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from tqdm import tqdm

from tskd_lite import agreement, contrast, expand, gguf_meta, quantize, rundir
from tskd_lite.backends import Backend, backend_class, open_backend
from tskd_lite.dedup import Pool, normalise
from tskd_lite.errors import TskdError
from tskd_lite.export import export
from tskd_lite.recipe import ModelSpec, Recipe, changed_keys, flatten, recipe_hash
from tskd_lite.report import write_report
from tskd_lite.score import score_pairs
from tskd_lite.select import RULES, decide
from tskd_lite.store import RunInfo, Store
from tskd_lite.strategies import STRATEGIES, Round

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunResult:
    run_id: int
    status: str  # "done" or "stopped"
    message: str
    kept: int
    db: Path
    export_path: Path


class _Models:
    """Models loaded on first use, so a resumed run that has nothing left to generate loads no model."""

    def __init__(self, recipe: Recipe, log: Log) -> None:
        self.recipe, self.log = recipe, log

    def _load(self, role: str) -> Backend:
        spec = getattr(self.recipe, role) if role != "generator" else self.recipe.generator_spec
        self.log(f"loading {role}: {describe_model(spec, lambda path: path.name)}")
        if spec.requantize is not None:  # the copy lives in the run folder, claimed first as every output is
            out = self.recipe.output
            rundir.claim(out.run_dir, out.db, None, f"{self.recipe.path}: output.dir", self.recipe.path)
            folder = out.run_dir / "weights"
            spec = replace(spec, model=quantize.cached(spec.model, spec.requantize, folder, self.recipe.threads))
            self.log(f"{role}: scoring and writing with its {spec.requantize} copy {spec.model}")
        return open_backend(spec, role=role, threads=self.recipe.threads, parallel=self.recipe.parallel)

    @cached_property
    def teacher(self) -> Backend:
        return self._load("teacher")

    @cached_property
    def base(self) -> Backend:
        return self._load("base")

    @cached_property
    def generator(self) -> Backend:
        return self.teacher if self.recipe.generator is None else self._load("generator")

    def close(self) -> None:
        for role in ("teacher", "base", "generator"):
            if role in self.__dict__:
                self.__dict__[role].close()


def describe_model(spec: ModelSpec, name: Callable[[Path], str] = str) -> str:
    """A model as the log and `check` name it: its file and LoRA, or its name on the server that serves it."""
    model = name(spec.model) if spec.url is None else f"{spec.served_model} at {spec.url}"
    copy = f" (as a {spec.requantize} copy)" if spec.requantize else ""
    return model + copy + (f" + LoRA {name(spec.lora)}" if spec.lora else "")


def _logged(command: str) -> Callable:
    """An entry point whose log also goes into the run folder's run.log (rundir.RunLog, one place for every
    command that runs a recipe), with the error it stops on. Nested (run_all calls the others) they share one."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def logged(recipe: Recipe, **kwargs):
            log = kwargs.get("log", print)
            if not isinstance(log, rundir.RunLog):
                out = recipe.output
                log = rundir.RunLog(log, out.run_dir, out.db, f"tskd-lite {command} {recipe.path}")
            try:
                return fn(recipe, **{**kwargs, "log": log})
            except BaseException as e:
                log.stopped(e)
                raise

        return logged

    return wrap


@_logged("run (dataset)")
def run(recipe: Recipe, *, force_new: bool = False, progress: bool = True, log: Log = print) -> RunResult:
    """Run (or resume) the recipe's pipeline and export its dataset."""
    out = recipe.output
    rundir.check_outputs(recipe)  # before the store makes any file
    store = Store.open(out.db)
    models = _Models(recipe, log)
    try:
        if force_new or store.latest_run() is None:
            _preflight(recipe, models)
        run_id = _start(store, recipe, force_new, log)
        rundir.claim(out.run_dir, out.db, run_id, f"{recipe.path}: output.dir", recipe.path)
        log(f"run folder: {out.run_dir} (run.log there keeps this log)")  # and writes the lines so far into it
        started = time.perf_counter()
        try:
            status, message = _rounds(store, run_id, recipe, models, progress, log)
        except BaseException as e:
            _record_stop(store, run_id, e, time.perf_counter() - started)
            raise
        store.add_elapsed(run_id, time.perf_counter() - started)
        store.update_run(run_id, status=status, message=message)
        store.record_export(out.export_path)  # first: a kill after the write must not leave our own file unowned
        kept = export(store, run_id, out.export_path, out.format, provenance=out.provenance)
        return RunResult(run_id, status, message, kept, out.db, out.export_path)
    finally:
        models.close()
        store.close()


def _record_stop(store: Store, run_id: int, error: BaseException, seconds: float) -> None:
    """Mark a run that stopped on an error failed (interrupted on Ctrl-C), so it is never left "running". When the
    store itself is what failed (disk full), this can fail too: the original error is the one to report."""
    if isinstance(error, KeyboardInterrupt):
        status, message = "interrupted", "interrupted; run again to resume"
    else:
        status, message = "failed", str(error) if isinstance(error, TskdError) else f"{type(error).__name__}: {error}"
    try:
        store.add_elapsed(run_id, seconds)
        store.update_run(run_id, status=status, message=message)
    except (sqlite3.Error, OSError):
        pass


@_logged("run")
def run_all(recipe: Recipe, *, force_new: bool = False, progress: bool = True, log: Log = print) -> RunResult:
    """Seeds -> selected dataset -> trained target -> evaluation -> report, as far as the recipe's tables go."""
    result = run(recipe, force_new=force_new, progress=progress, log=log)
    log(f"run {result.run_id} {result.status}: {result.message}")
    log(f"dataset: {result.export_path} ({result.kept} pairs)")
    after = stages(recipe)[1]
    if "train" in after and result.kept:
        train_target(recipe, progress=progress, log=log)
    if "eval" in after:
        evaluate_run(recipe, progress=progress, log=log)
    if "report" in after:
        log(f"report: {write_report(recipe.output.run_dir)}")
    return result


def stages(recipe: Recipe) -> tuple[list[str], list[str]]:
    """What run_all does for the recipe: the stages of each round, then those after the rounds (`check` shows them,
    run_all follows them, so the two cannot disagree)."""
    cfg = recipe.expand
    per_round = (["expand"] if cfg.rounds > 0 else []) + ["respond", "score", *RULES[recipe.select.rule].needs]
    per_round += ["select"] + (["paraphrase"] if cfg.paraphrases else [])
    after = ["export"]
    if recipe.target is not None:
        after += ["train", "eval"] if recipe.eval is not None else ["train"]
    if recipe.target is not None or recipe.eval is not None:
        after.append("report")
    return per_round, after


def _about(model: Path) -> str | None:
    return "Hugging Face folder" if model.is_dir() else gguf_meta.model_name(model)


def plan(recipe: Recipe) -> dict:
    """What `run` would do with the recipe, found without loading a model or writing a file (`check`): each role's
    model and backend, the gap's unit (with a warning where teacher and base tokenizers differ, the likeliest
    mistake: a base that is not the teacher's own), the stages, and the run it resumes or the new one it starts."""
    roles = {}
    for role in ("teacher", "base", "generator"):
        spec = getattr(recipe, role)
        if spec is not None:
            about = None if spec.model is None else _about(spec.model)
            roles[role] = {"model": describe_model(spec), "backend": spec.backend, "about": about}
    if recipe.target is not None:
        model = recipe.target.model
        roles["target"] = {"model": str(model), "backend": "transformers", "about": _about(model)}
    run, recorded_unit = _run_plan(recipe)
    unit = recorded_unit or gap_unit(recipe)  # a resumed run keeps the unit it was scored in
    warnings = []
    if unit == "byte":
        teacher, base = (f"{r}: {roles[r]['about'] or roles[r]['model']}" for r in ("teacher", "base"))
        warnings.append(
            f"teacher and base tokenizers differ ({teacher}; {base}): the gap is measured per byte of answer text, "
            "not per token; the base should be the model the teacher was fine-tuned from"
        )
    per_round, after = stages(recipe)
    stages_ = {"each_round": per_round, "after_rounds": after}
    return {"roles": roles, "unit": unit, "warnings": warnings, "stages": stages_, "run": run}


def _run_plan(recipe: Recipe) -> tuple[dict, str | None]:
    """Whether `run` resumes a run of the recipe's store (read only; TskdError where it would refuse) or starts one,
    and the unit a resumed run was scored in."""
    db, latest = recipe.output.db, None
    if db.is_file() and db.stat().st_size > 0:  # an empty file becomes a store at run, as a missing one does
        with Store.read(db) as store:
            latest = resumable(store, recipe)
    if latest is None:
        return {"action": "new", "db": str(db), "run_id": None, "status": None, "message": None}, None
    resume = {"action": "resume", "db": str(db), "run_id": latest.id, "status": latest.status}
    return resume | {"message": latest.message}, latest.unit


@_logged("train")
def train_target(recipe: Recipe, *, progress: bool = True, log: Log = print):
    """Train the target on the exported dataset of the recipe's run."""
    from tskd_lite.train import dist, read_pairs, train

    log = dist.on_main(log)  # under torchrun or accelerate launch: one voice, rank 0's
    rundir.claim(recipe.output.run_dir, recipe.output.db, None, f"{recipe.path}: output.dir", recipe.path)
    path = recipe.output.export_path
    if not path.is_file():
        raise TskdError(f"{path}: no dataset yet; run the recipe first")
    if recipe.target is None:
        raise TskdError(f"{recipe.path}: target: a [target] table is needed to train")
    pairs = read_pairs(path) if recipe.train.token_top_fraction == 1.0 else token_selected_pairs(recipe, log)
    # under torchrun or accelerate launch (one process per device), rank 0 holds the lock for all of them
    with rundir.lock(recipe.output.run_dir) if dist.is_main() else contextlib.nullcontext():
        result = train(recipe.target, recipe.train, recipe.output.run_dir / "train", pairs, progress=progress, log=log)
    log(
        f"trained the target: {result.mode}, {result.steps} steps, {result.tokens_per_s:.0f} answer tokens/s; "
        f"adapter in {result.out_dir}"
    )
    return result


def token_selected_pairs(recipe: Recipe, log: Log) -> list:
    """The kept pairs with the byte spans of their top answer tokens, from the per-token scores in the store."""
    from tskd_lite.select import top_token_spans

    with Store.read(recipe.output.db) as store:
        run = store.get_run(None)
        if run.unit != "token":
            raise TskdError(
                f"{recipe.path}: train.token_top_fraction: token-level selection needs teacher and base to share a "
                "tokenizer (this run scores per byte)"
            )
        rows = store.kept_pairs(run.id)
    fraction = recipe.train.token_top_fraction
    log(f"token-level selection: training on the top {fraction:.0%} of answer tokens by teacher-over-base lift")
    return [
        (
            r["prompt"],
            r["answer"],
            top_token_spans(
                json.loads(r["teacher_logprobs"]),
                json.loads(r["base_logprobs"]),
                json.loads(r["teacher_byte_ends"]),
                fraction,
            ),
        )
        for r in rows
    ]


@_logged("eval")
def evaluate_run(recipe: Recipe, *, progress: bool = True, log: Log = print) -> dict:
    from tskd_lite.evaluate import evaluate

    rundir.claim(recipe.output.run_dir, recipe.output.db, None, f"{recipe.path}: output.dir", recipe.path)
    with rundir.lock(recipe.output.run_dir):
        result = evaluate(recipe, train_dir=recipe.output.run_dir / "train", progress=progress, log=log)
    for row in result["rows"]:
        nll = "-" if row["nll_per_byte"] is None else f"{row['nll_per_byte']:.4f}"
        log(
            f"{row['name']:>14}: exact {row['exact_match']:.3f}  contains {row['contains']:.3f}  "
            f"NLL {nll} nats/byte  ({row['runtime']})"
        )
    return result


def _preflight(recipe: Recipe, models: _Models) -> None:
    """Before a new run: every seed, and the prompt-writing instruction at its longest, fit the models' contexts, so
    an overflow is not found rounds later. (n_ctx may change on a resume: raising it is the fix.)"""
    teacher = models.teacher
    for i, seed in enumerate(recipe.seeds.prompts, 1):
        n = teacher.count_prompt_tokens(teacher.render(seed))
        if n >= teacher.spec.n_ctx:
            raise TskdError(
                f"{recipe.path}: teacher.n_ctx: seed prompt {i} takes {n} tokens with the chat template, leaving no "
                f"room for an answer in n_ctx = {teacher.spec.n_ctx}; raise teacher.n_ctx or shorten the seed"
            )
    cfg = recipe.expand
    if cfg.rounds == 0 or STRATEGIES[cfg.strategy].writer != "generator":
        return
    writer = models.generator
    tokens = writer.count_answer_tokens
    longest = sorted(recipe.seeds.prompts, key=tokens)[-cfg.few_shot :]
    worst = [{"text": max(text, "x " * cfg.max_prompt_tokens, key=tokens)} for text in longest]
    rendered = writer.render(expand.instruction(cfg.instruction, worst))
    n = writer.count_prompt_tokens(rendered) + cfg.max_prompt_tokens
    if n > writer.spec.n_ctx:
        role = "generator" if recipe.generator is not None else "teacher"
        raise TskdError(
            f"{recipe.path}: {role}.n_ctx: the prompt-writing instruction with {cfg.few_shot} examples as long as "
            f"expand.max_prompt_tokens allows, and its reply, can take {n} tokens, more than n_ctx = "
            f"{writer.spec.n_ctx}; raise {role}.n_ctx or lower expand.few_shot or expand.max_prompt_tokens"
        )


def resumable(store: Store, recipe: Recipe) -> RunInfo | None:
    """The run of store that `run` (without --force-new) resumes for recipe, None where it starts a new one; raises
    TskdError where it refuses (a key that alters results changed, a model file replaced in place). Reads only, so
    `check` asks the same question `run` does."""
    latest = store.latest_run()
    if latest is None:
        return None
    flat = flatten(recipe)
    changed = changed_keys(latest.recipe, flat)
    if changed:
        raise TskdError(
            f"{store.path}: run {latest.id} was made with a different recipe ({', '.join(changed)} changed); "
            "restore those keys to resume it, or pass --force-new to start a new run in this database"
        )
    models = _model_identities(recipe)
    recorded = store.run_models(latest.id) or {}
    for key, value in recorded.items():
        if key in models and models[key] != value:
            raise TskdError(
                f"{recipe.path}: {key}: {flat[key]} is not the file run {latest.id} was made with (size or "
                "content changed); restore it, or pass --force-new to start a new run"
            )
    return latest


def gap_unit(recipe: Recipe) -> str:
    """How the run's gaps are measured: per token where teacher and base split text alike (their log-probs compare
    token by token), else per byte of answer text."""
    teacher, base = (backend_class(spec).tokenizer_identity(spec) for spec in (recipe.teacher, recipe.base))
    return "token" if teacher == base else "byte"


def _start(store: Store, recipe: Recipe, force_new: bool, log: Log) -> int:
    flat = flatten(recipe)
    latest = None if force_new else resumable(store, recipe)
    if latest is not None:
        store.resume_run(latest.id, str(recipe.path), flat)
        store.update_run(latest.id, models=json.dumps(_model_identities(recipe), sort_keys=True))
        log(f"resuming run {latest.id} in {store.path}")
        return latest.id
    unit = gap_unit(recipe)
    if unit == "byte":
        log("teacher and base tokenizers differ: perplexities are compared per byte of answer text, not per token")
    run_id = store.new_run(str(recipe.path), recipe.text, flat, recipe_hash(recipe))
    store.update_run(run_id, unit=unit, models=json.dumps(_model_identities(recipe), sort_keys=True))
    log(f"new run {run_id} in {store.path}")
    return run_id


def _model_identities(recipe: Recipe) -> dict[str, str]:
    """What each model the pool depends on is made of, as its backend identifies it, keyed by recipe key."""
    out: dict[str, str] = {}
    for role in ("teacher", "base", "generator"):
        spec = getattr(recipe, role)
        if spec is not None:
            out |= backend_class(spec).identities(spec, role)
    return out


@dataclass
class _Run:
    """What every stage of a run works with: one object instead of the same seven arguments at each call."""

    recipe: Recipe
    store: Store
    run_id: int
    models: _Models
    pool: Pool  # the near-duplicate index over every new prompt so far
    unit: str  # "token" or "byte": how gaps are measured
    progress: bool


def _rounds(store: Store, run_id: int, recipe: Recipe, models: _Models, progress: bool, log: Log) -> tuple[str, str]:
    if not store.prompts(run_id, where="round = 0"):
        store.insert_prompts(
            {
                "run_id": run_id,
                "round": 0,
                "idx": i,
                "text": text,
                "norm": normalise(text),
                "source": "seed",
                "fewshot_ids": "[]",
                "status": "new",
            }
            for i, text in enumerate(recipe.seeds.prompts)
        )
    pool = Pool(recipe.dedup.near_threshold)
    for p in store.prompts(run_id, where="status = 'new'"):
        pool.add(p["id"], p["norm"])
    ctx = _Run(recipe, store, run_id, models, pool, store.get_run(run_id).unit, progress)

    kept_total = 0
    for round_ in range(recipe.expand.rounds + 1):
        if round_ > 0 and _expand(ctx, round_) == 0:
            return "done", f"the {recipe.expand.strategy} strategy has no new prompts for round {round_}"
        n_kept, n_scored = _settle(ctx, round_, "candidates")
        kept_total += n_kept
        log(f"round {round_}: kept {n_kept} of {n_scored} scored pairs (total kept {kept_total})")
        if n_kept == 0:
            return "stopped", (
                f"round {round_} kept none of its {n_scored} scored pairs; stopping. Lower select.tau, "
                "raise expand.candidates_per_round or give other seeds"
            )
        if recipe.expand.paraphrases:
            _paraphrase(ctx, round_)
            n_kept, n_scored = _settle(ctx, round_, "paraphrases")
            kept_total += n_kept
            log(f"round {round_}: kept {n_kept} of {n_scored} scored paraphrases (total kept {kept_total})")
        if kept_total >= recipe.expand.target_kept:
            return "done", f"kept {kept_total} pairs (target_kept {recipe.expand.target_kept}) after round {round_}"
    return "done", f"kept {kept_total} pairs after the round limit ({recipe.expand.rounds})"


def _settle(c: _Run, round_: int, stage: str) -> tuple[int, int]:
    """respond -> score -> (the rule's measurements) -> select for one stage of a round; returns (kept, scored)."""
    _respond(c, round_)
    _score(c, round_)
    for need in RULES[c.recipe.select.rule].needs:
        MEASUREMENTS[need](c, round_)
    selected = c.store.round_selected(c.run_id, round_, stage) or _select(c, round_, stage)
    n_scored = sum(_in_stage(s["source"], stage) for s in c.store.scored(c.run_id, round_))
    return selected["n_kept"], n_scored


def _in_stage(source: str, stage: str) -> bool:
    return (source == "paraphrase") == (stage == "paraphrases")


def _bar(progress: bool, desc: str, total: int, initial: int = 0) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, unit="item", disable=not progress, dynamic_ncols=True)


def _groups(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _expand(c: _Run, round_: int) -> int:
    """Write the round's candidates with the recipe's strategy, a group at a time, each group committed whole;
    returns how many the round has (a strategy may run out: entities once every name was asked)."""
    store, run_id, recipe, models = c.store, c.run_id, c.recipe, c.models
    pool, progress = c.pool, c.progress
    cfg = recipe.expand
    strategy = _strategy(c, round_)
    total, start = strategy.count(), store.next_idx(run_id, round_)
    if start >= total:
        return total
    with _bar(progress, f"round {round_} expand", total, start) as bar:
        for group in _groups(list(range(start, total)), recipe.parallel):
            asks = [strategy.ask(idx) for idx in group]
            to_write = [i for i, ask in enumerate(asks) if ask.prompt is None]
            written = {}
            if to_write:
                gens, seconds = _write_prompts(
                    getattr(models, strategy.writer),
                    [asks[i].rendered for i in to_write],
                    [expand.item_seed(recipe.seed, "expand", round_, group[i]) for i in to_write],
                    cfg,
                )
                written = {i: (gen, seconds) for i, gen in zip(to_write, gens, strict=True)}
            rows = []
            prompt_id = store.next_prompt_id()
            for i, (idx, ask) in enumerate(zip(group, asks, strict=True)):
                gen, seconds = written.get(i, (None, 0.0))
                text = ask.prompt if gen is None else expand.clean(ask.lead + gen.text)
                row = _candidate(
                    pool, prompt_id, run_id, round_, idx, text, "generated", _ids(ask.sources), gen, seconds
                )
                inputs = json.dumps(ask.inputs) if ask.inputs else None
                rows.append(row | {"strategy": cfg.strategy, "inputs": inputs})
                prompt_id += 1
            store.insert_prompts(rows)  # the whole group or none of it: a resume redoes exactly this group
            bar.update(len(group))
    return total


def _strategy(c: _Run, round_: int):
    """The recipe's strategy over what the store held before this round (so a resumed round plans alike)."""
    store, run_id, recipe, models = c.store, c.run_id, c.recipe, c.models
    writer = STRATEGIES[recipe.expand.strategy].writer
    engine = (lambda: getattr(models, writer)) if writer else None
    return STRATEGIES[recipe.expand.strategy](
        Round(
            cfg=recipe.expand,
            seed=recipe.seed,
            number=round_,
            pool=store.kept_prompts_before(run_id, round_),
            answers=lambda: [r["answer"] for r in store.kept_pairs(run_id) if r["round"] < round_],
            earlier={p["norm"] for p in store.prompts(run_id, where="round < ?", params=[round_])},
            render=lambda text: engine().render(text),
            user_prefix=lambda: engine().user_prefix(),
        )
    )


def _paraphrase(c: _Run, round_: int) -> None:
    """k rephrasings of each prompt the round kept, written by the base (or the generator); rewrites that lost a
    name or number are recorded as drifted, near duplicates (of the original too) as duplicates. Items are
    (kept prompt, j) in a fixed order and each group is committed whole, so a resume continues at the first
    missing item with the same seeds."""
    store, run_id, recipe, models = c.store, c.run_id, c.recipe, c.models
    pool, progress = c.pool, c.progress
    cfg = recipe.expand
    todo = [(parent, j) for parent in store.kept_in_round(run_id, round_) for j in range(cfg.paraphrases)]
    done = store.count_paraphrases(run_id, round_)
    if done >= len(todo):
        return
    writer = models.base if cfg.paraphrase_writer == "base" else models.generator
    first_idx = store.next_idx(run_id, round_) - done  # paraphrases follow the round's other prompts
    with _bar(progress, f"round {round_} paraphrase", len(todo), done) as bar:
        for group in _groups(list(range(done, len(todo))), recipe.parallel):
            asks = [cfg.paraphrase_instruction.replace("{prompt}", todo[k][0]["text"]) for k in group]
            gens, seconds = _write_prompts(
                writer,
                [ask if cfg.paraphrase_template == "raw" else writer.render(ask) for ask in asks],
                [expand.item_seed(recipe.seed, "paraphrase", round_, k) for k in group],
                cfg,
            )
            rows = []
            prompt_id = store.next_prompt_id()
            for k, gen in zip(group, gens, strict=True):
                parent, text = todo[k][0], expand.clean(gen.text)
                # a rewrite that lost a name or number of its parent asks about something else: recorded, dropped
                drifted = bool(text) and not expand.keeps_names(parent["text"], text)
                row = _candidate(
                    pool, prompt_id, run_id, round_, first_idx + k, text, "paraphrase", "[]", gen, seconds, drifted
                )
                rows.append(row | {"parent_id": parent["id"]})
                prompt_id += 1
            store.insert_prompts(rows)
            bar.update(len(group))


def _write_prompts(generator: Backend, rendered: list[str], seeds: list[int], cfg) -> tuple[list, float]:
    """One group of prompts written with the [expand] sampling settings, and the seconds it took per prompt."""
    t0 = time.perf_counter()
    gens = generator.generate(
        rendered, max_tokens=cfg.max_prompt_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seeds=seeds
    )
    return gens, (time.perf_counter() - t0) / len(rendered)


def _candidate(
    pool: Pool,
    prompt_id: int,
    run_id: int,
    round_: int,
    idx: int,
    text: str,
    source: str,
    fewshot: str,
    gen,
    seconds: float,
    drifted: bool = False,
) -> dict:
    """A generated prompt's row, its status decided (empty, drifted, duplicate of the pool, or new: then added)."""
    norm = normalise(text)
    dup = pool.duplicate_of(norm) if norm and not drifted else None
    status = "empty" if not norm else "drifted" if drifted else "duplicate" if dup is not None else "new"
    if status == "new":
        pool.add(prompt_id, norm)
    return {
        "id": prompt_id,
        "run_id": run_id,
        "round": round_,
        "idx": idx,
        "text": text,
        "norm": norm,
        "source": source,
        "fewshot_ids": fewshot,
        "status": status,
        "dup_of": dup,
        "gen_tokens": gen.n_tokens if gen is not None else 0,
        "gen_seconds": seconds,
    }


def _ids(ids) -> str:
    return "[" + ",".join(str(i) for i in ids) + "]"


def _respond(c: _Run, round_: int) -> None:
    store, run_id, recipe, models = c.store, c.run_id, c.recipe, c.models
    progress = c.progress
    todo = store.unanswered(run_id, round_)
    if not todo:
        return
    cfg, teacher = recipe.respond, models.teacher
    with _bar(progress, f"round {round_} respond", len(todo)) as bar:
        for group in _groups(todo, recipe.parallel):
            t0 = time.perf_counter()
            gens = teacher.generate(
                [teacher.render(p["text"]) for p in group],
                max_tokens=cfg.max_answer_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                seeds=[expand.item_seed(recipe.seed, "respond", round_, p["idx"]) for p in group],
            )
            seconds = (time.perf_counter() - t0) / len(group)
            store.add_answers(
                [
                    {
                        "prompt_id": p["id"],
                        "text": gen.text.strip(),
                        "n_tokens": gen.n_tokens,
                        "finish_reason": gen.finish_reason,
                        "seconds": seconds,
                    }
                    for p, gen in zip(group, gens, strict=True)
                ]
            )
            bar.update(len(group))


def _score(c: _Run, round_: int) -> None:
    store, run_id, recipe, models = c.store, c.run_id, c.recipe, c.models
    unit, progress, parallel = c.unit, c.progress, recipe.parallel
    todo = [row for row in store.unscored(run_id, round_) if row["answer"]]
    if not todo:
        return
    teacher, base = models.teacher, models.base
    with _bar(progress, f"round {round_} score", len(todo)) as bar:
        for group in _groups(todo, parallel):
            scores = score_pairs(teacher, base, [(row["prompt"], row["answer"]) for row in group], unit)
            store.add_scores([{"prompt_id": row["id"], **s} for row, s in zip(group, scores, strict=True)])
            bar.update(len(group))


def _contrast(c: _Run, round_: int) -> None:
    """The teacher scores each scored pair again with the prompt's names and numbers swapped for invented ones
    (tskd_lite/contrast.py); one contrast per pair, committed a group at a time."""
    store, run_id, recipe, models = c.store, c.run_id, c.recipe, c.models
    progress = c.progress
    todo = store.unmeasured(run_id, round_, "contrasts", teacher_scores=True)
    if not todo:
        return
    teacher, k = models.teacher, recipe.select.contrast_swaps
    with _bar(progress, f"round {round_} contrast", len(todo)) as bar:
        for group in _groups(todo, recipe.parallel):
            t0 = time.perf_counter()
            plans = [
                contrast.plan(r["prompt"], r["answer"], expand.item_seed(recipe.seed, "contrast", round_, r["idx"]), k)
                for r in group
            ]
            pairs = [(teacher.render(p), a) for plan in plans for p, a, _, _ in plan]
            scores = teacher.score_answers(pairs, byte_ends=True) if pairs else []
            rows, at = [], 0
            for r, plan in zip(group, plans, strict=True):
                swapped = []
                for _, _, old, new in plan:  # the pair's swaps, in the order they were flattened
                    swapped.append((scores[at].logprobs, scores[at].byte_ends, old, new))
                    at += 1
                real = (json.loads(r["teacher_logprobs"]), json.loads(r["teacher_byte_ends"]))
                rows.append(
                    {
                        "prompt_id": r["id"],
                        "contrast": contrast.contrast(real, swapped) if plan else None,
                        "swapped": json.dumps([p for p, *_ in plan]),
                        "seconds": (time.perf_counter() - t0) / len(group),
                    }
                )
            store.add_measured("contrasts", rows)
            bar.update(len(group))


def _agreement(c: _Run, round_: int) -> None:
    """The teacher answers each scored pair's prompt again, agreement_samples times by sampling (each sample its
    own seed), and the pair's agreement is how far the samples repeat its answer's claims (tskd_lite/agreement.py);
    committed a group at a time."""
    store, run_id, recipe, teacher = c.store, c.run_id, c.recipe, c.models.teacher
    todo = store.unmeasured(run_id, round_, "agreements")
    if not todo:
        return
    cfg, k = recipe.select, recipe.select.agreement_samples
    with _bar(c.progress, f"round {round_} agreement", len(todo)) as bar:
        for group in _groups(todo, max(1, recipe.parallel // k)):
            t0 = time.perf_counter()
            gens = teacher.generate(
                [teacher.render(r["prompt"]) for r in group for _ in range(k)],
                max_tokens=recipe.respond.max_answer_tokens,
                temperature=cfg.agreement_temperature,
                top_p=1.0,
                seeds=[
                    expand.item_seed(recipe.seed, "agreement", round_, r["idx"], j) for r in group for j in range(k)
                ],
            )
            seconds = (time.perf_counter() - t0) / len(group)
            rows = []
            for i, r in enumerate(group):
                samples = [g.text.strip() for g in gens[i * k : (i + 1) * k]]
                rows.append(
                    {
                        "prompt_id": r["id"],
                        "agreement": agreement.agreement(r["prompt"], r["answer"], samples),
                        "samples": json.dumps(samples),
                        "seconds": seconds,
                    }
                )
            store.add_measured("agreements", rows)
            bar.update(len(group))


# What a keep rule may ask to be measured before it selects (select.Rule.needs), by name.
MEASUREMENTS = {"contrast": _contrast, "agreement": _agreement}


def _select(c: _Run, round_: int, stage: str) -> dict:
    store, run_id, recipe = c.store, c.run_id, c.recipe
    scored = [s for s in store.scored(run_id, round_) if _in_stage(s["source"], stage)]
    rows = [
        {"prompt_id": s["prompt_id"], "run_id": run_id, "round": round_, "kept": int(keep), "reason": reason}
        for s, (keep, reason) in zip(scored, decide(scored, recipe.select), strict=True)
    ]
    scored_ids = {s["prompt_id"] for s in scored}
    rows += [
        {"prompt_id": p["id"], "run_id": run_id, "round": round_, "kept": 0, "reason": "empty answer"}
        for p in store.prompts(run_id, where="round = ? and status = 'new'", params=[round_])
        if p["id"] not in scored_ids and _in_stage(p["source"], stage)
    ]
    store.record_selection(run_id, round_, rows, stage)
    return store.round_selected(run_id, round_, stage)
