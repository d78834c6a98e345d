"""Where every step of the benchmark is cached under --work, and the cache itself.

Each name below is a cache key: a step is found again by its path alone, so these computations must not change
(runs/transfer holds hours of cached teachers, pools and trainings).

    <work>/<domain>/teacher-e<epochs>-p<patience>-lr<lr>/     the teacher (teacher/adapter.gguf) and all below
        references-n<eval_limit>.json                          teacher, base, target before, chance
        seed<seed>/<pool><variant>/pool.db (+ .jsonl, pool/)   a grown pool
        seed<seed>/oracle_aug-p<pairs>/                        the oracle's paraphrase pool (seeds.txt, pool.db)
        seed<seed>/<arm><variant>/train-<budget>/              an arm's training (the adapter; merged/ removed)
        seed<seed>/<arm><variant>/result-<budget>-n<eval_limit>.json   its scores

variant is "-c<candidates>", the prompts per round of every pool (--candidates, --quick, or sized for the domain).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from .settings import Budget, Settings


def cached(path: Path, compute: Callable[[], dict]) -> dict:
    """compute()'s dict, stored at path with the seconds it took (compute_s), or the stored one."""
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    value = compute() | {"compute_s": time.perf_counter() - t0}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)
    return value


@dataclasses.dataclass(frozen=True)
class Layout:
    """The cache paths of one domain: work is --work / the domain's name."""

    work: Path
    settings: Settings
    candidates: int | None = None  # the pools' prompts per round, where the benchmark sized them (Domain)

    @property
    def teacher_key(self) -> str:
        s = self.settings
        return f"teacher-e{s.teacher_epochs}-p{s.teacher_patience}-lr{s.teacher_lr:g}"

    @property
    def variant(self) -> str:
        """Pools grown with another prompt budget (--candidates, or sized for the domain) are cached apart."""
        candidates = self.candidates or self.settings.candidates
        return f"-c{candidates}" if candidates else ""

    @property
    def root(self) -> Path:
        """Everything that depends on the teacher: references, pools, arms."""
        return self.work / self.teacher_key

    @property
    def teacher_adapter(self) -> Path:
        return self.work / self.teacher_key / "teacher" / "adapter.gguf"

    @property
    def references(self) -> Path:
        return self.root / f"references-n{self.settings.eval_limit}.json"

    def pool_db(self, pool: str, seed: int) -> Path:
        return self.root / f"seed{seed}" / (pool + self.variant) / "pool.db"

    def oracle_pool(self, seed: int, pairs: int) -> Path:
        return self.root / f"seed{seed}" / f"oracle_aug-p{pairs}"

    def train_dir(self, arm: str, seed: int, budget: Budget) -> Path:
        return self.root / f"seed{seed}" / (arm + self.variant) / f"train-{budget.key}"

    def result(self, arm: str, seed: int, budget: Budget) -> Path:
        key = f"{budget.key}-n{self.settings.eval_limit}"
        return self.root / f"seed{seed}" / (arm + self.variant) / f"result-{key}.json"
