"""The command line: arguments to Settings, then every domain's arms (or, with --curve, the oracle's curve)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from tskd_lite.target import quiet_transformers

from . import arms, stats
from .domain import Domain, log
from .settings import Budget, Settings
from .tables import curve_markdown, markdown, teacher_lines

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "python -m bench.transfer"  # run from the repository root
DEFAULTS = Settings(seeds=[0, 1, 2])


def parser() -> argparse.ArgumentParser:
    from . import __doc__ as description

    p = argparse.ArgumentParser(
        prog=COMMAND,
        description=description.splitlines()[0],
        epilog=arms.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = DEFAULTS
    p.add_argument("--domain", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "transfer.toml")
    p.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (--curve: 0)")
    p.add_argument("--arms", nargs="+", choices=arms.ARMS, default=list(arms.DEFAULT_ARMS), help="listed below")
    p.add_argument("--pairs", type=int, help="training pairs per arm (default: the domain's train.jsonl size)")
    p.add_argument("--steps", type=int, help="fixed training steps per arm (default: see --max-passes)")
    p.add_argument(
        "--epochs", type=float, default=d.epochs, help="passes over the domain's pairs: every arm's step budget"
    )
    p.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="> 0: up to --epochs, stopped when held-out loss on a tenth of the arm's pairs stops improving",
    )
    p.add_argument(
        "--max-passes",
        type=float,
        default=d.max_passes,
        help="every arm trains the domain's step budget (--epochs over the domain's pairs), at most this many "
        "passes over its own pairs (0: --epochs over its own pairs)",
    )
    p.add_argument("--rank", type=int, help="LoRA rank of the target (default: the recipe's)")
    p.add_argument("--lr", type=float, help="the target's learning rate (default: the recipe's)")
    p.add_argument("--eval-limit", type=int, default=d.eval_limit, help="held-out items per domain (0: all)")
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs, help="at most; stopped on held-out loss")
    p.add_argument("--teacher-patience", type=int, default=d.teacher_patience)
    p.add_argument("--teacher-lr", type=float, default=d.teacher_lr)
    p.add_argument("--curve", action="store_true", help="learning-curve mode: the oracle over a budget grid")
    p.add_argument("--curve-pairs", type=int, nargs="+", default=d.curve_pairs)
    p.add_argument("--curve-steps", type=int, nargs="+", default=d.curve_steps)
    p.add_argument("--curve-ranks", type=int, nargs="+", help="default: --rank")
    p.add_argument("--curve-lrs", type=float, nargs="+", help="default: --lr")
    p.add_argument("--aim", type=float, default=d.aim, help="recovered fraction the chosen budget must reach")
    p.add_argument("--paraphrases", type=int, default=d.paraphrases, help="rewrites per kept prompt in the _aug arms")
    p.add_argument(
        "--candidates", type=int, help="prompts per round in every pool (default: the recipe's); cached apart"
    )
    p.add_argument("--work", type=Path, help="caches (default runs/transfer, with --quick runs/transfer-quick)")
    p.add_argument(
        "--results",
        type=Path,
        help="results .md/.json (default bench/transfer-results, --curve: bench/transfer-curve; --quick: in --work)",
    )
    p.add_argument("--quick", action="store_true", help="one seed, small settings")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def settings_of(args: argparse.Namespace) -> Settings:
    settings = Settings(
        seeds=args.seeds or ([0] if args.curve else [0, 1, 2]),
        pairs=args.pairs,
        steps=args.steps,
        eval_limit=args.eval_limit,
        teacher_epochs=args.teacher_epochs,
        teacher_patience=args.teacher_patience,
        teacher_lr=args.teacher_lr,
        quick=args.quick,
        curve_pairs=args.curve_pairs,
        curve_steps=args.curve_steps,
        aim=args.aim,
        paraphrases=args.paraphrases,
        epochs=args.epochs,
        patience=args.patience,
        max_passes=args.max_passes,
        candidates=args.candidates,
        curve_ranks=args.curve_ranks,
        curve_lrs=args.curve_lrs,
    )
    return settings.quick_mode() if args.quick else settings


def run_arms(domain: Domain, head: dict, names: list[str], budget: Budget, started: float) -> dict:
    """Every applicable arm on every seed, the pools they train on, aggregated over the seeds."""
    seeds = domain.settings.seeds
    names = domain.applicable(names)
    by_seed = [{arm: domain.arm(arm, seed, budget) for arm in names} for seed in seeds]
    results = {arm: [r[arm] for r in by_seed] for arm in names}
    facts = {arm: [stats.arm_facts(domain, arm, seed, budget.pairs) for seed in seeds] for arm in names}
    used = arms.pools_of(names)
    pools = [stats.pool_stats(domain, seed, used) for seed in seeds]
    refs, teacher = head["references"], head["teacher"]
    row = stats.aggregate(
        domain.name, refs, results, facts, pools, teacher, time.perf_counter() - started, domain.items
    )
    sized = {"size": domain.size, "pairs": domain.pairs, "candidates_per_round": domain.candidates}
    return row | {"reachable": stats.reachable(domain, used, seeds), "budget": sized}


def run_curve(domain: Domain, refs: dict, settings: Settings) -> list[dict]:
    """The oracle over the grid of budgets, cheapest steps first."""
    grid = [
        Budget(p, s, r, lr)
        for s in settings.curve_steps
        for p in settings.curve_pairs
        for r in settings.curve_ranks or [settings.rank]
        for lr in settings.curve_lrs or [settings.lr]
    ]
    seeds = settings.seeds
    return [stats.curve_point(b, [domain.arm("oracle", seed, b) for seed in seeds], refs) for b in grid]


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    settings = settings_of(args)
    # absolute at once: the pipeline resolves a recipe's relative paths against the recipe's folder, so a relative
    # --work would name another folder there
    work = (args.work or ROOT / "runs" / ("transfer-quick" if args.quick else "transfer")).resolve()
    default_name = "transfer-curve" if args.curve else "transfer-results"
    results_path = (args.results or (work / default_name if args.quick else ROOT / "bench" / default_name)).resolve()
    quiet_transformers()
    started = time.perf_counter()
    domains = []
    for spec in args.domain:
        name, _, folder = spec.partition("=")
        if not name or not folder:
            raise SystemExit(f"--domain {spec!r}: expected NAME=DIR")
        t0 = time.perf_counter()
        domain = Domain(name, Path(folder).resolve(), args.recipe.resolve(), work, settings, not args.quiet)
        train_cfg = domain.recipe.train
        # the target's rank and learning rate: the last domain's are the ones recorded
        settings = dataclasses.replace(
            settings, rank=args.rank or train_cfg.rank, lr=args.lr or train_cfg.learning_rate
        )
        refs = domain.references()
        head = stats.head(name, refs, domain.teacher_training())
        for line in teacher_lines(head):
            log(f"[{name}] {line}")
        if args.curve:
            domains.append(head | {"points": run_curve(domain, refs, settings)})
            continue
        stopping = {"epochs": settings.epochs, "patience": settings.patience} if settings.patience else {}
        budget = Budget(domain.pairs, settings.steps, settings.rank, settings.lr, **stopping)
        domains.append(run_arms(domain, head, args.arms, budget, t0))
    command = f"{COMMAND} " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"command": command, "settings": settings.as_json(), "domains": domains}
    results["wall_s"] = time.perf_counter() - started
    if args.curve:
        results["choice"] = stats.choose_budget(domains, args.aim)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.with_suffix(".json").write_text(json.dumps(results, indent=1))
    results_path.with_suffix(".md").write_text(curve_markdown(results) if args.curve else markdown(results))
    log(f"results: {results_path.with_suffix('.md')}")
    return results
