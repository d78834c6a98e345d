"""Transfer benchmark: does the teacher's knowledge move into the target, and how much does selection matter?

A domain is a folder with train.jsonl (chat pairs: the teacher's private data), test.jsonl ({"prompt", "answer"},
held out) and seeds.txt (what the pipeline sees), plus an optional recipe.toml: the domain's own settings (how
new prompts are written, say) laid over the shared recipe, its relative paths resolved like the shared recipe's.
For each domain the benchmark fine-tunes the teacher on train.jsonl (make-teacher, cached), evaluates the
references (teacher, base, target untouched, and a chance baseline), then for every seed grows the arms' pools
with the recipe and trains the target, for the same number of steps on the same number of pairs, on each arm. The
arms are registered in arms.py, one class each; `--help` lists them.

The teacher is trained by epochs and stopped on a held-out split of its own training data (never the test file);
its advantage over the floor on the test file is reported, with a warning when it is too small to measure.

The headline is the chance-adjusted recovered fraction (tskd_lite.evaluate.recovered): (arm - floor) /
(teacher - floor) on contains, floor = max(chance row, target before), per seed, then mean +- sd. A domain that
ships facts.jsonl also gets fact-level measures (bench/facts.py) of every arm's training pairs and every pool's
rounds: coverage of the held-out facts, precision, and the rate of confident wrong answers.

--curve is the learning-curve mode: the oracle arm over a grid of pairs x steps (x LoRA rank x learning rate),
on every domain, written to bench/transfer-curve.md/.json with the smallest budget at which the oracle recovers
at least --aim of the teacher's advantage on every domain: the budget the arms are then trained with (--pairs,
--steps).

Results (mean +- sd over seeds, per-round pool statistics and the wall time) go to --results .md and .json. Every
step is cached under --work (cache.py: the layout), keyed by the settings it depends on (the teacher's included),
so an interrupted run resumes and a run with other training settings reuses the teacher and the pools.

    python -m bench.transfer --domain world=data/world --domain dates=data/dates
    python -m bench.transfer --curve --domain world=data/world --domain dates=data/dates
    python -m bench.transfer --quick ...     one seed, small settings, minutes

The package: cli.py (arguments to Settings, the run), settings.py, arms.py (the arms), domain.py (teacher,
references, pools, trainings), cache.py (the cache and its layout), stats.py (measures and aggregation), tables.py
(the markdown, from column specs).
"""

from .arms import ARMS, DEFAULT_ARMS, POOLS, REGISTRY, Arm
from .cli import main
from .domain import Domain
from .settings import QUICK, Budget, Settings
from .stats import choose_budget

__all__ = [
    "ARMS",
    "DEFAULT_ARMS",
    "POOLS",
    "QUICK",
    "REGISTRY",
    "Arm",
    "Budget",
    "Domain",
    "Settings",
    "choose_budget",
    "main",
]
